"""A personal identity code ingested over HTTP and straight from Kafka is nowhere at rest in
the clear: not in any collection, not in any retained topic (but the producer's own input
topic), while lookups by hetu still find the customer and supervisors still read it."""

from __future__ import annotations

import orjson
import pytest
import requests
from kafka import KafkaConsumer, TopicPartition

from services.common import topics
from services.common.bus import Outgoing, Producer
from services.common.envelope import new_envelope
from services.common.hetu_protection import HetuProtector
from services.common.identifiers import is_hetu_digest
from services.common.store import unpack
from tests.support.kafka import read_all
from tests.support.processes import ServiceApi, ServiceWorker, wait_until

HETU_CHECK = "0123456789ABCDEFHJKLMNPRSTUVWXY"


def fresh_hetu(unique: str, salt: int) -> str:
    """A valid hetu no other test run uses: a 20th-century date and individual number
    picked from ``unique``."""
    number = int(unique, 16) + salt * 7919
    day, month, year = number % 28 + 1, number // 28 % 12 + 1, number // 336 % 100
    individual = number // 33600 % 898 + 2
    digits = f"{day:02d}{month:02d}{year:02d}{individual:03d}"
    return f"{digits[:6]}-{digits[6:]}{HETU_CHECK[int(digits) % 31]}"


@pytest.fixture(scope="module")
def stack(test_env):
    identity = ServiceApi("identity", test_env).start()
    env = {**test_env, "CDP_IDENTITY_URL": identity.url}
    processes = [identity, ServiceApi("profile", env).start(), ServiceApi("consent", env).start(),
                 ServiceWorker("services.identity", env, name="identity-worker").start(),
                 ServiceWorker("services.profile", env, name="profile-worker").start(),
                 ServiceWorker("services.consent", env, name="consent-worker").start(),
                 ServiceWorker("services.export", env, name="export-worker").start()]
    yield {p.name: p for p in processes}
    for process in reversed(processes):
        process.stop()


def auth(api_keys, role: str) -> dict:
    return {"Authorization": f"Bearer {api_keys[role]}"}


def find(stack, api_keys, hetu: str, role: str = "supervisor") -> dict | None:
    return _find(stack, api_keys, "hetu", hetu, role)


def _find(stack, api_keys, type_: str, value: str, role: str = "supervisor") -> dict | None:
    response = requests.get(f"{stack['profile-api'].url}/v1/profiles",
                            params={"type": type_, "value": value},
                            headers=auth(api_keys, role), timeout=10)
    return response.json() if response.status_code == 200 else None


def test_a_hetu_is_kept_only_as_digest_and_sealed_copy_however_it_arrives(
        stack, api_keys, settings, db, unique):
    by_http, by_kafka = fresh_hetu(unique, 1), fresh_hetu(unique, 2)
    response = requests.post(f"{stack['identity-api'].url}/v1/identify", json={
        "userId": f"H-{unique}", "messageId": f"hetu-http-{unique}",
        "traits": {"firstName": "Aino", "hetu": by_http.lower()}},
        auth=(api_keys["collector"], ""), timeout=10)
    assert response.status_code == 200, response.text
    producer = Producer(settings, "tests")
    producer.send([Outgoing(topics.EVENTS_PHONE, f"user_id:K-{unique}", new_envelope(
        "Customer Verified", "phone", identifiers={"user_id": f"K-{unique}", "hetu": by_kafka},
        payload={"traits": {"henkilotunnus": by_kafka}}))])
    producer.close()

    profiles = {}
    for hetu in (by_http, by_kafka):
        profiles[hetu] = wait_until(lambda h=hetu: find(stack, api_keys, h), 60, interval=0.5,
                                    what="the profile found by its hetu")
        # supervisors read the code; agents its birth date part
        assert profiles[hetu]["identifiers"]["hetu"] == [hetu]
        assert profiles[hetu]["traits"]["hetu"]["value"] == hetu
        masked = find(stack, api_keys, hetu, role="agent")
        assert masked["identifiers"]["hetu"] == [hetu[:6] + "*****"]
        assert hetu not in orjson.dumps(masked).decode()
    assert profiles[by_http]["profile_id"] != profiles[by_kafka]["profile_id"]

    resolved = requests.get(f"{stack['identity-api'].url}/v1/identity/resolve",
                            params={"type": "hetu", "value": by_kafka},
                            headers=auth(api_keys, "supervisor"), timeout=10)
    assert resolved.json()["profile_id"] == profiles[by_kafka]["profile_id"]
    digests = [i["value"] for i in resolved.json()["identifiers"] if i["type"] == "hetu"]
    assert len(digests) == 1 and is_hetu_digest(digests[0])

    # a data-subject request by hetu finds the profile and carries only the digest
    filed = requests.post(f"{stack['consent-api'].url}/v1/privacy/requests", json={
        "kind": "access", "reason": f"hetu test {unique}",
        "subject": {"identifier": {"type": "hetu", "value": by_http}}},
        headers=auth(api_keys, "dpo"), timeout=30)
    assert filed.status_code == 202, filed.text
    request_id = filed.json()["request_id"]
    fanned = wait_until(lambda: [m for m in read_all(settings, topics.PRIVACY_REQUESTS, 300)
                                 if m["payload"].get("request_id") == request_id], 60,
                        interval=0.5, what="the request on cdp.privacy.requests")[0]
    assert fanned["payload"]["profile_ids"] == [profiles[by_http]["profile_id"]]

    wait_until(lambda: all(db["export_profiles"].find_one({"_id": p["profile_id"]})
                           for p in profiles.values()), 180, interval=0.5,
               what="both profiles in the export read model")

    held = _every_collection(db)
    assert digests[0] in held  # the scan sees the data it is looking through
    for hetu in (by_http, by_kafka):
        assert hetu not in held and hetu.lower() not in held

    retained = _retained(settings)
    assert by_kafka in retained[topics.EVENTS_PHONE]  # the scan sees what it looks for
    for topic, text in retained.items():
        assert by_http not in text and by_http.lower() not in text, topic
        if topic != topics.EVENTS_PHONE:  # the producer's own message, as it sent it
            assert by_kafka not in text, topic


def test_erasing_the_subject_by_hetu_makes_every_sealed_copy_unreadable(
        stack, api_keys, settings, db, unique):
    hetu = fresh_hetu(unique, 3)
    message_id = f"hetu-erase-{unique}"
    response = requests.post(f"{stack['identity-api'].url}/v1/identify", json={
        "userId": f"E-{unique}", "messageId": message_id, "traits": {"hetu": hetu}},
        auth=(api_keys["collector"], ""), timeout=10)
    assert response.status_code == 200, response.text
    wait_until(lambda: find(stack, api_keys, hetu), 60, interval=0.5,
               what="the profile found by its hetu")
    resolved = [m for m in read_all(settings, topics.EVENTS_RESOLVED, 300)
                if m["message_id"] == message_id]
    sealed = resolved[0]["payload"]["traits"]["hetu"]
    hetus = HetuProtector.from_settings(settings, db, "tests")
    assert hetus.reveal(sealed) == hetu

    filed = requests.post(f"{stack['consent-api'].url}/v1/privacy/requests", json={
        "kind": "erasure", "reason": f"hetu test {unique}",
        "subject": {"identifier": {"type": "hetu", "value": hetu}}},
        headers=auth(api_keys, "dpo"), timeout=30)
    assert filed.status_code == 202, filed.text
    request_id = filed.json()["request_id"]

    # the copy on the retained topic stays, but nothing can read it any more
    wait_until(lambda: hetus.reveal(sealed) is None, 60, interval=0.5,
               what="the hetu's data key destroyed")
    wait_until(lambda: find(stack, api_keys, hetu) is None, 60, interval=0.5,
               what="the profile erased")

    # the suppression list holds the hetu's digest: a later event with it is dropped, while
    # an event after it on the same partition (same user id) goes through
    wait_until(lambda: [m for m in read_all(settings, topics.PRIVACY_ACKS, 300)
                        if m["payload"].get("request_id") == request_id
                        and m["payload"].get("service") == "identity"], 60, interval=0.5,
               what="the identity service's erasure ack")
    response = requests.post(f"{stack['identity-api'].url}/v1/batch", json={"batch": [
        {"type": "identify", "userId": f"F-{unique}", "traits": {"hetu": hetu}},
        {"type": "track", "userId": f"F-{unique}", "event": "Marker Seen"}]},
        auth=(api_keys["collector"], ""), timeout=10)
    assert response.json()["accepted"] == 2, response.text
    marker = wait_until(lambda: _find(stack, api_keys, "user_id", f"F-{unique}"), 60,
                        interval=0.5, what="the event after the suppressed one applied")
    assert "hetu" not in marker["identifiers"] and "hetu" not in marker["traits"]
    assert find(stack, api_keys, hetu) is None


def _every_collection(db) -> str:
    # packed documents (profiles, export rows) read as what they hold, not as BSON bytes
    return "".join(orjson.dumps([unpack(doc) for doc in db[name].find({})], default=str).decode()
                   for name in db.list_collection_names())


def _retained(settings) -> dict[str, str]:
    """Every key and value now in every topic, as text per topic (not every topic holds
    JSON, so read bytes)."""
    consumer = KafkaConsumer(bootstrap_servers=settings.kafka_bootstrap.split(","),
                             enable_auto_commit=False)
    try:
        partitions = [TopicPartition(topic, p) for topic in consumer.topics()
                      for p in consumer.partitions_for_topic(topic) or ()]
        consumer.assign(partitions)
        consumer.seek_to_beginning(*partitions)
        end = consumer.end_offsets(partitions)
        held: dict[str, list[bytes]] = {tp.topic: [] for tp in partitions}
        while any(consumer.position(tp) < end[tp] for tp in partitions):
            for tp, records in consumer.poll(timeout_ms=500).items():
                held[tp.topic].extend((r.key or b"") + b" " + (r.value or b"") for r in records)
        return {topic: b"\n".join(chunks).decode("utf-8", "replace")
                for topic, chunks in held.items()}
    finally:
        consumer.close()
