"""The export service end to end on the real broker and store: the API and the worker as
processes, contract-shaped events on Kafka, and a fake partner (a small HTTP server in a
thread) that verifies signatures, applies each idempotency key once and fails on demand."""

from __future__ import annotations

import hashlib
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import orjson
import pytest
import requests

from services.common import topics
from services.common.envelope import new_envelope
from services.export.rendering import signature_valid
from tests.support.kafka import produce, read_all
from tests.support.processes import ServiceApi, ServiceWorker, free_port, wait_until

SECRET = "partner-signing-secret-0123456789"


class FakePartner:
    """Records every request; applies a key once; answers 503 to the first ``fail_first``
    requests; may hold the response to one batch until ``release`` is set."""

    def __init__(self, fail_first: int = 0, hold_batch: str | None = None):
        self.requests: list[dict] = []
        self.applied: dict[str, bytes] = {}
        self.fail_first = fail_first
        self.hold_batch = hold_batch
        self.holding = threading.Event()
        self.release = threading.Event()
        self._lock = threading.Lock()
        partner = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                key = self.headers.get("Idempotency-Key")
                with partner._lock:
                    partner.requests.append({"key": key, "headers": dict(self.headers),
                                             "body": body})
                    if partner.fail_first > 0:
                        partner.fail_first -= 1
                        status = 503
                    elif not signature_valid(SECRET, body,
                                             self.headers.get("X-Muisti-Signature")):
                        status = 401
                    else:
                        status = 200 if key not in partner.applied else 208
                        partner.applied.setdefault(key, body)
                if status == 200 and self.headers.get("X-Muisti-Batch") == partner.hold_batch:
                    partner.holding.set()  # applied; the acknowledgement waits
                    partner.release.wait(60)
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(b'{"received": true}')

        self.server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/muisti"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def keys(self, kind: str) -> list[str]:
        return [r["key"] for r in self.requests if r["headers"].get("X-Muisti-Kind") == kind]

    def close(self):
        self.release.set()
        self.server.shutdown()


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
    started: list[ServiceWorker] = []

    def start() -> ServiceWorker:
        """A fresh worker process, the only one: earlier ones are stopped first."""
        for earlier in started:
            earlier.stop()
        worker = ServiceWorker("services.export", export_env, name="export-worker").start()
        started.append(worker)
        return worker

    yield start
    for worker in started:
        worker.stop()


def profile_changed(profile_id: str, email: str, segment: str) -> dict:
    snapshot = {"profile_id": profile_id, "identifiers": {"email": [email]},
                "traits": {"first_name": "Testi", "hetu": "010101-123N"},
                "computed": {"purchase_count": 1}, "segments": [segment], "merged_into": None}
    return new_envelope("Profile Changed", "system", payload={
        "kind": "event_applied", "cause_message_id": "m", "event_type": "Identify",
        "channel": "web", "profile": snapshot}).resolved_to(profile_id)


def consent_changed(profile_id: str, state: str) -> dict:
    return new_envelope("Consent Changed", "system", payload={
        "purpose": "marketing", "state": state, "allowed": state == "granted",
        "reason": "test", "receipt_id": "r", "notice_version": None,
        "collected_at": "2025-01-01T00:00:00Z" if state == "granted"
        else "2025-06-01T00:00:00Z", "source": "test"}).resolved_to(profile_id)


def publish(settings, topic: str, envelopes: list) -> None:
    produce(settings, topic, envelopes, key=lambda i, envelope: envelope.profile_id)


def put_partner(api, api_keys, partner_id: str, url: str, segment: str) -> None:
    response = requests.put(f"{api.url}/v1/partners/{partner_id}", headers=auth(api_keys),
                            json={"name": "Fake ads", "required_purposes": ["marketing"],
                                  "format": "jsonl", "segment": segment,
                                  "pseudonym_key": "pseudonym-key-0123456789",
                                  "destination": {"kind": "https", "url": url,
                                                  "signing_secret": SECRET},
                                  "fields": [{"name": "em", "source": "identifiers.email",
                                              "treatment": "sha256", "platform": "meta",
                                              "platform_field": "em"},
                                             {"name": "pid", "source": "profile_id",
                                              "treatment": "hmac"}]}, timeout=10)
    assert response.status_code == 200, response.text


def auth(api_keys, role="admin"):
    return {"Authorization": f"Bearer {api_keys[role]}"}


def wait_for_read_model(db, profile_ids, consented):
    wait_until(lambda: db.export_profiles.count_documents({"_id": {"$in": profile_ids}})
               == len(profile_ids), 60, what="profiles in the export read model")
    wait_until(lambda: db.export_consents.count_documents(
        {"profile_id": {"$in": consented}}) == len(consented), 60, what="consent states")


def finished_run(api, api_keys, partner_id, run_id, timeout=60):
    def done():
        run = requests.get(f"{api.url}/v1/exports/{partner_id}/runs/{run_id}",
                           headers=auth(api_keys, "dpo"), timeout=10).json()
        return run if run["status"] in ("succeeded", "failed") else None

    return wait_until(done, timeout, interval=0.3, what="the export run to finish")


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
