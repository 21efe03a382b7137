"""The X user compliance stream reader against a fake streaming X API (chunked JSON lines with
keep-alives, a disconnect, backfilled duplicates), filing through the real privacy service
(consent + identity APIs) onto the real broker, with its position in the real store."""

from __future__ import annotations

import json
import queue
import threading
import uuid
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

import pytest

from services.common import topics
from services.common.bus import ensure_topics
from services.social.compliance_stream import (
    ComplianceLoop,
    ComplianceReader,
    XUserComplianceStream,
)
from services.social.filing import FilingFailed, PrivacyFiler
from services.social.social_store import (
    DeletionStatuses,
    MongoPendingDeletions,
    MongoStreamPositions,
)
from tests.support.kafka import read_all
from tests.support.processes import ServiceApi, ServiceWorker, wait_until

X_SECRET = "x-secret-" + uuid.uuid4().hex
HOLD_OPEN = object()  # a script step: keep the connection open with keep-alives until closed


class FakeComplianceStream:
    """``GET /2/users/compliance/stream``: each connection plays the next script (lines, then
    either the end of the stream or HOLD_OPEN) in chunked encoding, as X streams."""

    def __init__(self):
        self.scripts: queue.Queue = queue.Queue()
        self.connections: list[dict] = []
        self.release = threading.Event()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_GET(self):
                url = urlparse(self.path)
                fake.connections.append({
                    "path": url.path, "auth": self.headers.get("Authorization"),
                    "query": {k: v[0] for k, v in parse_qs(url.query).items()}})
                try:
                    script = fake.scripts.get_nowait()
                except queue.Empty:
                    script = [HOLD_OPEN]
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                try:
                    for step in script:
                        if step is HOLD_OPEN:
                            while not fake.release.wait(0.2):
                                self._chunk(b"\r\n")
                        else:
                            self._chunk(json.dumps(step).encode() + b"\r\n")
                    self.wfile.write(b"0\r\n\r\n")
                    self.wfile.flush()
                except OSError:
                    pass  # the reader hung up
                self.close_connection = True

            def _chunk(self, data: bytes):
                self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
                self.wfile.flush()

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def close(self):
        self.release.set()
        self.server.shutdown()


def event(name: str, user_id: str, minute: int = 0) -> dict:
    return {"data": {name: {"user": {"id": user_id},
                            "event_at": f"2024-06-04T08:{minute:02d}:00.000Z"}}}


def user_ids(count: int) -> list[str]:
    base = str(uuid.uuid4().int)[:10]
    return [f"{base}{i}" for i in range(count)]


@pytest.fixture
def fake_stream():
    fake = FakeComplianceStream()
    yield fake
    fake.close()


@pytest.fixture(scope="module")
def privacy_env(test_env):
    identity = ServiceApi("identity", test_env).start()
    consent = ServiceApi("consent", {**test_env, "CDP_IDENTITY_URL": identity.url}).start()
    yield {**test_env, "CDP_SOCIAL_X_CONSUMER_SECRET": X_SECRET, "CDP_CONSENT_URL": consent.url}
    consent.stop()
    identity.stop()


def erasures_for(settings, ids: list[str], timeout: float = 60) -> dict[str, list[dict]]:
    """The erasure requests on cdp.privacy.requests naming each twitter id, once all have
    one."""
    def found():
        by_id = {i: [] for i in ids}
        for message in read_all(settings, topics.PRIVACY_REQUESTS, idle_ms=300):
            for identifier in message["payload"].get("identifiers") or []:
                if identifier.get("type") == "twitter_id" and identifier.get("value") in by_id:
                    by_id[identifier["value"]].append(message)
        return by_id if all(by_id.values()) else None

    return wait_until(found, timeout, interval=0.5, what="the erasure requests")


def reader(fake, privacy_env, settings, db, partition: int, file=None) -> ComplianceReader:
    filer = PrivacyFiler(privacy_env["CDP_CONSENT_URL"], settings.service_api_key,
                         DeletionStatuses(db))
    return ComplianceReader(partition, XUserComplianceStream(fake.url, "stream-bearer"),
                            MongoStreamPositions(db), MongoPendingDeletions(db),
                            file or filer.file, X_SECRET)


def running(loop: ComplianceLoop) -> threading.Thread:
    thread = threading.Thread(target=loop.run, daemon=True)
    thread.start()
    return thread


def test_stream_events_become_erasures_across_a_disconnect_and_a_restart(
        fake_stream, privacy_env, settings, db):
    ensure_topics(settings)
    deleted, unprotected, protected, suspended = user_ids(4)
    partition = 2
    MongoStreamPositions(db)._collection.delete_one({"_id": f"x-user-compliance-{partition}"})
    fake_stream.scripts.put([event("user_delete", deleted, 1),
                             event("user_unprotect", unprotected, 2),
                             event("user_protect", protected, 3)])  # then X disconnects
    # the reconnect backfills: the protect event comes again, then a new one
    fake_stream.scripts.put([event("user_protect", protected, 3),
                             event("user_suspend", suspended, 4), HOLD_OPEN])
    loop = ComplianceLoop(reader(fake_stream, privacy_env, settings, db, partition))
    thread = running(loop)
    try:
        found = erasures_for(settings, [deleted, protected, suspended])
    finally:
        loop.stop()
        thread.join(10)
    assert not thread.is_alive()
    assert all(len(requests) == 1 for requests in found.values())  # the backfilled duplicate
    assert found[protected][0]["type"] == "Erasure Requested"
    first, second = fake_stream.connections[:2]
    assert first["path"] == "/2/users/compliance/stream"
    assert first["query"] == {"partition": "2"}  # a first start: nothing to backfill
    assert second["query"] == {"partition": "2", "backfill_minutes": "1"}
    assert first["auth"] == "Bearer stream-bearer"

    # the worker restarts three minutes later: it asks for those minutes again
    positions = MongoStreamPositions(db)
    name = f"x-user-compliance-{partition}"
    stopped_at = positions.load(name) - timedelta(minutes=3)
    positions.save(name, stopped_at)
    restarted = ComplianceLoop(reader(fake_stream, privacy_env, settings, db, partition))
    before = len(fake_stream.connections)
    thread = running(restarted)
    try:  # the keep-alives of the new connection move the position on
        wait_until(lambda: positions.load(name) > stopped_at + timedelta(minutes=3), 30,
                   interval=0.2, what="the position to move")
    finally:
        restarted.stop()
        thread.join(10)
    assert fake_stream.connections[before]["query"]["backfill_minutes"] == "4"


def test_deletions_wait_in_the_store_while_the_privacy_service_is_down(
        fake_stream, privacy_env, settings, db):
    ensure_topics(settings)
    first, second = user_ids(2)
    fake_stream.scripts.put([event("user_delete", first), event("user_suspend", second),
                             HOLD_OPEN])
    down = True
    filer = PrivacyFiler(privacy_env["CDP_CONSENT_URL"], settings.service_api_key,
                         DeletionStatuses(db))

    def file(deletion):
        if down:
            raise FilingFailed("the privacy service is unreachable")
        filer.file(deletion)

    stream_reader = reader(fake_stream, privacy_env, settings, db, 3, file)
    loop = ComplianceLoop(stream_reader)
    thread = running(loop)
    try:
        def both_pending():
            pending = {d.identifiers[0][1] for d in MongoPendingDeletions(db).all()}
            return {first, second} <= pending

        wait_until(both_pending, 30, interval=0.2, what="the deletions to be kept pending")
        loop.stop()
        thread.join(10)
        down = False  # the privacy service is back: the next event or reconnect files them
        assert stream_reader.file_pending() >= 2
    finally:
        loop.stop()
    erasures_for(settings, [first, second])
    left = {d.identifiers[0][1] for d in MongoPendingDeletions(db).all()}
    assert not left & {first, second}


def test_the_worker_reads_the_configured_partitions(fake_stream, privacy_env, settings):
    deleted, = user_ids(1)
    fake_stream.scripts.put([event("user_delete", deleted), HOLD_OPEN])
    env = {**privacy_env, "CDP_SOCIAL_X_COMPLIANCE_URL": fake_stream.url,
           "CDP_SOCIAL_X_COMPLIANCE_PARTITIONS": "4",
           "CDP_SOCIAL_X_COMPLIANCE_BEARER_TOKEN": "worker-bearer",
           "CDP_CONSUMER_GROUP_PREFIX": f"compliance-{uuid.uuid4().hex[:6]}-"}
    worker = ServiceWorker("services.social", env, name="social-compliance").start()
    try:
        erasures_for(settings, [deleted])
    finally:
        worker.stop()
    assert {c["query"]["partition"] for c in fake_stream.connections} == {"4"}
    assert {c["auth"] for c in fake_stream.connections} == {"Bearer worker-bearer"}
