"""The ``muisti`` operator commands against the real broker and store: topic lag, dead-letter
replay after a fix, and API keys."""

from __future__ import annotations

import re
import subprocess
import sys
import threading

from kafka import KafkaConsumer, TopicPartition
from kafka.structs import OffsetAndMetadata

from services.cli import kafka_io
from services.common import topics
from services.common.auth import ApiKeys
from services.common.bus import ConsumerLoop, InvalidMessage, Producer
from services.common.store import ProcessedLedger
from tests.support.kafka import committed_total, create_topic, produce, read_all, tally_envelope
from tests.support.processes import REPO, wait_until


def muisti(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, "-m", "services.cli", *args], cwd=REPO,
                            env={**env, "COLUMNS": "250"}, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    return result


def test_topics_list_shows_partitions_records_and_each_groups_lag(settings, test_env, unique):
    topic = create_topic(settings, f"ops.lag.{unique}")
    produce(settings, topic, [tally_envelope("k") for _ in range(5)], key=lambda i, v: "same")
    group = settings.consumer_group_prefix + f"lag-{unique}"
    consumer = KafkaConsumer(bootstrap_servers=settings.kafka_bootstrap.split(","),
                             group_id=group, enable_auto_commit=False)
    partitions = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic)]
    ends = consumer.end_offsets(partitions)
    (filled,) = [tp for tp in partitions if ends[tp] == 5]
    consumer.commit({filled: OffsetAndMetadata(2, "", -1)})
    consumer.close()

    rows = kafka_io.topic_overview(settings, prefix=topic)
    assert [(row.topic, row.partitions, row.retained, row.group, row.lag) for row in rows] == [
        (topic, settings.topic_partitions, 5, group, 3)]
    printed = muisti(test_env, "topics", "list", "--prefix", topic).stdout
    assert re.search(rf"{re.escape(topic)}\s*│\s*{settings.topic_partitions}\s*│\s*5\s*│\s*"
                     rf"{re.escape(group)}\s*│\s*3", printed), printed


def run_loop_until(loop: ConsumerLoop, condition, what: str) -> None:
    thread = threading.Thread(target=loop.run, daemon=True)
    thread.start()
    try:
        wait_until(condition, 60, 0.2, what=what)
    finally:
        loop.stop()
        thread.join(30)


def test_a_dead_lettered_message_replayed_after_the_fix_is_applied_once(
        settings, test_env, db, unique):
    topic = create_topic(settings, f"ops.replay.{unique}")
    group = f"replay-{unique}"
    message = tally_envelope("parcel", note="needs the fix")
    produce(settings, topic, [message], key=lambda i, v: "parcel-key")
    producer = Producer(settings, "ops-test")
    ledger = ProcessedLedger(db, group)
    ledger.prepare()

    def refuse(envelope):
        raise InvalidMessage("unknown field 'note' (fixed in the next release)")

    def letters():
        found, _ = kafka_io.read_dead_letters(settings, idle_ms=500)
        return [letter for letter in found if letter.source_topic == topic]

    before_fix = ConsumerLoop(settings=settings, service="ops-test", group=group,
                              topics=[topic], handler=refuse, producer=producer, ledger=ledger)
    run_loop_until(before_fix, letters, "the message dead-lettered")

    dry = muisti(test_env, "dlq", "replay", "--topic", topic, "--reason-contains",
                 "UNKNOWN FIELD", "--dry-run").stdout
    assert message.message_id in dry and "1 messages would be replayed" in dry
    assert len(read_all(settings, topic)) == 1
    listed = muisti(test_env, "dlq", "list", "--topic", topic).stdout
    assert message.message_id in listed and "1 dead letters" in listed

    for _ in range(2):  # an operator who replays twice still applies the message once
        replayed = muisti(test_env, "dlq", "replay", "--topic", topic)
        assert f"replayed 1 messages to {topic}" in replayed.stdout
    on_topic = read_all(settings, topic)
    assert [m["message_id"] for m in on_topic] == [message.message_id] * 3

    applied = []
    after_fix = ConsumerLoop(settings=settings, service="ops-test", group=group,
                             topics=[topic], handler=lambda e: applied.append(e.message_id),
                             producer=producer, ledger=ledger)
    run_loop_until(after_fix, lambda: committed_total(settings, group, topic) == 3,
                   "the replayed messages consumed")
    producer.close()
    assert applied == [message.message_id]
    assert len(letters()) == 1  # nothing new was dead-lettered


def test_keys_created_on_the_command_line_authenticate_until_revoked(test_env, db, unique):
    created = muisti(test_env, "keys", "create", "--role", "dpo", "--name", f"ops {unique}")
    key_id = re.search(r"key_id: (\S+)", created.stdout).group(1)
    key = re.search(r"key:\s+(\S+)", created.stdout).group(1)
    principal = ApiKeys(db, cache_seconds=0).authenticate(key)
    assert principal.roles == frozenset({"dpo"}) and principal.name == f"ops {unique}"
    assert principal.key_id == key_id

    assert f"revoked {key_id}" in muisti(test_env, "keys", "revoke", key_id).stdout
    assert ApiKeys(db, cache_seconds=0).authenticate(key) is None


def test_topics_create_makes_every_muisti_topic(test_env):
    printed = muisti(test_env, "topics", "create").stdout
    assert f"{len(topics.ALL)} topics present" in printed
