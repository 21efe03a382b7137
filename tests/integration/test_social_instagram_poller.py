"""The Instagram mentions poller against a fake Graph API (/{ig-user-id}/tags with cursor
paging and a throttled call announced in X-Business-Use-Case-Usage), restarted mid-sweep, then
polled again after new tags: every mention produced once to the real broker, the checkpoint in
the real store."""

from __future__ import annotations

import json
import threading
import uuid
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler
from urllib.parse import parse_qs, urlparse

import pytest

from services.common import topics
from services.common.bus import Producer, ensure_topics
from services.social.instagram import InstagramTagsApi
from services.social.messages import from_instagram_tags_page
from services.social.poller import Poller, PollLoop
from services.social.publish import publish
from services.social.social_store import MongoCheckpoints
from tests.support.fake_http import answer_json, serve
from tests.support.kafka import read_all
from tests.support.processes import wait_until

BRAND = "17841400008460056"


class FakeGraphApi:
    """``GET /v21.0/{ig-user-id}/tags`` over ``media`` (newest first) in pages of
    ``page_size``; the request numbered ``throttle_on`` is refused with Instagram's throttling
    error 80002 and a usage header announcing no wait."""

    def __init__(self, count: int, page_size: int, throttle_on: int):
        self.start = datetime(2024, 6, 1, tzinfo=UTC)
        self.prefix = str(uuid.uuid4().int)[:10]
        self.media: list[dict] = []
        self.add(count)
        self.page_size = page_size
        self.throttle_on = throttle_on
        self.requests: list[dict] = []
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                url = urlparse(self.path)
                query = {k: v[0] for k, v in parse_qs(url.query).items()}
                fake.requests.append({"path": url.path, "query": query})
                if len(fake.requests) == fake.throttle_on:
                    usage = {"1234": [{"type": "instagram", "call_count": 100,
                                       "total_cputime": 10, "total_time": 10,
                                       "estimated_time_to_regain_access": 0}]}
                    self._answer(400, {"error": {
                        "message": "Application request limit reached", "type": "OAuthException",
                        "code": 80002, "fbtrace_id": "AbCdEf"}},
                        {"X-Business-Use-Case-Usage": json.dumps(usage)})
                    return
                self._answer(200, fake.page(query))

            def _answer(self, status, body, headers=None):
                answer_json(self, status, body, headers)

        self.server, base = serve(Handler)
        self.url = f"{base}/v21.0"

    def add(self, count: int):
        """``count`` new tags, newer than every earlier one."""
        base = len(self.media)
        new = [{"id": f"{self.prefix}{base + i:04d}", "username": f"fan_{base + i}",
                "caption": f"Tilaus {base + i} ei ole vieläkään tullut @muistibrand",
                "timestamp": (self.start + timedelta(hours=base + i)).strftime(
                    "%Y-%m-%dT%H:%M:%S+0000"),
                "media_type": "IMAGE"} for i in range(count)]
        self.media = list(reversed(new)) + self.media

    def page(self, query: dict) -> dict:
        start = int(query.get("after", "cursor-0").removeprefix("cursor-"))
        chunk = self.media[start:start + self.page_size]
        body = {"data": chunk, "paging": {"cursors": {"before": f"cursor-{start}",
                                                       "after": f"cursor-{start + len(chunk)}"}}}
        if start + self.page_size < len(self.media):
            body["paging"]["next"] = f"{self.url}/{BRAND}/tags?after=cursor-{start + len(chunk)}"
        return body

    def close(self):
        self.server.shutdown()


@pytest.fixture
def fake_graph():
    api = FakeGraphApi(count=7, page_size=2, throttle_on=3)
    yield api
    api.close()


def test_instagram_poller_restarted_mid_sweep_produces_every_tag_once(
        fake_graph, settings, db, unique):
    ensure_topics(settings)
    producer = Producer(settings, "social")
    name = f"instagram-tags-test-{unique}"

    def new_poller():
        source = InstagramTagsApi(fake_graph.url, BRAND, "page-token", page_size=2)
        return Poller(name, BRAND, source, MongoCheckpoints(db),
                      lambda batch: publish(producer, batch, source="instagram-poller"),
                      normalise=from_instagram_tags_page)

    def run_until(condition, what):
        loop = PollLoop(new_poller(), interval_seconds=3600)
        thread = threading.Thread(target=loop.run)
        thread.start()
        try:
            wait_until(condition, 30, interval=0.2, what=what)
        finally:
            loop.stop()
            thread.join(10)

    try:
        assert new_poller().sweep(max_pages=2) == 2  # then the worker "stops"
        assert MongoCheckpoints(db).load(name).pagination_token == "cursor-4"
        newest = fake_graph.media[0]
        run_until(lambda: (MongoCheckpoints(db).load(name).since_id or "").endswith(
            newest["id"]), "the first sweep to finish")
        fake_graph.add(3)  # three new tags; the next sweep reads them and stops at the mark
        newest = fake_graph.media[0]
        before = len(fake_graph.requests)
        run_until(lambda: (MongoCheckpoints(db).load(name).since_id or "").endswith(
            newest["id"]), "the second sweep to finish")
    finally:
        producer.close()

    afters = [r["query"].get("after") for r in fake_graph.requests]
    # resumed at the third page; the throttled call retried; the second sweep took two pages
    assert afters[:before] == [None, "cursor-2", "cursor-4", "cursor-4", "cursor-6"]
    assert afters[before:] == [None, "cursor-2"]
    assert all(r["query"]["access_token"] == "page-token" for r in fake_graph.requests)
    assert all(r["path"] == f"/v21.0/{BRAND}/tags" for r in fake_graph.requests)
    wanted = {f"social:instagram:{m['id']}" for m in fake_graph.media}
    produced = [m for m in read_all(settings, topics.EVENTS_SOCIAL)
                if m["message_id"] in wanted]
    assert sorted(m["message_id"] for m in produced) == sorted(wanted)  # no gap, no duplicate
    assert all(m["payload"]["kind"] == "mention" and m["payload"]["platform"] == "instagram"
               for m in produced)
    assert all(m["payload"]["classification"]["complaint"] for m in produced)
