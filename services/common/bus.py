"""The Kafka bus: a producer that waits for the broker, topic creation, and an at-least-once
consumer loop with deduplication, retries and dead letters.

The loop's contract, for every polled batch:

1. decode each record into an Envelope; undecodable records become dead letters;
2. skip records whose message_id this consumer group already applied (the ledger in the store;
   a group whose handler's writes are idempotent by themselves, keyed by message_id, has none);
3. call the handler, which stores its effect and returns messages to emit; ``InvalidMessage``
   dead-letters the record at once, a store or broker outage is retried until it heals, any
   other exception is retried ``handler_max_attempts`` times, then dead-lettered. A loop given
   a ``batch_handler`` hands it all the poll's fresh messages at once (one load of what they
   share, bulk writes); should it raise anything but an outage, the poll goes through the
   per-message handler instead, so only a bad message is dead-lettered;
4. produce the emitted messages and dead letters and wait for the broker's acknowledgement;
5. record the applied message_ids in the ledger;
6. commit the offsets.

A crash anywhere before 6 re-delivers the batch; steps 2 and 5 plus idempotent handlers (effects
keyed by message_id, output ids derived from input ids) make the re-delivery harmless.
"""

from __future__ import annotations

import base64
import logging
import socket
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

import orjson
import pymongo.errors
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, OffsetAndMetadata, TopicPartition
from kafka.admin import NewTopic
from kafka.errors import (
    CommitFailedError,
    KafkaError,
    RebalanceInProgressError,
    TopicAlreadyExistsError,
)

from services.common import logs, metrics, topics
from services.common.config import Settings
from services.common.envelope import Envelope, InvalidEnvelope, decode
from services.common.store import ProcessedLedger

log = logging.getLogger(__name__)

TRANSIENT_ERRORS = (pymongo.errors.ConnectionFailure, KafkaError, TimeoutError, ConnectionError)
COMMIT_PATIENCE_SECONDS = 60.0
STALL_SECONDS = 30.0
# polls in a row that returned at once with nothing: the client spins instead of waiting
SPIN_POLLS = 200
# what a gathering fetch waits for (ConsumerLoop gather_ms): more than a poll's worth of
# small messages, so the wait, not the size, ends it under light traffic
GATHER_BYTES = 1 << 20
# how long the broker holds a fetch that finds nothing new; records that arrive meanwhile
# answer it at once, so only idle consumers wait this long. kafka-python's default (500 ms)
# cost an idle platform 0.1 core: each consumer fetching twice a second, the broker answering
IDLE_FETCH_WAIT_MS = 5000


class InvalidMessage(Exception):
    """Raised by a handler for a message that can never be processed: it is dead-lettered."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


class DeadLetterStreakExceeded(RuntimeError):
    """Too many consecutive dead letters: the worker stops rather than reject everything."""


@dataclass(frozen=True)
class Outgoing:
    """A message a handler wants emitted once its effect is stored."""

    topic: str
    key: str
    value: Envelope | dict | bytes


Handler = Callable[[Envelope], Iterable[Outgoing] | None]
# the messages of one poll, in order; must be as idempotent as a Handler, as a whole
BatchHandler = Callable[[list[Envelope]], Iterable[Outgoing] | None]


class Relay:
    """An outbox the loop drains between batches: messages stored by someone (an API that
    could not reach Kafka) but not yet announced. ``pending`` lists them; ``sent`` is called
    once the broker acknowledged them. Both must be idempotent."""

    interval_seconds = 30.0

    def pending(self) -> list[Outgoing]:
        raise NotImplementedError

    def sent(self, messages: list[Outgoing]) -> None:
        raise NotImplementedError


def encode_value(value: Envelope | dict | bytes) -> bytes:
    if isinstance(value, Envelope):
        return value.to_bytes()
    if isinstance(value, bytes):
        return value
    return orjson.dumps(value)


class Producer:
    """A Kafka producer (acks=all, idempotent, retries) that reports when the broker has it."""

    def __init__(self, settings: Settings, service: str, send_timeout: float = 30.0):
        self.service = service
        self.send_timeout = send_timeout
        self._bootstrap = settings.kafka_bootstrap.split(",")
        self._producer = KafkaProducer(
            bootstrap_servers=self._bootstrap,
            # bounded: an API answers 503 rather than hang while the broker is away
            max_block_ms=10_000,
            acks="all",
            enable_idempotence=True,
            linger_ms=5,
            client_id=f"muisti-{service}",
        )

    def send(self, messages: Sequence[Outgoing], timeout: float | None = None) -> None:
        """Produce ``messages`` and block until the broker acknowledged every one, for at
        most ``timeout`` seconds in all (default: the producer's ``send_timeout``).

        Raises KafkaError (or TimeoutError) when any is not acknowledged in time; the caller
        must then treat all of them as not sent (re-sending is safe: consumers dedupe).
        """
        deadline = time.monotonic() + (self.send_timeout if timeout is None else timeout)
        # every value encoded before any is handed over: one that cannot be sends none, rather
        # than the messages before it alone
        records = [(message.topic, message.key.encode(), encode_value(message.value))
                   for message in messages]
        futures = [(topic, self._producer.send(topic, key=key, value=value))
                   for topic, key, value in records]
        self._producer.flush(timeout=max(0.0, deadline - time.monotonic()))
        for topic, future in futures:
            # one deadline for the whole call: waiting afresh per message let an API request
            # hang for minutes while the broker was away
            future.get(timeout=max(0.001, deadline - time.monotonic()))
            metrics.MESSAGES_PRODUCED.labels(self.service, topic).inc()

    def check_connected(self) -> None:
        """Raise ConnectionError unless a bootstrap broker accepts a connection now."""
        for server in self._bootstrap:
            host, _, port = server.rpartition(":")
            try:
                socket.create_connection((host, int(port)), timeout=1).close()
                return
            except OSError:
                continue
        raise ConnectionError("no Kafka broker accepts connections")

    def close(self) -> None:
        self._producer.close(timeout=10)


def ensure_topics(settings: Settings, names: Iterable[str] = topics.ALL) -> None:
    """Create the topics that do not exist yet, with the configured partitions (idempotent)."""
    admin = KafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap.split(","),
                             client_id="muisti-admin")
    try:
        existing = set(admin.list_topics())
        missing = [
            NewTopic(name, settings.topic_partitions, settings.topic_replication)
            for name in names if name not in existing
        ]
        if missing:
            try:
                admin.create_topics(missing)
            except TopicAlreadyExistsError:
                pass  # another process created it meanwhile
    finally:
        admin.close()


@dataclass
class _Applied:
    record: object
    envelope: Envelope


class ConsumerLoop:
    """Consume ``topics`` as consumer group ``group`` and apply ``handler`` at least once.

    ``run()`` blocks until ``stop()`` is called (e.g. from a SIGTERM handler); it finishes the
    batch in hand, commits, and closes. It raises DeadLetterStreakExceeded when too many
    consecutive messages are dead-lettered.
    """

    def __init__(
        self,
        *,
        settings: Settings,
        service: str,
        group: str,
        topics: Sequence[str],
        handler: Handler,
        producer: Producer,
        ledger: ProcessedLedger | None,
        consumer: KafkaConsumer | None = None,
        relay: Relay | None = None,
        batch_handler: BatchHandler | None = None,
        gather_ms: int = 0,
    ):
        self.settings = settings
        self.service = service
        self.group = settings.consumer_group_prefix + group
        self.topics = list(topics)
        self.handler = handler
        self.batch_handler = batch_handler
        self.producer = producer
        self.ledger = ledger
        # > 0: the broker holds a fetch up to this long to gather a bigger batch, for groups
        # whose cost is per poll rather than per message and whose readers can wait
        self.gather_ms = gather_ms
        self._stopping = threading.Event()
        self._dead_letter_streak = 0
        self._poll_failures = 0
        self.relay = relay
        self._relay_due = 0.0
        self._rebuildable = consumer is None
        self._progress_at = time.monotonic()
        self._committed_at_last_check = -1
        self._instant_empty_polls = 0
        self._lag_reported: set[TopicPartition] = set()
        self._consumer = consumer or self._new_consumer()

    def _new_consumer(self) -> KafkaConsumer:
        settings = self.settings
        return KafkaConsumer(
            bootstrap_servers=settings.kafka_bootstrap.split(","),
            group_id=self.group,
            client_id=f"muisti-{self.service}",
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            max_poll_records=settings.consumer_batch_size,
            session_timeout_ms=settings.consumer_session_timeout_ms,
            heartbeat_interval_ms=max(1000, settings.consumer_session_timeout_ms // 3),
            max_poll_interval_ms=600_000,
            **({"fetch_min_bytes": GATHER_BYTES, "fetch_max_wait_ms": self.gather_ms}
               if self.gather_ms else {"fetch_max_wait_ms": IDLE_FETCH_WAIT_MS}),
        )

    def _subscribe(self) -> None:
        # fetch the topics' metadata first: subscribing without it lets the group assign this
        # worker no partitions until the next metadata refresh, minutes later
        for topic in self.topics:
            self._consumer.partitions_for_topic(topic)
        self._consumer.subscribe(self.topics)

    def _reconnect(self) -> None:
        """Replace the Kafka consumer: after a broker restart kafka-python's group client can
        stay wedged. Uncommitted batches are re-delivered to the new one and deduplicated.
        Retries until the broker answers or the loop is stopped."""
        try:
            self._consumer.close(autocommit=False)
        except Exception:  # noqa: BLE001 - the old client is being thrown away
            log.debug("closing the old consumer failed", exc_info=True)
        attempt = 0
        while not self._stopping.is_set():
            attempt += 1
            try:
                self._consumer = self._new_consumer()
                self._subscribe()
                return
            except KafkaError as exc:
                log.warning("broker unreachable, reconnecting", extra={"error": repr(exc)})
                time.sleep(_backoff(attempt))

    def stop(self) -> None:
        self._stopping.set()

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    def run(self) -> None:
        self._subscribe()
        log.info("consuming", extra={"topics": self.topics, "group": self.group})
        try:
            while not self._stopping.is_set():
                batch = self._poll()
                if batch:
                    self._process(batch)
                    self._progress_at = time.monotonic()
                self._report_lag()
                self._reconnect_if_stalled()
                self._drain_relay()
                if self.ledger is not None:
                    self._retry_until_done(self.ledger.expire_if_due)
        finally:
            self._consumer.close(autocommit=False)
            self._forget_lag(set(self._lag_reported))
            log.info("consumer closed", extra={"group": self.group})

    def _poll(self) -> dict:
        """One poll. kafka-python raises from ``poll`` when the broker goes away while it
        looks for the group coordinator: that is an outage to wait out, not a reason to stop.
        The stall watchdog replaces a client that does not recover once the broker is back."""
        started = time.monotonic()
        try:
            batch = self._consumer.poll(timeout_ms=self.settings.consumer_poll_ms)
        except KafkaError as exc:
            self._poll_failures += 1
            log.warning("poll failed, the broker may be away; retrying",
                        extra={"error": repr(exc), "attempt": self._poll_failures})
            self._stopping.wait(_backoff(self._poll_failures))
            return {}
        self._poll_failures = 0
        self._reconnect_if_spinning(bool(batch), time.monotonic() - started)
        return batch

    def _reconnect_if_spinning(self, got_records: bool, seconds: float) -> None:
        """A watchdog: kafka-python's group client can wedge so that ``poll`` no longer
        waits (its next heartbeat is always due and never sent) and returns at once with
        nothing, thousands of times a second: a core burnt and, once the group evicts the
        member, nothing consumed. Seen on a worker started on a busy machine. ``SPIN_POLLS``
        such polls in a row replace the client."""
        if got_records or seconds * 1000 >= self.settings.consumer_poll_ms / 10:
            self._instant_empty_polls = 0
            return
        self._instant_empty_polls += 1
        if self._instant_empty_polls < SPIN_POLLS or not self._rebuildable:
            return
        self._instant_empty_polls = 0
        log.warning("polls return at once with nothing: the client is wedged; reconnecting",
                    extra={"group": self.group})
        metrics.CONSUMER_RECONNECTS.labels(self.service, self.group, "spinning").inc()
        self._reconnect()

    # one batch

    def _process(self, batch: dict) -> None:
        started = time.monotonic()
        outgoing: list[Outgoing] = []
        applied: list[str] = []
        offsets = {partition: OffsetAndMetadata(records[-1].offset + 1, "", -1)
                   for partition, records in batch.items()}
        fresh = self._decode([r for records in batch.values() for r in records], outgoing)
        if self.batch_handler is not None and len(fresh) > 1:
            outgoing.extend(self._apply_batch(fresh, applied))
        else:
            for record, envelope in fresh:
                outgoing.extend(self._apply(record, envelope, applied))
        self._retry_until_done(lambda: self.producer.send(outgoing) if outgoing else None)
        if self.ledger is not None:
            self._retry_until_done(lambda: self.ledger.mark(applied))
        self._commit(offsets)
        for partition in batch:
            metrics.PROCESSING_LATENCY.labels(self.service, partition.topic).observe(
                time.monotonic() - started)

    def _decode(self, records, outgoing: list[Outgoing]) -> list[tuple[object, Envelope]]:
        decoded = []
        for record in records:
            try:
                decoded.append((record, decode(record.value or b"")))
            except InvalidEnvelope as exc:
                outgoing.append(self._dead_letter(record, "invalid_envelope", exc.reason))
        if not decoded:
            return []
        ids = [envelope.message_id for _, envelope in decoded]
        already = (self._retry_until_done(lambda: self.ledger.seen(ids))
                   if self.ledger is not None else set())
        fresh = []
        for record, envelope in decoded:
            if envelope.message_id in already:
                metrics.MESSAGES_DUPLICATE.labels(self.service, record.topic).inc()
                continue
            already.add(envelope.message_id)  # the same id twice within one batch
            fresh.append((record, envelope))
        return fresh

    def _apply_batch(self, fresh: list[tuple[object, Envelope]],
                     applied: list[str]) -> list[Outgoing]:
        attempt = 0
        while True:
            attempt += 1
            try:
                result = list(self.batch_handler([envelope for _, envelope in fresh]) or ())
            except TRANSIENT_ERRORS as exc:
                if self._stopping.is_set():
                    raise
                log.warning("transient failure, retrying the batch", extra={"error": repr(exc)})
                time.sleep(_backoff(attempt))
                continue
            except Exception:  # noqa: BLE001 - a poison message or a bug: find which, singly
                log.warning("batch handler failed; applying the batch message by message",
                            exc_info=True)
                result = []
                for record, envelope in fresh:
                    result.extend(self._apply(record, envelope, applied))
                return result
            self._dead_letter_streak = 0
            now = datetime.now(UTC)
            for record, envelope in fresh:
                applied.append(envelope.message_id)
                metrics.MESSAGES_CONSUMED.labels(self.service, record.topic).inc()
                metrics.EVENT_AGE.labels(self.service, record.topic).observe(
                    max((now - envelope.received_at).total_seconds(), 0.0))
            return result

    def _apply(self, record, envelope: Envelope, applied: list[str]) -> list[Outgoing]:
        token = logs.message_id.set(envelope.message_id)
        try:
            attempt = 0
            while True:
                attempt += 1
                try:
                    result = list(self.handler(envelope) or ())
                except InvalidMessage as exc:
                    return [self._dead_letter(record, "invalid", exc.reason)]
                except TRANSIENT_ERRORS as exc:
                    if self._stopping.is_set():
                        raise
                    metrics.HANDLER_RETRIES.labels(self.service, record.topic).inc()
                    log.warning("transient failure, retrying", extra={"error": repr(exc)})
                    time.sleep(_backoff(attempt))
                    continue
                except Exception as exc:  # noqa: BLE001 - a bug or poison message
                    metrics.HANDLER_RETRIES.labels(self.service, record.topic).inc()
                    if attempt < self.settings.handler_max_attempts:
                        log.warning("handler failed, retrying", exc_info=True)
                        time.sleep(_backoff(attempt))
                        continue
                    log.error("handler failed, dead-lettering", exc_info=True)
                    return [self._dead_letter(record, "handler_error", repr(exc))]
                self._dead_letter_streak = 0
                applied.append(envelope.message_id)
                metrics.MESSAGES_CONSUMED.labels(self.service, record.topic).inc()
                age = (datetime.now(UTC) - envelope.received_at).total_seconds()
                metrics.EVENT_AGE.labels(self.service, record.topic).observe(max(age, 0.0))
                return result
        finally:
            logs.message_id.reset(token)

    def _dead_letter(self, record, kind: str, reason: str) -> Outgoing:
        self._dead_letter_streak += 1
        if self._dead_letter_streak > self.settings.dead_letter_streak_limit:
            raise DeadLetterStreakExceeded(
                f"{self._dead_letter_streak} consecutive dead letters; last: {reason}")
        metrics.MESSAGES_DEAD_LETTERED.labels(self.service, record.topic, kind).inc()
        log.warning("dead-lettering", extra={"topic": record.topic, "partition": record.partition,
                                             "offset": record.offset, "reason": reason})
        raw = record.value or b""
        letter = {
            "source_topic": record.topic,
            "partition": record.partition,
            "offset": record.offset,
            "key": record.key.decode("utf-8", "replace") if record.key else None,
            "kind": kind,
            "reason": reason,
            "service": self.service,
            "group": self.group,
            "failed_at": datetime.now(UTC).isoformat(),
            "original_b64": base64.b64encode(raw).decode(),
        }
        return Outgoing(topics.DEAD_LETTER, record.topic, letter)

    def _commit(self, offsets: dict) -> None:
        give_up_at = time.monotonic() + COMMIT_PATIENCE_SECONDS
        attempt = 0
        while True:
            attempt += 1
            try:
                self._consumer.commit(offsets, timeout_ms=15_000)
                return
            except (CommitFailedError, RebalanceInProgressError):
                # the group rebalances: the partition's next owner re-reads from the last
                # commit and the ledger skips what this worker already applied. Retrying the
                # commit instead would keep this member from rejoining (only poll rejoins),
                # and the whole group would wait for it
                log.warning("offset commit lost to a rebalance; the batch will be re-delivered")
                return
            except KafkaError as exc:
                if self._rebuildable and time.monotonic() > give_up_at:
                    log.warning("offset commits keep failing; reconnecting",
                                extra={"error": repr(exc)})
                    self._reconnect()
                    return
                log.warning("offset commit failed, retrying", extra={"error": repr(exc)})
                time.sleep(_backoff(attempt))

    def _retry_until_done(self, action: Callable[[], object]):
        attempt = 0
        while True:
            attempt += 1
            try:
                return action()
            except CommitFailedError:
                raise
            except TRANSIENT_ERRORS as exc:
                if self._stopping.is_set() and attempt > 3:
                    raise
                log.warning("dependency unavailable, retrying", extra={"error": repr(exc)})
                time.sleep(_backoff(attempt))

    def _drain_relay(self) -> None:
        if self.relay is None or time.monotonic() < self._relay_due:
            return
        self._relay_due = time.monotonic() + self.relay.interval_seconds
        try:
            messages = self.relay.pending()
            if messages:
                self.producer.send(messages)
                self.relay.sent(messages)
                log.info("relayed stored messages", extra={"count": len(messages)})
        except TRANSIENT_ERRORS as exc:
            log.warning("relay failed; will retry", extra={"error": repr(exc)})

    def _reconnect_if_stalled(self) -> None:
        """A watchdog: when records wait in the subscribed topics but this consumer group
        committed nothing for ``STALL_SECONDS``, the client is wedged (seen after broker
        restarts: no fetches, or no partitions and no rejoin) and is replaced."""
        if not self._rebuildable or time.monotonic() - self._progress_at < STALL_SECONDS:
            return
        self._progress_at = time.monotonic()
        try:
            partitions = [TopicPartition(topic, p) for topic in self.topics
                          for p in self._consumer.partitions_for_topic(topic) or ()]
            ends = self._consumer.end_offsets(partitions)
            committed = {tp: self._consumer.committed(tp, timeout_ms=5000) or 0
                         for tp in partitions}
        except KafkaError:
            return  # the broker is away; the commit path and the next check deal with it
        waiting = any(ends[tp] > committed[tp] for tp in partitions)
        total = sum(committed.values())
        stalled = waiting and total == self._committed_at_last_check
        self._committed_at_last_check = total
        if stalled:
            log.warning("records wait but the group committed nothing for a while; reconnecting")
            metrics.CONSUMER_RECONNECTS.labels(self.service, self.group, "stalled").inc()
            self._reconnect()

    def _report_lag(self) -> None:
        assigned = set(self._consumer.assignment())
        # a partition lost in a rebalance is another worker's to report now
        self._forget_lag(self._lag_reported - assigned)
        for partition in assigned:
            highwater = self._consumer.highwater(partition)
            if highwater is None:
                continue
            try:
                position = self._consumer.position(partition, timeout_ms=100)
            except KafkaError:
                continue
            if position is not None:
                metrics.CONSUMER_LAG.labels(
                    self.service, partition.topic, str(partition.partition)).set(
                    max(highwater - position, 0))
                self._lag_reported.add(partition)

    def _forget_lag(self, partitions: set[TopicPartition]) -> None:
        for partition in partitions:
            try:
                metrics.CONSUMER_LAG.remove(self.service, partition.topic,
                                            str(partition.partition))
            except KeyError:
                pass  # never reported
            self._lag_reported.discard(partition)


def _backoff(attempt: int) -> float:
    return min(0.1 * 2 ** (attempt - 1), 5.0)
