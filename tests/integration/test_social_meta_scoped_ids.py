"""Meta's data-deletion callback names an app-scoped id; the running social API resolves it
through a fake Graph API's ids_for_pages (paged) and files an erasure for the app-scoped id and
each page-scoped id with the real privacy service, and the status page waits for all of them;
when the Graph API is down, the social worker resolves and files them later."""

from __future__ import annotations

import hashlib
import hmac
import uuid
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler
from urllib.parse import parse_qs, urlparse

import pytest
import requests

from services.common import topics
from services.common.bus import ensure_topics
from services.common.envelope import new_envelope
from services.social import privacy, signatures
from services.social.privacy import ANSWERING_SERVICES
from services.social.social_store import DeletionStatuses, MongoPendingResolutions
from tests.support.fake_http import answer_json, serve
from tests.support.kafka import produce, read_all
from tests.support.processes import ServiceApi, ServiceWorker, wait_until

META_SECRET = "meta-secret-" + uuid.uuid4().hex
APP_ID = "438291047712"


class FakeIdsForPages:
    """``GET /v21.0/{asid}/ids_for_pages``: the page-scoped ids in ``psids``, one per page of
    the answer, linked by absolute ``paging.next`` URLs as Meta gives them; 503 while
    ``down``."""

    def __init__(self):
        self.psids: dict[str, list[str]] = {}
        self.requests: list[dict] = []
        self.down = False
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                url = urlparse(self.path)
                query = {k: v[0] for k, v in parse_qs(url.query).items()}
                fake.requests.append({"path": url.path, "query": query})
                if fake.down:
                    answer_json(self, 503, {"error": {"message": "Service unavailable"}})
                    return
                asid = url.path.split("/")[2]
                index = int(query.get("after", "0"))
                psids = fake.psids.get(asid, [])
                data = [{"id": psid, "page": {"id": f"10{index}", "name": f"Muisti {index}"}}
                        for psid in psids[index:index + 1]]
                body = {"data": data, "paging": {"cursors": {"before": str(index),
                                                             "after": str(index + 1)}}}
                if index + 1 < len(psids):
                    body["paging"]["next"] = (f"{fake.url}/{asid}/ids_for_pages?access_token="
                                              f"{query.get('access_token')}&after={index + 1}")
                answer_json(self, 200, body)

        self.server, base = serve(Handler)
        self.url = f"{base}/v21.0"

    def close(self):
        self.server.shutdown()


@pytest.fixture(scope="module")
def fake_graph():
    fake = FakeIdsForPages()
    yield fake
    fake.close()


@pytest.fixture(scope="module")
def social_env(test_env, fake_graph):
    identity = ServiceApi("identity", test_env).start()
    consent = ServiceApi("consent", {**test_env, "CDP_IDENTITY_URL": identity.url}).start()
    yield {**test_env, "CDP_SOCIAL_META_APP_SECRET": META_SECRET, "CDP_CONSENT_URL": consent.url,
           "CDP_SOCIAL_META_APP_ID": APP_ID, "CDP_SOCIAL_META_GRAPH_URL": fake_graph.url}
    consent.stop()
    identity.stop()


@pytest.fixture(scope="module")
def social_api(social_env, settings):
    ensure_topics(settings)
    api = ServiceApi("social", social_env).start()
    yield api
    api.stop()


def ids() -> str:
    return str(uuid.uuid4().int)[:16]


def erasures_of(settings, wanted: set[str], count: int):
    """The erasure requests on cdp.privacy.requests naming any of ``wanted``, once there are
    ``count`` of them."""
    def found():
        requests_found = [m for m in read_all(settings, topics.PRIVACY_REQUESTS, idle_ms=300)
                          if any(i.get("type") == "facebook_id" and i.get("value") in wanted
                                 for i in m["payload"].get("identifiers") or [])]
        return requests_found if len(requests_found) >= count else None

    return found


def acknowledge(settings, request_ids):
    """Every answering service's done ack for each request."""
    produce(settings, topics.PRIVACY_ACKS, [new_envelope(
        "Privacy Request Acknowledged", "system", payload={
            "request_id": request_id, "kind": "erasure", "service": service,
            "status": "done", "summary": {}})
        for request_id in request_ids for service in ANSWERING_SERVICES],
        key=lambda i, v: v.payload["request_id"])


def test_deletion_reaches_the_page_scoped_ids_of_the_app_scoped_user(
        social_api, social_env, fake_graph, settings):
    asid, first_psid, second_psid = ids(), ids(), ids()
    fake_graph.psids[asid] = [first_psid, second_psid]
    signed = signatures.sign_request(META_SECRET, {"algorithm": "HMAC-SHA256",
                                                   "issued_at": 1717405200, "user_id": asid})
    url = f"{social_api.url}/v1/social/meta/data-deletion"
    response = requests.post(url, data={"signed_request": signed}, timeout=10)
    assert response.status_code == 200, response.text
    code = response.json()["confirmation_code"]
    again = requests.post(url, data={"signed_request": signed}, timeout=10)  # Meta retries
    assert again.json()["confirmation_code"] == code

    wanted = {asid, first_psid, second_psid}
    found = wait_until(erasures_of(settings, wanted, 3), 60, interval=0.5,
                       what="three erasure requests")
    assert len(found) == 3  # the retried callback filed nothing new
    named = {i["value"] for m in found for i in m["payload"]["identifiers"]} & wanted
    assert named == wanted

    first_call = fake_graph.requests[0]
    assert first_call["path"] == f"/v21.0/{asid}/ids_for_pages"
    token = f"{APP_ID}|{META_SECRET}"
    assert first_call["query"]["access_token"] == token
    assert first_call["query"]["appsecret_proof"] == hmac.new(
        META_SECRET.encode(), token.encode(), hashlib.sha256).hexdigest()

    status_url = f"{social_api.url}/v1/social/deletions/{code}"
    status = requests.get(status_url, timeout=10).json()
    assert status["page_scoped_erasures"] == 2 and status["status"] == "in_progress"

    request_ids = [m["payload"]["request_id"] for m in found]
    by_request = {m["payload"]["request_id"]: m for m in found}
    asid_request = next(r for r in request_ids if any(
        i["value"] == asid for i in by_request[r]["payload"]["identifiers"]))

    # the social worker follows the acks for the status page
    worker = ServiceWorker("services.social", social_env).start()
    try:
        acknowledge(settings, [asid_request])
        wait_until(lambda: requests.get(status_url, timeout=10).json()[
            "services_done"] == sorted(ANSWERING_SERVICES), 60, interval=0.5,
            what="the app-scoped erasure to be acknowledged")
        assert requests.get(status_url, timeout=10).json()["status"] == "in_progress"
        acknowledge(settings, [r for r in request_ids if r != asid_request])
        wait_until(lambda: requests.get(status_url, timeout=10).json()["status"] == "done",
                   60, interval=0.5, what="every erasure to be acknowledged")
    finally:
        worker.stop()


def test_page_scoped_ids_the_graph_api_could_not_resolve_are_erased_by_the_worker_later(
        social_api, social_env, fake_graph, settings):
    asid, psid = ids(), ids()
    fake_graph.psids[asid] = [psid]
    signed = signatures.sign_request(META_SECRET, {"algorithm": "HMAC-SHA256",
                                                   "issued_at": 1717405200, "user_id": asid})
    fake_graph.down = True
    response = requests.post(f"{social_api.url}/v1/social/meta/data-deletion",
                             data={"signed_request": signed}, timeout=10)
    # the app-scoped erasure is filed: Meta gets its answer, the rest is the worker's
    assert response.status_code == 200, response.text
    code = response.json()["confirmation_code"]
    assert response.json()["url"].endswith(f"/v1/social/deletions/{code}")
    asid_request, = wait_until(erasures_of(settings, {asid}, 1), 60, interval=0.5,
                               what="the app-scoped erasure")
    status_url = f"{social_api.url}/v1/social/deletions/{code}"
    status = requests.get(status_url, timeout=10).json()
    assert status["status"] == "in_progress" and status["page_scoped_ids"] == "pending"

    worker = ServiceWorker("services.social", social_env).start()
    try:
        acknowledge(settings, [asid_request["payload"]["request_id"]])
        wait_until(lambda: requests.get(status_url, timeout=10).json()[
            "services_done"] == sorted(ANSWERING_SERVICES), 60, interval=0.5,
            what="the app-scoped erasure to be acknowledged")
        # done everywhere, but the page-scoped ids are still to be erased
        assert requests.get(status_url, timeout=10).json()["status"] == "in_progress"
        fake_graph.down = False  # the worker's retry, a minute after the callback, finds it

        found = wait_until(erasures_of(settings, {asid, psid}, 2), 120, interval=0.5,
                           what="the worker to file the page-scoped erasure")
        psid_request = next(m["payload"]["request_id"] for m in found
                            if any(i["value"] == psid for i in m["payload"]["identifiers"]))
        status = requests.get(status_url, timeout=10).json()
        assert status["page_scoped_erasures"] == 1 and status["page_scoped_ids"] is None
        assert status["status"] == "in_progress"
        acknowledge(settings, [psid_request])
        wait_until(lambda: requests.get(status_url, timeout=10).json()["status"] == "done",
                   60, interval=0.5, what="every erasure to be acknowledged")
    finally:
        worker.stop()


def test_a_pending_resolution_keeps_the_status_in_progress_and_a_given_up_one_incomplete(db):
    request = privacy.from_meta_signed_request({"user_id": ids(), "issued_at": 1717405200},
                                               META_SECRET)
    code, now = request.confirmation_code, datetime.now(UTC)
    statuses, pending = DeletionStatuses(db), MongoPendingResolutions(db)
    statuses.record(request)
    pending.add(request, now, now)
    for service in ANSWERING_SERVICES:
        statuses.acknowledged(request.request_id, service, "done")
    status = statuses.get(code)
    assert status["status"] == "in_progress" and status["page_scoped_ids"] == "pending"

    retried, = [p for p in pending.due(now) if p.request.confirmation_code == code]
    assert retried.request == request  # rebuilt from the app-scoped id and the status
    assert retried.refused_since == now.replace(microsecond=now.microsecond // 1000 * 1000)
    stored = db[MongoPendingResolutions.COLLECTION].find_one({"_id": code})
    assert set(stored) == {"_id", "app_scoped_id", "retry_at", "refused_since"}

    pending.give_up(code, now)
    status = statuses.get(code)
    assert status["status"] == "incomplete" and status["page_scoped_ids"] == "unresolved"
    assert db[MongoPendingResolutions.COLLECTION].find_one({"_id": code}) is None
