"""The export service's test partner and helpers: a small HTTP server in a thread that
verifies signatures, applies each idempotency key once and fails on demand, and builders for
the contract-shaped events the export worker reads."""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import requests

from services.common.envelope import new_envelope
from services.export.rendering import signature_valid
from tests.support.kafka import produce
from tests.support.processes import ServiceWorker, free_port, wait_until

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
                if (status == 200 and partner.hold_batch is not None
                        and self.headers.get("X-Muisti-Batch") == partner.hold_batch):
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

    def bodies(self, kind: str) -> list[bytes]:
        """The body of each key of ``kind`` the partner applied, once per key."""
        return [self.applied[key] for key in dict.fromkeys(self.keys(kind))
                if key in self.applied]

    def close(self):
        self.release.set()
        self.server.shutdown()


def profile_changed(profile_id: str, email: str, segment: str, **traits) -> dict:
    snapshot = {"profile_id": profile_id, "identifiers": {"email": [email]},
                "traits": {"first_name": "Testi", "hetu": "010101-123N", **traits},
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


def put_partner(api, api_keys, partner_id: str, url: str, segment: str,
                secret: str = SECRET) -> None:
    response = requests.put(f"{api.url}/v1/partners/{partner_id}", headers=auth(api_keys),
                            json={"name": "Fake ads", "required_purposes": ["marketing"],
                                  "format": "jsonl", "segment": segment,
                                  "pseudonym_key": "pseudonym-key-0123456789",
                                  "destination": {"kind": "https", "url": url,
                                                  "signing_secret": secret},
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
        return run if run["status"] in ("succeeded", "failed", "cancelled") else None

    return wait_until(done, timeout, interval=0.3, what="the export run to finish")


class SoleExportWorker:
    """Starts export worker processes one at a time: calling it stops the earlier one first,
    so a test can kill and replace the worker; ``stop_all`` ends them."""

    def __init__(self, env: dict):
        self.env = env
        self.started: list[ServiceWorker] = []

    def __call__(self) -> ServiceWorker:
        for earlier in self.started:
            earlier.stop()
        worker = ServiceWorker("services.export", self.env, name="export-worker").start()
        self.started.append(worker)
        return worker

    def stop_all(self) -> None:
        for worker in self.started:
            worker.stop()
