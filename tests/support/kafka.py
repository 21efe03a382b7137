"""Kafka helpers for tests: produce envelopes, read a topic, see committed offsets."""

from __future__ import annotations

import time

import orjson
from kafka import KafkaAdminClient, KafkaConsumer, TopicPartition
from kafka.errors import KafkaError

from services.common.bus import Outgoing, Producer, ensure_topics
from services.common.config import Settings
from services.common.envelope import new_envelope
from services.common.topics import DEAD_LETTER


def create_topic(settings: Settings, name: str) -> str:
    ensure_topics(settings, [name])
    return name


def tally_envelope(key: str, **payload):
    return new_envelope("Tally Incremented", "system", payload={"key": key, **payload})


def produce(settings: Settings, topic: str, values: list, key=lambda i, v: str(i)) -> None:
    producer = Producer(settings, "tests")
    try:
        for start in range(0, len(values), 1000):
            chunk = values[start:start + 1000]
            producer.send([Outgoing(topic, key(start + i, value), value)
                           for i, value in enumerate(chunk)])
    finally:
        producer.close()


def read_all(settings: Settings, topic: str, idle_ms: int = 1500) -> list[dict]:
    """Every message now in ``topic`` (JSON-decoded), read without a consumer group.

    The broker is shared by the whole session and the fault tests put malformed messages on
    the input topics on purpose, so what is not an envelope (or, on the dead-letter topic, a
    JSON object) is skipped."""
    return list(filter(None, (_decoded(topic, value)
                              for _, value in read_records(settings, topic, idle_ms))))


def read_records(settings: Settings, topic: str, idle_ms: int = 1500
                 ) -> list[tuple[bytes | None, bytes]]:
    """Every record now in ``topic`` as its key and value bytes, read without a group."""
    consumer = KafkaConsumer(bootstrap_servers=settings.kafka_bootstrap.split(","),
                             enable_auto_commit=False, consumer_timeout_ms=idle_ms)
    partitions = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or ()]
    consumer.assign(partitions)
    consumer.seek_to_beginning(*partitions)
    end = consumer.end_offsets(partitions)
    records = []
    deadline = time.monotonic() + 30
    while any(consumer.position(tp) < end[tp] for tp in partitions) and time.monotonic() < deadline:
        for batch in consumer.poll(timeout_ms=500).values():
            records.extend((record.key, record.value) for record in batch)
    consumer.close()
    return records


def _decoded(topic: str, value: bytes) -> dict | None:
    try:
        message = orjson.loads(value)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(message, dict):
        return None
    if topic != DEAD_LETTER and not isinstance(message.get("payload"), dict):
        return None
    return message


def committed_total(settings: Settings, group: str, topic: str) -> int:
    """Sum of the group's committed offsets over the topic's partitions."""
    group = settings.consumer_group_prefix + group
    admin = KafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap.split(","))
    try:
        offsets = admin.list_group_offsets(group).get(group, {})
    except KafkaError:
        return 0  # the group's coordinator is not there yet: nothing committed
    finally:
        admin.close()
    return sum(meta.offset for tp, meta in offsets.items() if tp.topic == topic and meta.offset > 0)
