"""The export service end to end on the real broker and store: the API and the worker as
processes, contract-shaped events on Kafka, and a fake partner (a small HTTP server in a
thread, tests/support/export_partner.py) that verifies signatures, applies each idempotency key
once and fails on demand."""

from __future__ import annotations

import hashlib

import orjson
import pytest
import requests

from services.common import topics
from services.common.envelope import new_envelope
from services.common.store import ProcessedLedger, unpack
from services.export.worker import GROUP as EXPORT_FEED_GROUP
from tests.support.export_partner import (
    FakePartner,
    SoleExportWorker,
    auth,
    consent_changed,
    finished_run,
    profile_changed,
    publish,
    put_partner,
    wait_for_read_model,
)
from tests.support.kafka import produce, read_all
from tests.support.processes import ServiceApi, wait_until


@pytest.fixture(scope="module")
def export_env(test_env, tmp_path_factory):
    return {**test_env, "CDP_EXPORT_ALLOW_HTTP": "true", "CDP_EXPORT_LEASE_SECONDS": "3",
            "CDP_EXPORT_RETRY_BASE_SECONDS": "0.1", "CDP_EXPORT_BATCH_SIZE": "2",
            "CDP_EXPORT_DIRECTORY_ROOT": str(tmp_path_factory.mktemp("exports"))}


@pytest.fixture(scope="module")
def export_api(export_env):
    api = ServiceApi("export", export_env).start()
    yield api
    api.stop()


@pytest.fixture(scope="module")
def workers(export_env):
    sole = SoleExportWorker(export_env)
    yield sole
    sole.stop_all()


def test_a_run_sends_consented_profiles_hashed_and_signed_then_deletions_follow(
        export_api, workers, settings, db, api_keys, unique):
    workers()
    partner = FakePartner(fail_first=1)
    segment, partner_id = f"seg-{unique}", f"ads-{unique}"
    ids = [f"{unique}-p{i}" for i in range(1, 6)]
    emails = {pid: f"Customer.{pid}@Example.com" for pid in ids}
    publish(settings, topics.PROFILE_CHANGES,
            [profile_changed(pid, emails[pid], segment) for pid in ids])
    # p1-p3 consented, p4 withdrew, p5 never decided
    publish(settings, topics.CONSENT_CHANGES, [consent_changed(pid, "granted")
                                               for pid in ids[:4]])
    publish(settings, topics.CONSENT_CHANGES, [consent_changed(ids[3], "withdrawn")])
    wait_for_read_model(db, ids, ids[:4])
    wait_until(lambda: db.export_consents.find_one({"_id": f"{ids[3]}|marketing"})["state"]
               == "withdrawn", 30, what="the withdrawal")
    put_partner(export_api, api_keys, partner_id, partner.url, segment)

    url = f"{export_api.url}/v1/exports/{partner_id}/runs"
    first = requests.post(url, headers={**auth(api_keys, "dpo"), "Idempotency-Key": unique},
                          json={}, timeout=10)
    again = requests.post(url, headers={**auth(api_keys, "dpo"), "Idempotency-Key": unique},
                          json={}, timeout=10)
    assert first.status_code == again.status_code == 202
    assert first.json()["run_id"] == again.json()["run_id"]
    run = finished_run(export_api, api_keys, partner_id, first.json()["run_id"])

    assert run["status"] == "succeeded", run
    assert run["progress"]["considered"] == 5
    assert run["progress"]["exported"] == 3
    assert run["progress"]["excluded"] == {"consent:marketing:withdrawn": 1,
                                           "consent:marketing:missing": 1}
    assert run["progress"]["batches_sent"] == 2  # [p1 p2] [p3 -] ; [p5] had nobody to send
    assert run["audit"]["requested_by"] and run["audit"]["content_sha256"]
    batch_keys = partner.keys("batch")
    assert batch_keys[0] == batch_keys[1]  # the 503 was retried under the same key
    assert len(partner.applied) == 2
    rows = [orjson.loads(line) for body in partner.applied.values()
            for line in body.splitlines()]
    expected = {hashlib.sha256(emails[pid].lower().encode()).hexdigest() for pid in ids[:3]}
    assert {row["em"][0] for row in rows} == expected
    assert all(set(row) == {"em", "pid"} for row in rows)  # the allow-list, nothing more

    # a withdrawal and an erasure each reach the partner as a signed deletion notice
    publish(settings, topics.CONSENT_CHANGES, [consent_changed(ids[0], "withdrawn")])
    request_id = f"req-{unique}"
    produce(settings, topics.PRIVACY_REQUESTS, [new_envelope(
        "Erasure Requested", "system", payload={
            "request_id": request_id, "kind": "erasure", "profile_ids": [ids[1]],
            "identifiers": [], "requested_by": "test"})], key=lambda i, v: request_id)
    wait_until(lambda: len(partner.keys("deletion")) >= 2, 60, what="two deletion notices")
    notices = [orjson.loads(partner.applied[key]) for key in partner.keys("deletion")]
    assert {n["reason"] for n in notices} == {"consent:marketing:withdrawn", "erasure"}
    hashed = {pid: hashlib.sha256(emails[pid].lower().encode()).hexdigest() for pid in ids}
    assert {n["identifiers"]["em"][0] for n in notices} == {hashed[ids[0]], hashed[ids[1]]}

    def ack():
        acks = [m for m in read_all(settings, topics.PRIVACY_ACKS)
                if m["payload"].get("request_id") == request_id
                and m["payload"].get("service") == "export"]
        return acks[0] if acks else None

    erased = wait_until(ack, 30, interval=0.5, what="the export service's erasure ack")
    assert erased["payload"]["status"] == "done"
    assert erased["payload"]["summary"]["deletion_notices_queued"] == 1
    assert erased["payload"]["summary"]["read_model_profiles_deleted"] == 1
    assert db.export_profiles.find_one({"_id": ids[1]}) is None

    # an access request lists the partner that received the subject's data, and when
    access_id = f"acc-{unique}"
    produce(settings, topics.PRIVACY_REQUESTS, [new_envelope(
        "Access Requested", "system", payload={
            "request_id": access_id, "kind": "access", "profile_ids": [ids[2]],
            "identifiers": [], "requested_by": "test"})], key=lambda i, v: access_id)
    request_id = access_id
    access = wait_until(ack, 30, interval=0.5, what="the export service's access ack")
    partners = access["payload"]["data"]["partners"]
    assert [p["partner_id"] for p in partners] == [partner_id]
    assert partners[0]["first_sent_at"]
    partner.close()


def test_a_worker_killed_mid_run_resumes_without_sending_a_batch_twice(
        export_api, workers, settings, db, api_keys, unique):
    worker = workers()
    partner = FakePartner(hold_batch="1")
    segment, partner_id = f"seg-{unique}", f"crash-{unique}"
    ids = [f"{unique}-p{i}" for i in range(1, 7)]
    publish(settings, topics.PROFILE_CHANGES,
            [profile_changed(pid, f"c.{pid}@example.com", segment) for pid in ids])
    publish(settings, topics.CONSENT_CHANGES, [consent_changed(pid, "granted") for pid in ids])
    wait_for_read_model(db, ids, ids)
    put_partner(export_api, api_keys, partner_id, partner.url, segment)

    started = requests.post(f"{export_api.url}/v1/exports/{partner_id}/runs",
                            headers=auth(api_keys), json={}, timeout=10)
    assert started.status_code == 202
    assert partner.holding.wait(60), "the second batch never reached the partner"
    worker.kill()  # the partner applied batch 1 but the worker never saw the acknowledgement
    partner.release.set()
    workers()
    run = finished_run(export_api, api_keys, partner_id, started.json()["run_id"], timeout=60)

    assert run["status"] == "succeeded", run
    assert run["progress"]["exported"] == 6 and run["progress"]["batches_sent"] == 3
    assert run["audit"]["claims"] >= 2
    keys = partner.keys("batch")
    assert len(partner.applied) == 3  # each batch applied once
    held = [key for key in keys if key.endswith(":batch:000001")]
    assert len(held) == 2  # re-sent after the crash, under the same key
    rows = [orjson.loads(line)["pid"] for body in partner.applied.values()
            for line in body.splitlines()]
    assert len(rows) == len(set(rows)) == 6
    # partners see only their own runs; another partner's id answers 404
    mine = requests.get(f"{export_api.url}/v1/exports/{partner_id}/runs",
                        headers=auth(api_keys, "partner"), timeout=10)
    assert mine.status_code == 404
    partner.close()


def test_a_poll_of_profile_changes_keeps_each_profiles_last_state_in_order(
        workers, settings, db, unique):
    kept, erased, merged, last = (f"{unique}-kept", f"{unique}-erased", f"{unique}-merged",
                                  f"{unique}-last")
    changes = [profile_changed(kept, f"k.{unique}@example.com", "s", first_name="Eka"),
               profile_changed(erased, f"e.{unique}@example.com", "s"),
               profile_changed(merged, f"m.{unique}@example.com", "s"),
               profile_changed(kept, f"k2.{unique}@example.com", "s", first_name="Toka"),
               new_envelope("Profile Changed", "system", payload={
                   "kind": "erased", "cause_message_id": "e"}).resolved_to(erased),
               new_envelope("Profile Changed", "system", payload={
                   "kind": "merged_away", "merged_into": kept, "profile": None,
                   "cause_message_id": "m"}).resolved_to(merged),
               # made while the profile was being erased: it must not bring the row back
               profile_changed(erased, f"e.{unique}@example.com", "s", first_name="Later"),
               profile_changed(last, f"l.{unique}@example.com", "s")]
    publish(settings, topics.PROFILE_CHANGES, changes)
    workers()  # started after: the worker finds the changes in one poll
    # the changes lie on several partitions, so the last one published may be applied first
    ledger = ProcessedLedger(db, EXPORT_FEED_GROUP)
    wait_until(lambda: len(ledger.seen(c.message_id for c in changes)) == len(changes), 60,
               what="every change applied")

    rows = {doc["_id"]: unpack(doc) for doc in db.export_profiles.find(
        {"_id": {"$in": [kept, erased, merged, last]}})}
    assert set(rows) == {kept, last}
    assert rows[kept]["traits"]["first_name"] == "Toka"
    assert rows[kept]["identifiers"] == {"email": [f"k2.{unique}@example.com"]}
    holders = db.export_subject_index.find_one({"_id": f"identifier:email:k2.{unique}@example.com"})
    assert holders is not None and holders["profile_ids"] == [kept]
