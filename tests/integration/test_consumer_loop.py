"""The shared consumer loop against the real broker and store, in real worker processes."""

from __future__ import annotations

import threading
import time

import pytest

from services.common import topics
from services.common.bus import Outgoing, Producer
from tests.support.kafka import committed_total, create_topic, produce, read_all, tally_envelope
from tests.support.processes import ServiceWorker, wait_until
from tests.support.tally_worker import tally_collection

TALLY_WORKER = "tests.support.tally_worker"


def applied_ids(db, prefix: str) -> list[str]:
    ids: list[str] = []
    for doc in db[tally_collection(f"test.tally.{prefix}")].find({}, {"applied": 1}):
        ids.extend(doc.get("applied", []))
    return ids


@pytest.fixture
def tally_topic(settings, unique):
    return create_topic(settings, f"test.tally.{unique}")


def start_tally_worker(test_env, topic, group, delay_ms=0, batch=500) -> ServiceWorker:
    env = {**test_env, "CDP_CONSUMER_BATCH_SIZE": str(batch)}
    return ServiceWorker(TALLY_WORKER, env, topic, group, str(delay_ms)).start()


def test_worker_stores_each_effect_and_commits_its_offset_only_after_the_write(
        settings, test_env, db, tally_topic, unique):
    group = f"tally-{unique}"
    worker = start_tally_worker(test_env, tally_topic, group, delay_ms=2, batch=50)
    try:
        envelopes = [tally_envelope(f"{unique}-{i % 20}") for i in range(400)]
        produce(settings, tally_topic, envelopes)
        samples = []

        def done():
            committed = committed_total(settings, group, tally_topic)
            stored = len(applied_ids(db, unique))  # read after the commit: only grows
            samples.append((committed, stored))
            assert worker.alive(), worker.tail()
            return committed == 400 and stored == 400

        wait_until(done, 90, interval=0.05, what="all 400 applied and committed")
        assert all(committed <= stored for committed, stored in samples), samples
        assert any(0 < committed < 400 for committed, _ in samples), "no mid-run sample taken"
        assert sorted(applied_ids(db, unique)) == sorted(e.message_id for e in envelopes)
    finally:
        worker.stop()


def test_malformed_and_failing_messages_go_to_the_dead_letter_topic_and_the_worker_goes_on(
        settings, test_env, db, tally_topic, unique):
    group = f"tally-{unique}"
    worker = start_tally_worker(test_env, tally_topic, group)
    try:
        good_before = [tally_envelope(f"{unique}-a") for _ in range(5)]
        good_after = [tally_envelope(f"{unique}-b") for _ in range(5)]
        poison = tally_envelope(f"{unique}-p", poison=True)
        bug = tally_envelope(f"{unique}-x", explode=True)
        produce(settings, tally_topic,
                [*good_before, b"{not json", b'{"message_id": "x"}', poison, bug, *good_after],
                key=lambda i, v: "same-partition")
        wait_until(lambda: len(applied_ids(db, unique)) == 10, 60, what="good messages applied")

        def letters():
            found = [m for m in read_all(settings, topics.DEAD_LETTER)
                     if m["source_topic"] == tally_topic]
            return found if len(found) == 4 else None

        found = wait_until(letters, 60, what="four dead letters")
        kinds = sorted(letter["kind"] for letter in found)
        assert kinds == ["handler_error", "invalid", "invalid_envelope", "invalid_envelope"]
        by_kind = {letter["kind"]: letter for letter in found}
        assert "poison payload refused" in by_kind["invalid"]["reason"]
        assert "ZeroDivisionError" in by_kind["handler_error"]["reason"]
        assert all(letter["original_b64"] and letter["offset"] >= 0 for letter in found)
        assert worker.alive()
    finally:
        worker.stop()


def test_worker_killed_mid_batch_and_restarted_applies_every_message_exactly_once(
        settings, test_env, db, tally_topic, unique):
    group = f"tally-{unique}"
    count = 3000
    envelopes = [tally_envelope(f"{unique}-{i % 50}") for i in range(count)]
    produce(settings, tally_topic, envelopes)
    kills = 0
    worker = start_tally_worker(test_env, tally_topic, group, delay_ms=1, batch=200)
    try:
        for threshold in (600, 1800):
            wait_until(lambda t=threshold: len(applied_ids(db, unique)) >= t, 120,
                       interval=0.02, what=f"{threshold} applied")
            worker.kill()
            kills += 1
            assert len(applied_ids(db, unique)) < count, "killed too late to prove anything"
            worker = start_tally_worker(test_env, tally_topic, group, delay_ms=1, batch=200)
        wait_until(lambda: committed_total(settings, group, tally_topic) == count, 180,
                   what="every offset committed")
    finally:
        worker.stop()
    ids = applied_ids(db, unique)
    assert kills == 2
    assert len(ids) == count and len(set(ids)) == count
    assert sum(doc["n"] for doc in db[tally_collection(tally_topic)].find()) == count


def test_broker_stopped_and_restarted_while_producing_and_consuming_loses_nothing_accepted(
        settings, test_env, db, tally_topic, unique, infra):
    if infra.kafka_is_external:
        pytest.fail("this test restarts the broker; run it against the local test instance")
    group = f"tally-{unique}"
    worker = start_tally_worker(test_env, tally_topic, group)
    accepted: list = []
    refused = []
    stop = threading.Event()

    def keep_producing():
        producer = Producer(settings, "tests")
        while not stop.is_set():
            chunk = [tally_envelope(f"{unique}-{i % 10}") for i in range(20)]
            try:
                producer.send([Outgoing(tally_topic, e.message_id, e) for e in chunk], timeout=15)
                accepted.extend(chunk)  # acknowledged by the broker: must never be lost
            except Exception as exc:  # noqa: BLE001 - not acknowledged, so not accepted
                refused.append(repr(exc))
            time.sleep(0.2)  # ~100 messages/s: a steady stream the worker keeps up with
        producer.close()

    producing = threading.Thread(target=keep_producing)
    producing.start()
    try:
        wait_until(lambda: len(applied_ids(db, unique)) >= 200, 60, what="traffic flowing")
        infra.stop_kafka()
        time.sleep(3)
        infra.start_kafka()
        infra.wait_ready()
        before = len(accepted)
        wait_until(lambda: len(accepted) >= before + 200, 120, what="producing again")
        stop.set()
        producing.join(60)
        # by id, not by count: a send that timed out may still have reached the broker, and
        # those extra messages would let a count pass before the last accepted ones applied
        accepted_ids = {e.message_id for e in accepted}
        wait_until(lambda: accepted_ids <= set(applied_ids(db, unique)), 180,
                   what="every accepted message applied after the restart")
        assert worker.alive(), worker.tail()
    finally:
        stop.set()
        worker.stop()
    ids = applied_ids(db, unique)
    assert len(ids) == len(set(ids)), "a message was applied twice"
    # a send that timed out may still have reached the broker: extra is fine, missing is not
    assert accepted_ids <= set(ids)


def test_store_stopped_and_restarted_under_load_loses_and_doubles_nothing(
        settings, test_env, db, tally_topic, unique, infra):
    if infra.mongo_is_external:
        pytest.fail("this test restarts the store; run it against the local test instance")
    group = f"tally-{unique}"
    worker = start_tally_worker(test_env, tally_topic, group, delay_ms=1, batch=100)
    envelopes = [tally_envelope(f"{unique}-{i % 20}") for i in range(1500)]
    try:
        produce(settings, tally_topic, envelopes[:500])
        wait_until(lambda: len(applied_ids(db, unique)) >= 100, 60, what="traffic flowing")
        infra.stop_mongo()
        produce(settings, tally_topic, envelopes[500:])  # Kafka keeps accepting meanwhile
        time.sleep(3)
        infra.start_mongo()
        infra.wait_ready()
        wait_until(lambda: len(applied_ids(db, unique)) >= len(envelopes), 180,
                   what="every message applied after the store came back")
        assert worker.alive(), worker.tail()
    finally:
        worker.stop()
    ids = applied_ids(db, unique)
    assert sorted(ids) == sorted(e.message_id for e in envelopes)
