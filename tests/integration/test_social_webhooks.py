"""The social API process against the real broker: signed Meta and X deliveries reach
cdp.events.social once per event, unsigned or tampered ones produce nothing, events older than
the consumers' ledger remembers are refused as replays (answered 200), handshakes answer, the
collector endpoint works, and the identity worker resolves social events."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import requests

from services.common import topics
from services.common.bus import ensure_topics
from services.common.identifiers import is_hetu_digest
from services.social import signatures
from services.social.replays import OLDEST_AGE
from tests.support.hetus import valid_hetu
from tests.support.kafka import read_all, read_records
from tests.support.processes import ServiceApi, ServiceWorker, wait_until
from tests.support.social_fixtures import sent_at

FIXTURES = Path(__file__).parents[1] / "fixtures" / "social"
META_SECRET = "meta-secret-" + uuid.uuid4().hex
X_SECRET = "x-secret-" + uuid.uuid4().hex
VERIFY_TOKEN = "verify-" + uuid.uuid4().hex


@pytest.fixture(scope="module")
def social_env(test_env):
    return {**test_env, "CDP_SOCIAL_META_APP_SECRET": META_SECRET,
            "CDP_SOCIAL_META_VERIFY_TOKEN": VERIFY_TOKEN, "CDP_SOCIAL_X_CONSUMER_SECRET": X_SECRET,
            "CDP_SOCIAL_PUBLIC_URL": "https://muisti.example.com"}


@pytest.fixture(scope="module")
def social_api(social_env, settings):
    ensure_topics(settings)  # a worker creates them in a deployment
    api = ServiceApi("social", social_env).start()
    yield api
    api.stop()


def unique_digits() -> str:
    return str(uuid.uuid4().int)[:16]


def delivery_with_fresh_ids(name: str, *ids: str, at: datetime | None = None
                            ) -> tuple[dict, dict[str, str]]:
    """The fixture with each of ``ids`` replaced by a fresh number, so repeated runs on the
    same broker do not see each other's events, sent ``at`` (now by default)."""
    text = (FIXTURES / name).read_text()
    fresh = {old: unique_digits() for old in ids}
    for old, new in fresh.items():
        text = text.replace(old, new)
    return sent_at(json.loads(text), at or datetime.now(UTC)), fresh


def fixture_with_fresh_ids(name: str, *ids: str) -> tuple[bytes, dict[str, str]]:
    delivery, fresh = delivery_with_fresh_ids(name, *ids)
    return json.dumps(delivery).encode(), fresh


def messages_with(settings, topic, predicate, count=1, exactly=False, timeout=30):
    def found():
        matches = [m for m in read_all(settings, topic, idle_ms=300) if predicate(m)]
        return matches if len(matches) >= count else None

    matches = wait_until(found, timeout, interval=0.5, what=f"{count} messages on {topic}")
    if exactly:
        assert len(matches) == count
    return matches


def post_meta(api, body: bytes, signature: str | None):
    headers = {"Content-Type": "application/json"}
    if signature is not None:
        headers["X-Hub-Signature-256"] = signature
    return requests.post(f"{api.url}/v1/social/meta/webhook", data=body, headers=headers,
                         timeout=10)


def test_meta_handshake_echoes_the_challenge_only_for_the_right_token(social_api):
    url = f"{social_api.url}/v1/social/meta/webhook"
    ok = requests.get(url, params={"hub.mode": "subscribe", "hub.verify_token": VERIFY_TOKEN,
                                   "hub.challenge": "1158201444"}, timeout=10)
    assert ok.status_code == 200 and ok.text == "1158201444"
    wrong = requests.get(url, params={"hub.mode": "subscribe", "hub.verify_token": "nope",
                                      "hub.challenge": "1158201444"}, timeout=10)
    assert wrong.status_code == 403 and "1158201444" not in wrong.text


def test_x_crc_answers_with_the_hmac_of_the_token(social_api):
    response = requests.get(f"{social_api.url}/v1/social/x/webhook",
                            params={"crc_token": "Zm9vYmFy"}, timeout=10)
    assert response.status_code == 200
    assert response.json() == {"response_token":
                               signatures.crc_response_token(X_SECRET, "Zm9vYmFy")}


def test_signed_meta_comment_arrives_once_on_the_social_topic(social_api, settings):
    body, fresh = fixture_with_fresh_ids("meta_page_feed_comment.json", "1122334455667788",
                                         "7012345678901234")
    response = post_meta(social_api, body, signatures.meta_signature(META_SECRET, body))
    assert response.status_code == 200, response.text
    assert response.json()["produced"] == 1
    author = fresh["7012345678901234"]
    [event] = messages_with(settings, topics.EVENTS_SOCIAL,
                            lambda m: m["identifiers"].get("facebook_id") == author, exactly=True)
    assert event["message_id"] == f"social:facebook:798765432109876_{fresh['1122334455667788']}"
    assert event["type"] == "Social Post Received" and event["channel"] == "social"
    assert event["payload"]["classification"]["complaint"] is True


def test_a_retried_delivery_keeps_its_message_ids(social_api, settings):
    body, fresh = fixture_with_fresh_ids("meta_messenger_message.json", "6789012345678901")
    signature = signatures.meta_signature(META_SECRET, body)
    for _ in range(2):
        assert post_meta(social_api, body, signature).status_code == 200
    author = fresh["6789012345678901"]
    events = messages_with(settings, topics.EVENTS_SOCIAL,
                           lambda m: m["identifiers"].get("facebook_id") == author, count=2)
    assert len({e["message_id"] for e in events}) == 1  # consumers apply it once
    assert "4111" not in events[0]["payload"]["text"]


def test_tampered_or_unsigned_meta_delivery_is_refused_and_produces_nothing(
        social_api, settings):
    body, fresh = fixture_with_fresh_ids("meta_page_mention.json", "6543210987654")
    signature = signatures.meta_signature(META_SECRET, body)
    tampered = body.replace(b"Mikko", b"Mallory")
    assert post_meta(social_api, tampered, signature).status_code == 403
    assert post_meta(social_api, body, None).status_code == 401
    assert post_meta(social_api, body, signatures.meta_signature("guess", body)).status_code \
        == 403
    # a later, signed delivery of another author proves the topic was read past them
    later, later_ids = fixture_with_fresh_ids("meta_page_mention.json", "6543210987654")
    assert post_meta(social_api, later, signatures.meta_signature(META_SECRET, later)) \
        .status_code == 200
    messages_with(settings, topics.EVENTS_SOCIAL, lambda m: m["identifiers"].get(
        "facebook_id") == later_ids["6543210987654"])
    author = fresh["6543210987654"]
    assert not [m for m in read_all(settings, topics.EVENTS_SOCIAL, idle_ms=300)
                if m["identifiers"].get("facebook_id") == author]


def rejected_too_old(api) -> float:
    text = requests.get(f"{api.url}/metrics", timeout=10).text
    sample = 'muisti_events_rejected_total{channel="social",reason="too_old",service="social"}'
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith(sample))


def test_a_signed_event_older_than_the_ledger_remembers_is_answered_200_and_not_ingested(
        social_api, settings):
    """A captured delivery replayed once its events may have left the consumers' ledger:
    the platform's signature still verifies, so the events' own time is what refuses them;
    a fresh event in the same delivery still goes."""
    replayed_at = datetime.now(UTC) - OLDEST_AGE - timedelta(hours=1)
    old, old_ids = delivery_with_fresh_ids("meta_page_feed_comment.json", "1122334455667788",
                                           "7012345678901234", at=replayed_at)
    new, new_ids = delivery_with_fresh_ids("meta_page_feed_comment.json", "1122334455667788",
                                           "7012345678901234")
    body = json.dumps({"object": "page", "entry": old["entry"] + new["entry"]}).encode()
    refused_before = rejected_too_old(social_api)

    response = post_meta(social_api, body, signatures.meta_signature(META_SECRET, body))

    assert response.status_code == 200, response.text
    assert (response.json()["produced"], response.json()["too_old"]) == (1, 1)
    assert rejected_too_old(social_api) == refused_before + 1
    # answered after Kafka acknowledged what was produced: the fresh event, not the old
    messages_with(settings, topics.EVENTS_SOCIAL, lambda m: m["identifiers"].get(
        "facebook_id") == new_ids["7012345678901234"], exactly=True)
    assert not [m for m in read_all(settings, topics.EVENTS_SOCIAL, idle_ms=300)
                if m["identifiers"].get("facebook_id") == old_ids["7012345678901234"]]


def test_a_signed_x_event_is_taken_in_until_it_is_older_than_the_ledger_remembers(
        social_api, settings):
    url = f"{social_api.url}/v1/social/x/webhook"

    def deliver(age: timedelta) -> tuple[requests.Response, str]:
        delivery, fresh = delivery_with_fresh_ids("x_tweet_mention.json",
                                                  "1797560000000000001", "6253282",
                                                  at=datetime.now(UTC) - age)
        body = json.dumps(delivery).encode()
        return requests.post(url, data=body, timeout=10, headers={
            "x-twitter-webhooks-signature": signatures.x_signature(X_SECRET, body)}), \
            f"social:x:{fresh['1797560000000000001']}"

    remembered, remembered_id = deliver(OLDEST_AGE - timedelta(hours=1))
    forgotten, forgotten_id = deliver(OLDEST_AGE + timedelta(hours=1))

    assert (remembered.status_code, remembered.json()["produced"]) == (200, 1)
    assert forgotten.status_code == 200, forgotten.text
    assert (forgotten.json()["produced"], forgotten.json()["too_old"]) == (0, 1)
    messages_with(settings, topics.EVENTS_SOCIAL, lambda m: m["message_id"] == remembered_id)
    assert not [m for m in read_all(settings, topics.EVENTS_SOCIAL, idle_ms=300)
                if m["message_id"] == forgotten_id]


def test_signed_but_malformed_delivery_is_a_400(social_api):
    for body in (b"not json", b'{"entry": "nope"}'):
        response = post_meta(social_api, body, signatures.meta_signature(META_SECRET, body))
        assert response.status_code == 400
        assert response.headers["Content-Type"] == "application/problem+json"


def test_signed_x_delivery_produces_the_mention_and_refuses_a_bad_signature(
        social_api, settings):
    body, fresh = fixture_with_fresh_ids("x_tweet_mention.json", "1797560000000000001",
                                         "6253282")
    url = f"{social_api.url}/v1/social/x/webhook"
    bad = requests.post(url, data=body, timeout=10, headers={
        "x-twitter-webhooks-signature": signatures.x_signature("wrong", body)})
    assert bad.status_code == 403
    good = requests.post(url, data=body, timeout=10, headers={
        "x-twitter-webhooks-signature": signatures.x_signature(X_SECRET, body)})
    assert good.status_code == 200, good.text
    [event] = messages_with(settings, topics.EVENTS_SOCIAL, lambda m: m["message_id"] ==
                            f"social:x:{fresh['1797560000000000001']}", exactly=True)
    assert event["identifiers"]["twitter_id"] == fresh["6253282"]


def test_collector_posts_other_networks_in_the_same_form(social_api, api_keys, settings):
    review_id = unique_digits()
    headers = {"Authorization": f"Bearer {api_keys['collector']}"}
    response = requests.post(f"{social_api.url}/v1/social/posts", headers=headers, timeout=10,
                             json={"platform": "trustpilot", "message_id": review_id,
                                   "kind": "review", "author": {"name": "Anna"},
                                   "text": "Terrible delivery, never again",
                                   "identifiers": {"email": f"a.{review_id}@example.com"}})
    assert response.status_code == 200, response.text
    [event] = messages_with(settings, topics.EVENTS_SOCIAL,
                            lambda m: m["message_id"] == f"social:trustpilot:{review_id}")
    assert event["payload"]["classification"]["complaint"] is True
    unattributable = requests.post(f"{social_api.url}/v1/social/posts", headers=headers,
                                   timeout=10, json={"platform": "trustpilot",
                                                     "message_id": "x", "kind": "review",
                                                     "author": {"name": "Anna"}})
    assert unattributable.status_code == 422


@pytest.mark.parametrize("given", ["hetu", "user_id"])
def test_a_collectors_hetu_reaches_kafka_only_as_digest_and_sealed_trait(
        social_api, api_keys, settings, given):
    review_id = unique_digits()
    hetu = valid_hetu(review_id)
    response = requests.post(f"{social_api.url}/v1/social/posts", timeout=10,
                             headers={"Authorization": f"Bearer {api_keys['collector']}"},
                             json={"platform": "trustpilot", "message_id": review_id,
                                   "kind": "review", "author": {"name": "Anna"},
                                   "text": "Toimitus myöhässä", "identifiers": {given: hetu}})
    assert response.status_code == 200, response.text
    [event] = messages_with(settings, topics.EVENTS_SOCIAL,
                            lambda m: m["message_id"] == f"social:trustpilot:{review_id}")
    assert list(event["identifiers"]) == ["hetu"] and is_hetu_digest(event["identifiers"]["hetu"])
    assert event["payload"]["traits"]["hetu"].startswith("sealed1:")
    for key, value in read_records(settings, topics.EVENTS_SOCIAL):
        assert hetu.encode() not in (key or b"") + value


@pytest.mark.parametrize("created_at", ["0001-01-01T00:00:00+02:00", "9999-12-31T23:00:00-05:00",
                                        "1999-12-31T23:59:59Z", "2999-01-01T00:00:00Z"])
def test_a_collector_post_at_a_time_out_of_range_gets_422_never_500(social_api, api_keys,
                                                                     created_at):
    response = requests.post(f"{social_api.url}/v1/social/posts", timeout=10,
                             headers={"Authorization": f"Bearer {api_keys['collector']}"},
                             json={"platform": "trustpilot", "message_id": unique_digits(),
                                   "kind": "review", "author": {"name": "Anna"},
                                   "created_at": created_at,
                                   "identifiers": {"email": "anna@example.com"}})
    assert response.status_code == 422, response.text
    assert "created_at" in response.json()["errors"]["json"]


def test_the_identity_worker_resolves_social_events_to_profiles(social_api, social_env,
                                                                settings):
    worker = ServiceWorker("services.identity", social_env).start()
    try:
        body, fresh = fixture_with_fresh_ids("x_direct_message.json", "1797580000000000010",
                                             "6253282")
        response = requests.post(f"{social_api.url}/v1/social/x/webhook", data=body,
                                 timeout=10, headers={"x-twitter-webhooks-signature":
                                                      signatures.x_signature(X_SECRET, body)})
        assert response.status_code == 200
        message_id = f"social:x:{fresh['1797580000000000010']}"
        [resolved] = messages_with(settings, topics.EVENTS_RESOLVED,
                                   lambda m: m["message_id"] == message_id, timeout=60)
        assert resolved["profile_id"]
        assert resolved["identifiers"] == {"twitter_id": fresh["6253282"],
                                           "twitter_handle": "anna_virtanen"}
        assert resolved["payload"]["kind"] == "direct_message"
    finally:
        worker.stop()
