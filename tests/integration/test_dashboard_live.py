"""The dashboard's endpoints in a real profile API process (granian) against the real
broker: a change on cdp.profile.changes and a call on cdp.events.resolved reach the open
server-sent-event stream they concern; tokens, roles and the stream limit are enforced; the
consent card degrades to "unavailable"."""

from __future__ import annotations

import json
import queue
import threading
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import requests

from services.common import topics
from services.common.bus import Outgoing, Producer
from services.common.envelope import new_envelope
from tests.support.processes import ServiceApi, free_port, wait_until


class EventStream:
    """An SSE client reading in a thread; ``events`` collects (event, data) pairs."""

    def __init__(self, url: str, **kwargs):
        self.response = requests.get(url, stream=True, timeout=(5, 60), **kwargs)
        self.events: queue.Queue[tuple[str, dict]] = queue.Queue()
        self.seen: list[tuple[str, dict]] = []
        self.ended = threading.Event()
        if self.response.status_code == 200:
            threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        event, data = "message", ""
        try:
            for line in self.response.iter_lines(decode_unicode=True):
                if line.startswith("event: "):
                    event = line[7:]
                elif line.startswith("data: "):
                    data = line[6:]
                elif line == "" and data:
                    self.events.put((event, json.loads(data)))
                    event, data = "message", ""
        except (requests.RequestException, AttributeError):
            pass  # closed by the test
        finally:
            self.ended.set()

    def wait_for(self, event: str, **match) -> dict:
        def arrived():
            while not self.events.empty():
                self.seen.append(self.events.get())
            return next((data for name, data in self.seen if name == event and all(
                data.get(k) == v for k, v in match.items())), None)

        return wait_until(arrived, 30, interval=0.05, what=f"{event} {match}")

    def close(self) -> None:
        self.response.close()


class ConsentStub(BaseHTTPRequestHandler):
    """Stands in for the consent service: answers one profile and records the key it got."""

    seen_keys: list[str] = []

    def do_GET(self):  # noqa: N802 - http.server's naming
        ConsentStub.seen_keys.append(self.headers.get("X-API-Key", ""))
        if self.path.endswith("/p-with-consents"):
            body, status = {"profile_id": "p-with-consents", "consents": [
                {"purpose": "marketing_email", "state": "granted", "allowed": True,
                 "titles": {"fi": "Sähköpostimarkkinointi", "en": "Email marketing"}}]}, 200
        else:
            body, status = {"status": 403, "detail": "agents may not read consents"}, 403
        payload = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def consent_stub():
    server = ThreadingHTTPServer(("127.0.0.1", 0), ConsentStub)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()


@pytest.fixture(scope="module")
def profile_api(test_env, consent_stub):
    api = ServiceApi("profile", {**test_env, "CDP_CONSENT_URL": consent_stub,
                                 "CDP_DASHBOARD_MAX_STREAMS": "3"}).start()
    yield api
    api.stop()


@pytest.fixture(scope="module")
def producer(settings):
    producer = Producer(settings, "tests")
    yield producer
    producer.close()


def headers(api_keys, role="agent"):
    return {"X-API-Key": api_keys[role]}


def open_stream(api, api_keys, **interest) -> EventStream:
    grant = requests.post(f"{api.url}/v1/dashboard/stream-token", json=interest,
                          headers=headers(api_keys), timeout=10)
    assert grant.status_code == 200, grant.text
    stream = EventStream(api.url + grant.json()["stream_url"])
    assert stream.response.status_code == 200, stream.response.text
    assert stream.response.headers["Content-Type"].startswith("text/event-stream")
    stream.wait_for("ready")
    return stream


def profile_changed(profile_id: str):
    return new_envelope("Profile Changed", "system", payload={
        "kind": "event_applied", "cause_message_id": "x", "event_type": "Order Completed",
        "channel": "web", "profile": None}).resolved_to(profile_id)


def test_a_profile_change_reaches_the_stream_showing_that_profile_and_no_other(
        profile_api, api_keys, producer, unique):
    mine, other = f"p-{unique}", f"p-other-{unique}"
    stream = open_stream(profile_api, api_keys, profile_id=mine, tab_id=f"t-{unique}")
    try:
        # one partition, the other profile's change first: seeing mine proves it was read
        producer.send([Outgoing(topics.PROFILE_CHANGES, mine, profile_changed(other)),
                       Outgoing(topics.PROFILE_CHANGES, mine, profile_changed(mine))])
        change = stream.wait_for("profile-changed", profile_id=mine)
        assert change["kind"] == "event_applied" and change["event_type"] == "Order Completed"
        assert all(data.get("profile_id") != other for _, data in stream.seen)
    finally:
        stream.close()


def test_a_call_to_the_agents_extension_pops_the_callers_profile(
        profile_api, api_keys, producer, unique):
    extension = unique[:6]
    stream = open_stream(profile_api, api_keys, extension=extension)
    try:
        call = new_envelope("Call Started", "phone", identifiers={"phone": "+358401234567"},
                            payload={"call_id": unique, "caller_number": "+358401234567",
                                     "extension": extension, "queue": "orders"})
        producer.send([Outgoing(topics.EVENTS_RESOLVED, f"p-caller-{unique}",
                                call.resolved_to(f"p-caller-{unique}"))])
        pop = stream.wait_for("screen-pop")
        assert pop == {"profile_id": f"p-caller-{unique}", "type": "Call Started",
                       "call_id": unique, "agent_id": None, "extension": extension,
                       "queue": "orders"}
    finally:
        stream.close()


def test_a_stream_needs_a_valid_token_or_a_key_with_a_dashboard_role(profile_api, api_keys):
    stream_url = f"{profile_api.url}/v1/dashboard/stream"
    forged = requests.get(stream_url, params={"token": "not-a-token"}, timeout=10)
    assert forged.status_code == 401
    assert forged.headers["Content-Type"] == "application/problem+json"
    assert forged.json()["detail"] == "the stream token is invalid"
    assert requests.get(stream_url, params={"profile_id": "p1"}, timeout=10).status_code == 401
    assert requests.get(stream_url, headers=headers(api_keys), timeout=10).status_code == 422
    assert requests.post(f"{profile_api.url}/v1/dashboard/stream-token",
                         json={"profile_id": "p1"}, headers=headers(api_keys, "partner"),
                         timeout=10).status_code == 403
    nothing = requests.post(f"{profile_api.url}/v1/dashboard/stream-token", json={},
                            headers=headers(api_keys), timeout=10)
    assert nothing.status_code == 422


def test_a_new_stream_from_the_same_tab_replaces_the_old_one(profile_api, api_keys, unique):
    first = open_stream(profile_api, api_keys, profile_id=f"p1-{unique}", tab_id=unique)
    second = open_stream(profile_api, api_keys, profile_id=f"p2-{unique}", tab_id=unique)
    try:
        # the server ended the first stream at once rather than at its next heartbeat
        wait_until(first.ended.is_set, 10, what="the replaced stream ended")
        assert not second.ended.is_set()
    finally:
        first.close()
        second.close()


def test_open_streams_leave_the_request_threads_free_and_one_beyond_the_limit_gets_503(
        test_env, api_keys, unique):
    api = ServiceApi("profile", {**test_env, "CDP_HTTP_THREADS": "2",
                                 "CDP_DASHBOARD_MAX_STREAMS": "3"}).start()
    streams = [open_stream(api, api_keys, profile_id=f"p-{unique}-{n}") for n in range(3)]
    try:
        # as many requests at once as there are request threads, while every stream is open
        with ThreadPoolExecutor(2) as pool:
            answers = list(pool.map(lambda n: requests.get(
                f"{api.url}/v1/profiles/p-{unique}-none", headers=headers(api_keys),
                timeout=10), range(4)))
        assert [answer.status_code for answer in answers] == [404] * 4
        grant = requests.post(f"{api.url}/v1/dashboard/stream-token",
                              json={"profile_id": "p2"}, headers=headers(api_keys),
                              timeout=10).json()
        refused = requests.get(api.url + grant["stream_url"], timeout=10)
        assert refused.status_code == 503
        assert refused.headers["Retry-After"] == "5"
        assert "3 live streams" in refused.json()["detail"]
    finally:
        for stream in streams:
            stream.close()
        api.stop()


def test_consents_come_from_the_consent_service_read_with_the_agents_own_key(
        profile_api, api_keys):
    answer = requests.get(f"{profile_api.url}/v1/dashboard/profiles/p-with-consents/consents",
                          headers=headers(api_keys), timeout=10).json()
    assert answer == {"available": True, "consents": [
        {"purpose": "marketing_email", "state": "granted", "allowed": True, "at": None,
         "titles": {"fi": "Sähköpostimarkkinointi", "en": "Email marketing"}}]}
    assert ConsentStub.seen_keys[-1] == api_keys["agent"]


def test_a_refusing_or_absent_consent_service_makes_consents_unavailable(
        profile_api, test_env, api_keys):
    refused = requests.get(f"{profile_api.url}/v1/dashboard/profiles/p-other/consents",
                           headers=headers(api_keys), timeout=10).json()
    assert refused == {"available": False, "status": 403,
                       "detail": "agents may not read consents"}
    api = ServiceApi("profile", {**test_env,
                                 "CDP_CONSENT_URL": f"http://127.0.0.1:{free_port()}"}).start()
    try:
        absent = requests.get(f"{api.url}/v1/dashboard/profiles/p1/consents",
                              headers=headers(api_keys), timeout=10).json()
        assert absent == {"available": False, "detail": "the consent service did not answer"}
    finally:
        api.stop()


def test_the_page_is_served_with_a_strict_content_security_policy(profile_api):
    page = requests.get(f"{profile_api.url}/dashboard", timeout=10)
    assert page.status_code == 200 and 'type="module"' in page.text
    policy = page.headers["Content-Security-Policy"]
    assert "script-src 'self'" in policy and "connect-src 'self'" in policy
    script = requests.get(f"{profile_api.url}/dashboard/static/app.js", timeout=10)
    assert script.status_code == 200
    assert "javascript" in script.headers["Content-Type"]
