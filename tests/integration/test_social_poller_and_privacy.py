"""The mentions poller against a fake X API (paginating, rate-limiting once) with a restart in
the middle, and the privacy side: Meta's deletion callback and X's compliance events raise
erasure requests, the social worker acknowledges every request, and the status page follows
the acknowledgements."""

from __future__ import annotations

import threading
import uuid
from http.server import BaseHTTPRequestHandler
from urllib.parse import parse_qs, urlparse

import pytest
import requests

from services.common import topics
from services.common.bus import Producer, ensure_topics
from services.common.envelope import new_envelope
from services.social import signatures
from services.social.poller import Poller, PollLoop, RateLimited, XMentionsApi
from services.social.privacy import ANSWERING_SERVICES
from services.social.publish import publish
from services.social.social_store import MongoCheckpoints
from tests.support.fake_http import answer_json, serve
from tests.support.kafka import produce, read_all
from tests.support.processes import ServiceApi, ServiceWorker, wait_until

META_SECRET = "meta-secret-" + uuid.uuid4().hex
X_SECRET = "x-secret-" + uuid.uuid4().hex
BRAND = "2244994945"


class FakeXApi:
    """``GET /2/users/:id/mentions`` over ``count`` mentions, newest first, in pages of
    ``page_size``; answers 429 with Retry-After once, on the request numbered ``limit_on``."""

    def __init__(self, count: int, page_size: int, limit_on: int):
        base = int(str(uuid.uuid4().int)[:15]) * 1000
        self.ids = [str(base + i) for i in range(count, 0, -1)]
        self.page_size = page_size
        self.limit_on = limit_on
        self.requests: list[dict] = []
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                query = {k: v[0] for k, v in parse_qs(urlparse(self.path).query).items()}
                fake.requests.append({"path": urlparse(self.path).path, "query": query,
                                      "auth": self.headers.get("Authorization")})
                if len(fake.requests) == fake.limit_on:
                    self._answer(429, {"title": "Too Many Requests"}, {"Retry-After": "0"})
                    return
                self._answer(200, fake.page(query))

            def _answer(self, status, body, headers=None):
                answer_json(self, status, body, headers)

        self.server, self.url = serve(Handler)

    def page(self, query: dict) -> dict:
        since = int(query.get("since_id", 0))
        visible = [i for i in self.ids if int(i) > since]
        start = int(query.get("pagination_token", "0"))
        chunk = visible[start:start + self.page_size]
        meta = {"result_count": len(chunk)}
        if chunk:
            meta |= {"newest_id": chunk[0], "oldest_id": chunk[-1]}
        if start + self.page_size < len(visible):
            meta["next_token"] = str(start + self.page_size)
        return {"data": [{"id": i, "text": f"@MuistiBrand order {i} never arrived",
                          "author_id": f"9{i[-6:]}", "created_at": "2024-06-03T12:00:00.000Z",
                          "lang": "en"} for i in chunk],
                "includes": {"users": [{"id": f"9{i[-6:]}", "username": f"u{i[-6:]}",
                                        "name": "Customer"} for i in chunk]},
                "meta": meta}

    def close(self):
        self.server.shutdown()


@pytest.fixture
def fake_x():
    api = FakeXApi(count=9, page_size=2, limit_on=3)
    yield api
    api.close()


def test_poller_restarted_mid_sweep_produces_every_mention_once(fake_x, settings, db, unique):
    ensure_topics(settings)
    producer = Producer(settings, "social")
    name = f"x-mentions-test-{unique}"

    def new_poller():
        source = XMentionsApi(fake_x.url, BRAND, "bearer-for-tests", page_size=5)
        return Poller(name, BRAND, source, MongoCheckpoints(db),
                      lambda batch: publish(producer, batch, source="x-poller"))

    try:
        assert new_poller().sweep(max_pages=2) == 2  # then the worker "stops"
        assert MongoCheckpoints(db).load(name).pagination_token == "4"
        loop = PollLoop(new_poller(), interval_seconds=3600)  # the restarted worker
        thread = threading.Thread(target=loop.run)
        thread.start()
        wait_until(lambda: MongoCheckpoints(db).load(name).since_id == fake_x.ids[0], 30,
                   what="the sweep to finish")
        loop.stop()
        thread.join(10)
    finally:
        producer.close()

    tokens = [r["query"].get("pagination_token") for r in fake_x.requests]
    assert tokens == [None, "2", "4", "4", "6", "8"]  # resumed at page 3; the 429 retried
    assert all(r["auth"] == "Bearer bearer-for-tests" for r in fake_x.requests)
    wanted = {f"social:x:{i}" for i in fake_x.ids}
    produced = [m["message_id"] for m in read_all(settings, topics.EVENTS_SOCIAL)
                if m["message_id"] in wanted]
    assert sorted(produced) == sorted(wanted)  # no gap and no duplicate


def test_rate_limit_surfaces_as_a_wait_from_the_source(fake_x):
    fake_x.limit_on = 1
    with pytest.raises(RateLimited) as limited:
        XMentionsApi(fake_x.url, BRAND, "").page(None, None)
    assert limited.value.wait_seconds == 0


@pytest.fixture(scope="module")
def social_env(test_env):
    """Platform deletions are filed with the privacy service (consent API), which expands
    them through the identity API: both run for this module."""
    identity = ServiceApi("identity", test_env).start()
    consent = ServiceApi("consent", {**test_env, "CDP_IDENTITY_URL": identity.url}).start()
    yield {**test_env, "CDP_SOCIAL_META_APP_SECRET": META_SECRET,
           "CDP_SOCIAL_X_CONSUMER_SECRET": X_SECRET, "CDP_CONSENT_URL": consent.url}
    consent.stop()
    identity.stop()


@pytest.fixture(scope="module")
def social_api(social_env, settings):
    ensure_topics(settings)
    api = ServiceApi("social", social_env).start()
    yield api
    api.stop()


@pytest.fixture(scope="module")
def social_worker(social_env, social_api):
    worker = ServiceWorker("services.social", social_env).start()
    yield worker
    worker.stop()


def requests_for(settings, predicate):
    def found():
        return [m for m in read_all(settings, topics.PRIVACY_REQUESTS, idle_ms=300)
                if predicate(m)]

    return wait_until(found, 30, interval=0.5, what="an erasure request")


def test_meta_deletion_callback_raises_an_erasure_request_and_a_status_page(
        social_api, social_worker, settings):
    user_id = str(uuid.uuid4().int)[:15]
    signed = signatures.sign_request(META_SECRET, {"algorithm": "HMAC-SHA256",
                                                   "issued_at": 1717405200, "user_id": user_id})
    url = f"{social_api.url}/v1/social/meta/data-deletion"
    forged = signatures.sign_request("not-the-secret", {"algorithm": "HMAC-SHA256",
                                                        "user_id": user_id})
    assert requests.post(url, data={"signed_request": forged}, timeout=10).status_code == 403
    response = requests.post(url, data={"signed_request": signed}, timeout=10)
    assert response.status_code == 200, response.text
    answer = response.json()
    code = answer["confirmation_code"]
    assert answer["url"].endswith(f"/v1/social/deletions/{code}")
    [request] = requests_for(settings, lambda m: m["payload"].get("identifiers") == [
        {"type": "facebook_id", "value": user_id}])
    assert request["type"] == "Erasure Requested"
    assert request["payload"]["kind"] == "erasure" and request["payload"]["profile_ids"] == []
    request_id = request["payload"]["request_id"]

    status = requests.get(answer["url"], timeout=10)  # no public URL set: the request's own
    assert status.json()["status"] == "in_progress"

    # the social worker's own ack, then the other services' acks complete the request
    others = [s for s in ANSWERING_SERVICES if s != "social"]
    produce(settings, topics.PRIVACY_ACKS, [new_envelope(
        "Privacy Request Acknowledged", "system", payload={
            "request_id": request_id, "kind": "erasure", "service": service, "status": "done",
            "summary": {}}) for service in others], key=lambda i, v: request_id)

    def done():
        body = requests.get(f"{social_api.url}/v1/social/deletions/{code}", timeout=10).json()
        return body if body["status"] == "done" else None

    body = wait_until(done, 60, interval=0.5, what="the deletion to complete")
    assert body["services_done"] == sorted(ANSWERING_SERVICES)
    assert requests.get(f"{social_api.url}/v1/social/deletions/unknown",
                        timeout=10).status_code == 404


def test_x_compliance_events_raise_erasure_requests(social_api, social_env, api_keys, settings):
    user_id = str(uuid.uuid4().int)[:12]
    events = [{"data": {"user_suspend": {"user": {"id": user_id},
                                         "event_at": "2024-06-04T08:02:00.000Z"}}},
              {"data": {"user_unprotect": {"user": {"id": user_id},
                                           "event_at": "2024-06-04T08:03:00.000Z"}}}]
    response = requests.post(f"{social_api.url}/v1/social/x/compliance", json=events,
                             timeout=10,
                             headers={"Authorization": f"Bearer {api_keys['collector']}"})
    assert response.status_code == 200, response.text
    assert response.json()["ignored"] == 1
    [request] = requests_for(settings, lambda m: m["payload"].get("identifiers") == [
        {"type": "twitter_id", "value": user_id}])
    assert request["type"] == "Erasure Requested"
    # filed through the privacy service, so the dpo sees it with the platform as its reason
    filed = requests.get(f"{social_env['CDP_CONSENT_URL']}/v1/privacy/requests/"
                         f"{request['payload']['request_id']}", timeout=10,
                         headers={"Authorization": f"Bearer {api_keys['dpo']}"}).json()
    assert filed["proof"]["reason"].startswith("platform:x")


@pytest.mark.parametrize("user", ["123", ["123"], None])
def test_a_compliance_event_whose_user_is_no_object_gets_400_never_500(social_api, api_keys,
                                                                        user):
    response = requests.post(f"{social_api.url}/v1/social/x/compliance", timeout=10,
                             json={"data": {"user_delete": {"user": user}}},
                             headers={"Authorization": f"Bearer {api_keys['collector']}"})
    assert response.status_code == 400, response.text
    assert response.json()["errors"] == {"0": ["the user_delete event names no valid user id"]}


def test_a_compliance_event_at_an_impossible_time_is_still_filed(social_api, api_keys,
                                                                  settings):
    user_id = str(uuid.uuid4().int)[:12]
    response = requests.post(f"{social_api.url}/v1/social/x/compliance", timeout=10,
                             json={"data": {"user_delete": {
                                 "user": {"id": user_id},
                                 "event_at": "0001-01-01T00:00:00+02:00"}}},
                             headers={"Authorization": f"Bearer {api_keys['collector']}"})
    assert response.status_code == 200, response.text
    requests_for(settings, lambda m: m["payload"].get("identifiers") == [
        {"type": "twitter_id", "value": user_id}])


def test_the_social_worker_acknowledges_every_privacy_request(social_worker, settings):
    request_id = f"req-{uuid.uuid4().hex}"
    request = new_envelope("Access Requested", "system", payload={
        "request_id": request_id, "kind": "access", "profile_ids": ["p-1"],
        "identifiers": [{"type": "email", "value": "anna@example.com"}],
        "requested_by": "key-1"})
    produce(settings, topics.PRIVACY_REQUESTS, [request], key=lambda i, v: request_id)

    def ack():
        return [m for m in read_all(settings, topics.PRIVACY_ACKS, idle_ms=300)
                if m["payload"].get("request_id") == request_id
                and m["payload"].get("service") == "social"]

    [answer] = wait_until(ack, 60, interval=0.5, what="the social ack")
    assert answer["payload"]["status"] == "done" and answer["payload"]["data"] == {}
    assert answer["payload"]["summary"]["erased"] == 0


def test_poller_settings_start_the_poller_in_the_worker(fake_x, social_env, settings):
    fake_x.limit_on = 0
    env = {**social_env, "CDP_SOCIAL_POLL_URL": fake_x.url, "CDP_SOCIAL_POLL_USER_ID": BRAND,
           "CDP_SOCIAL_POLL_BEARER_TOKEN": "t", "CDP_SOCIAL_POLL_PAGE_SIZE": "5",
           "CDP_CONSUMER_GROUP_PREFIX": f"poller-{uuid.uuid4().hex[:6]}-"}
    worker = ServiceWorker("services.social", env, name="social-poller").start()
    try:
        wanted = {f"social:x:{i}" for i in fake_x.ids}

        def all_there():
            seen = {m["message_id"] for m in read_all(settings, topics.EVENTS_SOCIAL, idle_ms=300)}
            return wanted <= seen

        wait_until(all_there, 60, interval=0.5, what="the worker's poller to produce")
    finally:
        worker.stop()
