"""Instagram mention notifications through the running social API and worker, the real broker
and a fake Graph API: the webhook is answered before the mention is fetched, the worker reads
the caption or comment (mentioned_media / mentioned_comment) and produces the event with its
text, author and time; 5xx and throttled calls are retried; a mention whose media is gone ends
in the dead-letter topic with Meta's reason; a repeated notification is fetched once."""

from __future__ import annotations

import base64
import json
import re
import threading
import time
import uuid
from collections import Counter
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import orjson
import pytest
import requests

from services.common import topics
from services.common.bus import ensure_topics
from services.social import signatures
from services.social.instagram import GraphUnavailable, MentionedContent, MentionRefused
from services.social.messages import InstagramMention
from tests.support.fake_http import answer_json, serve
from tests.support.kafka import read_all
from tests.support.processes import ServiceApi, ServiceWorker, wait_until

FIXTURES = Path(__file__).parents[1] / "fixtures" / "social"
META_SECRET = "meta-secret-" + uuid.uuid4().hex
TOKEN = "ig-token-" + uuid.uuid4().hex
BRAND = "17841400008460056"
FIELD_EXPANSION = re.compile(r"^mentioned_(media|comment)\.(?:media|comment)_id\((\d+)\)\{(.+)\}$")
USAGE = json.dumps({"1234": [{"type": "instagram", "call_count": 100, "total_cputime": 10,
                              "total_time": 10, "estimated_time_to_regain_access": 0}]})


def fixture(name: str):
    return json.loads((FIXTURES / name).read_text())


def fresh_id() -> str:
    return "17" + str(uuid.uuid4().int)[:15]


class FakeGraphApi:
    """``GET /v21.0/{ig-user-id}?fields=mentioned_media.media_id(ID){...}`` and
    ``mentioned_comment.comment_id(ID){...}`` over ``objects``. ``failures[id]`` lists the
    statuses answered before the object (5xx, or 429 with a usage header announcing no wait);
    ids in ``gone`` are answered with Meta's does-not-exist error, those in ``refusals`` with
    that status and body; an id in ``held`` is not answered until its event is set."""

    def __init__(self):
        self.objects: dict[str, dict] = {}
        self.failures: dict[str, list[int]] = {}
        self.gone: set[str] = set()
        self.refusals: dict[str, tuple[int, dict]] = {}
        self.held: dict[str, threading.Event] = {}
        self.calls: Counter[str] = Counter()
        self.requests: list[dict] = []
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                url = urlparse(self.path)
                query = {k: v[0] for k, v in parse_qs(url.query).items()}
                fake.requests.append({"path": url.path, "query": query})
                match = FIELD_EXPANSION.match(query.get("fields", ""))
                if not match or url.path != f"/v21.0/{BRAND}":
                    answer_json(self, 400, {"error": {"message": "unexpected", "code": 100}})
                    return
                edge, object_id = match.group(1), match.group(2)
                fake.calls[object_id] += 1
                if object_id in fake.held:
                    fake.held[object_id].wait(30)
                pending = fake.failures.get(object_id) or []
                if pending:
                    status = pending.pop(0)
                    if status == 429:
                        answer_json(self, 429, {"error": {"message": "Application request "
                                                "limit reached", "code": 4}},
                                    {"X-Business-Use-Case-Usage": USAGE})
                    else:
                        answer_json(self, status, {"error": {"message": "Service temporarily "
                                                   "unavailable", "code": 2}})
                    return
                if object_id in fake.refusals:
                    answer_json(self, *fake.refusals[object_id])
                    return
                if object_id in fake.gone:
                    error = fixture("graph_mention_gone.json")
                    error["error"]["message"] = error["error"]["message"].replace(
                        "17920238422030506", object_id)
                    answer_json(self, 400, error)
                    return
                # requests left on the topic by earlier runs are answered too: a new consumer
                # group replays them
                found = fake.objects.get(object_id) or {"id": object_id, "text": "earlier",
                                                        "caption": "earlier",
                                                        "username": "earlier_run"}
                answer_json(self, 200, {f"mentioned_{edge}": found, "id": BRAND})

        self.server, base = serve(Handler)
        self.url = f"{base}/v21.0"

    def add_media(self, media_id: str, username: str) -> dict:
        media = {**fixture("graph_mentioned_media.json")["mentioned_media"], "id": media_id,
                 "username": username}
        self.objects[media_id] = media
        return media

    def add_comment(self, comment_id: str, media_id: str, username: str) -> dict:
        comment = fixture("graph_mentioned_comment.json")["mentioned_comment"]
        comment = {**comment, "id": comment_id, "username": username,
                   "media": {**comment["media"], "id": media_id}}
        self.objects[comment_id] = comment
        return comment

    def close(self):
        for event in self.held.values():
            event.set()
        self.server.shutdown()


@pytest.fixture(scope="module")
def fake_graph():
    api = FakeGraphApi()
    yield api
    api.close()


@pytest.fixture(scope="module")
def mention_stack(test_env, settings, fake_graph):
    env = {**test_env, "CDP_SOCIAL_META_APP_SECRET": META_SECRET,
           "CDP_SOCIAL_META_GRAPH_URL": fake_graph.url,
           "CDP_SOCIAL_INSTAGRAM_ACCESS_TOKEN": TOKEN}
    ensure_topics(settings)
    worker = ServiceWorker("services.social", env, name="social-mentions-worker").start()
    api = ServiceApi("social", env).start()
    yield api
    api.stop()
    worker.stop()


def notify(api, media_id: str, comment_id: str | None = None) -> requests.Response:
    value = {"media_id": media_id, **({"comment_id": comment_id} if comment_id else {})}
    body = json.dumps({"object": "instagram", "entry": [
        {"id": BRAND, "time": int(time.time()),  # sent now: an old one is refused
         "changes": [{"field": "mentions", "value": value}]}]}).encode()
    return requests.post(f"{api.url}/v1/social/meta/webhook", data=body, timeout=10, headers={
        "Content-Type": "application/json",
        "X-Hub-Signature-256": signatures.meta_signature(META_SECRET, body)})


def events_with(settings, message_id: str, count: int = 1) -> list[dict]:
    def found():
        events = [m for m in read_all(settings, topics.EVENTS_SOCIAL, idle_ms=300)
                  if m["message_id"] == message_id]
        return events if len(events) >= count else None

    return wait_until(found, 60, interval=0.5, what=f"{message_id} on {topics.EVENTS_SOCIAL}")


def test_caption_mention_is_answered_first_then_fetched_into_an_event(
        mention_stack, fake_graph, settings):
    media_id = fresh_id()
    media = fake_graph.add_media(media_id, f"fan_{media_id[-6:]}")
    fake_graph.held[media_id] = threading.Event()

    answer = notify(mention_stack, media_id)
    assert answer.status_code == 200, answer.text
    assert answer.json() == {"received": True, "produced": 0, "skipped": 0, "fetching": 1,
                             "too_old": 0}
    # answered although the Graph API has not answered the fetch yet
    wait_until(lambda: fake_graph.calls[media_id], 60, interval=0.2, what="the fetch")
    fake_graph.held[media_id].set()

    [event] = events_with(settings, f"social:instagram:{media_id}")
    assert event["type"] == "Social Post Received" and event["source"] == "instagram-mention"
    assert event["identifiers"] == {"instagram_handle": media["username"]}
    assert event["occurred_at"].startswith("2024-06-03T09:35:12")
    payload = event["payload"]
    assert payload["text"] == media["caption"]
    assert payload["author"] == {"handle": media["username"]}
    assert payload["kind"] == "mention" and payload["account_id"] == BRAND
    assert payload["classification"]["complaint"] is True
    [call] = [r for r in fake_graph.requests
              if media_id in r["query"].get("fields", "")]
    assert call["query"]["access_token"] == TOKEN
    assert call["query"]["fields"] == (f"mentioned_media.media_id({media_id})"
                                       "{id,caption,username,timestamp,permalink,media_type,"
                                       "media_url}")


def test_comment_mention_is_fetched_after_server_errors_and_a_throttle(
        mention_stack, fake_graph, settings):
    media_id, comment_id = fresh_id(), fresh_id()
    comment = fake_graph.add_comment(comment_id, media_id, f"fan_{comment_id[-6:]}")
    fake_graph.failures[comment_id] = [503, 429, 500]

    assert notify(mention_stack, media_id, comment_id).status_code == 200

    [event] = events_with(settings, f"social:instagram:{comment_id}")
    assert fake_graph.calls[comment_id] == 4  # three failures, then the comment
    payload = event["payload"]
    assert payload["text"] == comment["text"]
    assert payload["author"] == {"handle": comment["username"]}
    assert payload["in_reply_to"] == payload["conversation_id"] == media_id
    assert event["occurred_at"].startswith("2024-06-03T09:31:40")


def test_mention_of_deleted_media_is_dead_lettered_with_the_reason(
        mention_stack, fake_graph, settings):
    media_id = fresh_id()
    fake_graph.gone.add(media_id)

    assert notify(mention_stack, media_id).status_code == 200

    def letter():
        for message in read_all(settings, topics.DEAD_LETTER, idle_ms=300):
            if message.get("source_topic") != topics.SOCIAL_MENTIONS:
                continue
            original = orjson.loads(base64.b64decode(message["original_b64"]))
            if original["payload"]["media_id"] == media_id:
                return message
        return None

    dead = wait_until(letter, 60, interval=0.5, what="the dead letter")
    assert dead["kind"] == "invalid" and dead["service"] == "social"
    assert dead["reason"].startswith(f"the Graph API says the mentioned media {media_id} no "
                                     "longer exists: Unsupported get request.")
    assert not [m for m in read_all(settings, topics.EVENTS_SOCIAL, idle_ms=300)
                if m["message_id"] == f"social:instagram:{media_id}"]


def test_a_repeated_notification_is_fetched_and_produced_once(
        mention_stack, fake_graph, settings):
    media_id, comment_id, later_id = fresh_id(), fresh_id(), fresh_id()
    fake_graph.add_comment(comment_id, media_id, "repeat_fan")
    fake_graph.add_comment(later_id, media_id, "later_fan")

    for _ in range(2):  # Meta retries a delivery it thinks failed
        assert notify(mention_stack, media_id, comment_id).status_code == 200
    assert notify(mention_stack, media_id, later_id).status_code == 200

    # same media, same key, same partition: once the later one is out, both copies were read
    events_with(settings, f"social:instagram:{later_id}")
    assert len(events_with(settings, f"social:instagram:{comment_id}")) == 1
    assert fake_graph.calls[comment_id] == 1


def test_an_outage_outlasting_the_retries_is_waited_out_not_dead_lettered(
        mention_stack, fake_graph, settings):
    media_id = fresh_id()
    fake_graph.add_media(media_id, "patient_fan")
    fake_graph.failures[media_id] = [503] * 6  # one more than the fetcher's own attempts

    assert notify(mention_stack, media_id).status_code == 200

    events_with(settings, f"social:instagram:{media_id}")
    assert fake_graph.calls[media_id] == 7


def test_a_refused_token_is_transient_and_other_refusals_are_final(fake_graph):
    expired, disabled = fresh_id(), fresh_id()
    fake_graph.refusals[expired] = (400, {"error": {
        "message": "Error validating access token: Session has expired", "type":
        "OAuthException", "code": 190, "error_subcode": 463}})
    fake_graph.refusals[disabled] = (400, {"error": {
        "message": "Comments are disabled for this media", "type": "IGApiException",
        "code": 10}})
    waits: list[float] = []
    content = MentionedContent(fake_graph.url, TOKEN, sleep=waits.append)

    with pytest.raises(GraphUnavailable, match="access token was refused"):
        content.fetch(InstagramMention(BRAND, expired))
    with pytest.raises(MentionRefused, match="code 10.*Comments are disabled"):
        content.fetch(InstagramMention(BRAND, fresh_id(), disabled))
    assert fake_graph.calls[expired] == fake_graph.calls[disabled] == 1 and waits == []
