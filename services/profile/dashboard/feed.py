"""The Kafka side of live updates: one consumer thread per API process feeding a StreamHub.

Every API process (granian runs one or more, each with its own threads) needs every change,
because any of them may hold the browser's stream. So the consumer joins no group: it assigns
itself all partitions of cdp.profile.changes and cdp.events.resolved and starts at their end
(live updates are about now; the browser reloads the profile when its stream opens). It
commits nothing and keeps no state beyond the next offset per partition, so after a broker
outage it resumes where it stopped instead of skipping what happened meanwhile.
"""

from __future__ import annotations

import logging
import threading
import time

from kafka import KafkaConsumer, TopicPartition

from services.common import bus, topics
from services.common.config import Settings
from services.common.envelope import InvalidEnvelope, decode
from services.profile.dashboard.live import SCREEN_POP_TYPES, StreamHub

log = logging.getLogger(__name__)

FEED_TOPICS = (topics.PROFILE_CHANGES, topics.EVENTS_RESOLVED)
# cdp.events.resolved carries every event; only calls matter here, so skip the rest unparsed
_CALL_MARKERS = tuple(kind.encode() for kind in SCREEN_POP_TYPES)


class LiveFeed:
    """Consumes the feed topics in a daemon thread and hands each envelope to ``hub``.

    ``start()`` is idempotent and returns at once; ``positioned`` is set once the consumer
    knows where the topics end, i.e. from when on no change can be missed.
    """

    def __init__(self, settings: Settings, hub: StreamHub):
        self.settings = settings
        self.hub = hub
        self.positioned = threading.Event()
        self._next_offsets: dict[TopicPartition, int] = {}
        self._started = False
        self._lock = threading.Lock()

    def start(self) -> None:
        with self._lock:
            if self._started:
                return
            self._started = True
        threading.Thread(target=self._run, name="dashboard-live-feed", daemon=True).start()

    def _run(self) -> None:
        attempt = 0
        while True:
            consumer = None
            try:
                consumer = self._connect()
                attempt = 0
                while True:
                    for records in consumer.poll(timeout_ms=500).values():
                        for record in records:
                            self._handle(record)
            except Exception as exc:  # noqa: BLE001 - the feed must outlive broker outages
                self.positioned.clear()
                attempt += 1
                log.warning("live feed interrupted; reconnecting", extra={"error": repr(exc)})
                time.sleep(min(0.5 * attempt, 5.0))
            finally:
                if consumer is not None:
                    consumer.close(autocommit=False)

    def _connect(self) -> KafkaConsumer:
        bus.ensure_topics(self.settings, FEED_TOPICS)
        consumer = KafkaConsumer(
            bootstrap_servers=self.settings.kafka_bootstrap.split(","),
            group_id=None, enable_auto_commit=False, client_id="muisti-profile-dashboard",
            fetch_max_wait_ms=bus.IDLE_FETCH_WAIT_MS)
        try:
            partitions = []
            for topic in FEED_TOPICS:
                numbers = consumer.partitions_for_topic(topic)
                if not numbers:
                    raise LookupError(f"no metadata for {topic} yet")
                partitions.extend(TopicPartition(topic, n) for n in sorted(numbers))
            consumer.assign(partitions)
            for partition in partitions:
                if partition in self._next_offsets:
                    consumer.seek(partition, self._next_offsets[partition])
                else:
                    consumer.seek_to_end(partition)
            for partition in partitions:  # resolves the end offsets now, not at the first poll
                self._next_offsets[partition] = consumer.position(partition)
        except Exception:
            consumer.close(autocommit=False)
            raise
        self.positioned.set()
        log.info("live feed positioned", extra={"partitions": len(partitions)})
        return consumer

    def _handle(self, record) -> None:
        self._next_offsets[TopicPartition(record.topic, record.partition)] = record.offset + 1
        raw = record.value or b""
        if self.hub.active == 0:
            return
        if record.topic == topics.EVENTS_RESOLVED and not any(m in raw for m in _CALL_MARKERS):
            return
        try:
            envelope = decode(raw)
        except InvalidEnvelope:
            return  # the owning worker dead-letters it; a live view just skips it
        self.hub.deliver(envelope)
