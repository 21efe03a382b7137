"""The CLI's Kafka adapter: topic creation, the topic and lag overview, reading the
dead-letter topic and republishing originals. Arithmetic and selection live in ``lag`` and
``deadletters``."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from kafka import KafkaAdminClient, KafkaConsumer, TopicPartition
from kafka.admin import OffsetSpec

from services.cli import deadletters
from services.cli.lag import TopicRow, overview_rows
from services.common import bus, topics
from services.common.config import Settings

REPLAY_CHUNK = 200


def _admin(settings: Settings) -> KafkaAdminClient:
    return KafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap.split(","),
                            client_id="muisti-cli")


def create_topics(settings: Settings) -> list[str]:
    """Create Muisti's missing topics; returns the names that did not exist before."""
    admin = _admin(settings)
    try:
        before = set(admin.list_topics())
    finally:
        admin.close()
    bus.ensure_topics(settings)
    return [name for name in topics.ALL if name not in before]


def topic_overview(settings: Settings, prefix: str = "cdp.") -> list[TopicRow]:
    """Every topic whose name starts with ``prefix``, its partitions and records, and the lag
    of each consumer group that committed offsets on it."""
    admin = _admin(settings)
    try:
        names = sorted(name for name in admin.list_topics() if name.startswith(prefix))
        if not names:
            return []
        partitions = {topic["name"]: len(topic["partitions"])
                      for topic in admin.describe_topics(names)}
        every = [TopicPartition(name, p) for name in names for p in range(partitions[name])]
        ends = _offsets(admin, every, OffsetSpec.LATEST)
        starts = _offsets(admin, every, OffsetSpec.EARLIEST)
        groups = [group["group_id"] for group in admin.list_groups()]
        committed = admin.list_group_offsets(groups) if groups else {}
    finally:
        admin.close()
    committed_by_group = {
        group: {tp: meta.offset for tp, meta in offsets.items() if tp.topic in partitions}
        for group, offsets in committed.items()
    }
    return overview_rows(partitions, ends, starts,
                         {group: c for group, c in committed_by_group.items() if c})


def _offsets(admin: KafkaAdminClient, partitions, spec) -> dict[TopicPartition, int]:
    found = admin.list_partition_offsets({tp: spec for tp in partitions})
    return {tp: result.offset for tp, result in found.items()}


def read_dead_letters(settings: Settings, idle_ms: int = 2000
                      ) -> tuple[list[deadletters.DeadLetter], int]:
    """Every record on cdp.deadletter up to its end when called, without a consumer group
    (reading moves nothing). Returns (letters, how many records were unreadable)."""
    consumer = KafkaConsumer(bootstrap_servers=settings.kafka_bootstrap.split(","),
                             client_id="muisti-cli", enable_auto_commit=False,
                             consumer_timeout_ms=idle_ms)
    try:
        partitions = [TopicPartition(topics.DEAD_LETTER, p)
                      for p in consumer.partitions_for_topic(topics.DEAD_LETTER) or ()]
        if not partitions:
            return [], 0
        consumer.assign(partitions)
        consumer.seek_to_beginning(*partitions)
        ends = consumer.end_offsets(partitions)
        letters, unreadable = [], 0
        while any(consumer.position(tp) < ends[tp] for tp in partitions):
            batch = consumer.poll(timeout_ms=idle_ms)
            if not batch:
                break  # the broker stopped answering; report what was read
            for records in batch.values():
                for record in records:
                    if record.offset >= ends[TopicPartition(record.topic, record.partition)]:
                        continue
                    try:
                        letters.append(deadletters.parse(record.value or b""))
                    except deadletters.UnreadableLetter:
                        unreadable += 1
        return letters, unreadable
    finally:
        consumer.close()


def republish(settings: Settings, letters: Sequence[deadletters.DeadLetter],
              on_sent: Callable[[int], None] = lambda count: None) -> int:
    """Produce each letter's original bytes to its source topic with its original key, waiting
    for the broker's acknowledgement chunk by chunk; ``on_sent`` is told each chunk's size.
    Safe to repeat: consumers skip message_ids they already applied."""
    producer = bus.Producer(settings, "cli")
    try:
        for start in range(0, len(letters), REPLAY_CHUNK):
            chunk = letters[start:start + REPLAY_CHUNK]
            producer.send([bus.Outgoing(letter.source_topic, letter.key or "", letter.original)
                           for letter in chunk])
            on_sent(len(chunk))
    finally:
        producer.close()
    return len(letters)
