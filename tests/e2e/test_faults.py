"""Faults survived: with purchases of returning customers flowing through every service (each
API and worker a separate process on the real broker and store), SIGKILL each kind of worker
mid-batch and restart it, stop and restart the broker, stop or kill the store and restart it.

Each test is one fault on its own customers and proves, once everything has drained:

* every accepted purchase is applied exactly once: each customer has one profile whose
  purchase_count and purchase_total (the checksum: known amounts) equal what was accepted;
* the dead-letter topic holds exactly the malformed messages the test injected (raw garbage
  straight onto the input topics, and envelopes that fail validation inside a worker), each
  dead-lettered by every consumer group of its topic;
* no API answered 5xx but 503, and 503 (or no answer) only while a dependency was down.

Volume: ``MUISTI_FAULT_EVENTS`` purchases over the whole module (split between the tests),
offered at ``MUISTI_FAULT_RATE`` per second; ``MUISTI_FAULT_CUSTOMERS`` customers per test.
"""

from __future__ import annotations

import base64
import json
import os
import random
import secrets
import threading
import time
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import orjson
import pytest
import requests

from services.common import topics
from services.common.bus import Outgoing, Producer, ensure_topics
from services.common.envelope import new_envelope
from services.common.store import unpack
from services.social import signatures
from tests.support.fault_load import (
    CONNECTION_ERROR,
    Load,
    StatusLog,
    expected_purchases,
    group_lag,
)
from tests.support.kafka import committed_total, read_all
from tests.support.platform_stack import SERVICES, PlatformStack
from tests.support.processes import wait_until

FAULTS = 7
EVENTS = int(os.environ.get("MUISTI_FAULT_EVENTS", "2100"))
RATE = float(os.environ.get("MUISTI_FAULT_RATE", "40"))
CUSTOMERS = int(os.environ.get("MUISTI_FAULT_CUSTOMERS", "40"))
PER_TEST = max(EVENTS // FAULTS, CUSTOMERS)
AUTHORS = 5  # per test, each tweeting mentions of the brand
OUTAGE_SECONDS = 8
TWEET = Path(__file__).parents[1] / "fixtures" / "social" / "x_tweet_mention.json"
X_SECRET = "x-secret-" + secrets.token_hex(16)

# a slow machine must not cut a long run short: the load is paced
pytestmark = pytest.mark.timeout(max(600, int(6 * PER_TEST / RATE) + 300))

# consumer groups (without the session prefix) and the topics they read: every one must have
# caught up before the end state is judged
GROUPS = {
    "identity-graph": [topics.EVENTS_WEB, topics.EVENTS_PHONE, topics.EVENTS_SOCIAL],
    "identity-privacy": [topics.PRIVACY_REQUESTS],
    "profile-projection": [topics.EVENTS_RESOLVED, topics.IDENTITY_MERGES],
    "profile-consents": [topics.CONSENT_CHANGES],
    "profile-privacy": [topics.PRIVACY_REQUESTS],
    "consent-identity": [topics.IDENTITY_MERGES, topics.EVENTS_RESOLVED],
    "consent-privacy-requests": [topics.PRIVACY_REQUESTS],
    "consent-privacy-acks": [topics.PRIVACY_ACKS],
    "export-feed": [topics.PROFILE_CHANGES, topics.CONSENT_CHANGES, topics.PRIVACY_REQUESTS],
    "social-privacy": [topics.PRIVACY_REQUESTS],
    "social-deletion-status": [topics.PRIVACY_ACKS],
}
# which groups must dead-letter a malformed message on each topic
READERS = {topic: {group for group, read in GROUPS.items() if topic in read}
           for topic in (topics.EVENTS_WEB, topics.EVENTS_RESOLVED, topics.PROFILE_CHANGES,
                         topics.PRIVACY_REQUESTS)}


@pytest.fixture(scope="module")
def stack(test_env, settings, tmp_path_factory):
    ensure_topics(settings)
    env = {**test_env, "CDP_SOCIAL_X_CONSUMER_SECRET": X_SECRET,
           "CDP_EXPORT_DIRECTORY_ROOT": str(tmp_path_factory.mktemp("fault-exports"))}
    running = PlatformStack(env)
    try:
        yield running.start()
    finally:
        running.stop()


def _headers(api_keys, role: str, **extra) -> dict:
    return {"Authorization": f"Bearer {api_keys[role]}", **extra}


def x_mention(author_id: str, tweet_id: str) -> bytes:
    """An Account Activity delivery of one mention of the brand by ``author_id``."""
    delivery = json.loads(TWEET.read_text())
    status = delivery["tweet_create_events"][0]
    now = datetime.now(UTC)
    status.update(id=int(tweet_id), id_str=tweet_id, text=f"@MuistiBrand kiitos {tweet_id}",
                  created_at=now.strftime("%a %b %d %H:%M:%S +0000 %Y"),
                  timestamp_ms=str(int(now.timestamp() * 1000)))
    status["user"].update(id=int(author_id), id_str=author_id, screen_name=f"F{author_id}")
    status["entities"]["urls"] = []
    return json.dumps(delivery).encode()


def make_load(stack: PlatformStack, api_keys, token: str, log: StatusLog) -> Load:
    sending, tweeting, session = requests.Session(), requests.Session(), requests.Session()

    def post_tweet(author_id: str, tweet_id: str) -> int:
        body = x_mention(author_id, tweet_id)
        return tweeting.post(f"{stack.url('social')}/v1/social/x/webhook", data=body, timeout=30,
                             headers={"Content-Type": "application/json",
                                      "x-twitter-webhooks-signature":
                                          signatures.x_signature(X_SECRET, body)}).status_code

    def post_batch(messages: list[dict]) -> int:
        return sending.post(f"{stack.url('identity')}/v1/batch", json={"batch": messages},
                            auth=(api_keys["collector"], ""), timeout=30).status_code

    def lookup(user_id: str) -> int:
        return session.get(f"{stack.url('profile')}/v1/profiles", timeout=30,
                           params={"type": "user_id", "value": user_id},
                           headers=_headers(api_keys, "agent", **{
                               "X-Purpose": "customer_service"})).status_code

    def resolve(user_id: str) -> int:
        return session.get(f"{stack.url('identity')}/v1/identity/resolve", timeout=30,
                           params={"type": "user_id", "value": user_id},
                           headers=_headers(api_keys, "agent")).status_code

    def consent_check(user_id: str) -> int:
        return session.get(f"{stack.url('consent')}/v1/consents/{user_id}/check", timeout=30,
                           params={"purpose": "profiling"},
                           headers=_headers(api_keys, "collector")).status_code

    def partner(user_id: str) -> int:
        return session.get(f"{stack.url('export')}/v1/partners/fault-{token}", timeout=30,
                           headers=_headers(api_keys, "admin")).status_code

    def x_handshake(user_id: str) -> int:
        return session.get(f"{stack.url('social')}/v1/social/x/webhook", timeout=30,
                           params={"crc_token": user_id}).status_code

    customers = [f"F{token}-{number}" for number in range(CUSTOMERS)]
    authors = [str(random.randrange(10**15, 10**16)) for _ in range(AUTHORS)]
    return Load(token=token, customers=customers, total=PER_TEST, rate=RATE,
                post_batch=post_batch, post_tweet=post_tweet, authors=authors,
                tweets=max(AUTHORS, PER_TEST // 60), log=log,
                reads=[("profile lookup", lookup), ("identity resolve", resolve),
                       ("consent check", consent_check), ("export partner", partner),
                       ("social handshake", x_handshake)])


# --- malformed input ---------------------------------------------------------------------

def inject_malformed(settings, token: str) -> dict[tuple[str, bytes], set[str]]:
    """Put malformed messages straight onto the input topics; returns each (topic, bytes)
    with the consumer groups that must dead-letter it."""
    garbage = {
        (topics.EVENTS_WEB, f'{{"message_id": "{token}-cut", "type": '.encode()),
        (topics.EVENTS_RESOLVED, b"\xff\xfe not even utf-8 " + token.encode()),
        (topics.PROFILE_CHANGES, orjson.dumps([token, "an array, not an envelope"])),
        (topics.PRIVACY_REQUESTS, orjson.dumps({"message_id": f"{token}-incomplete"})),
    }
    # well-formed envelopes a worker's own validation refuses
    refused = {
        # every identifier invalid: the identity graph has nothing to resolve
        (topics.EVENTS_WEB, new_envelope(
            "Order Completed", "web", identifiers={"email": f"not-an-email-{token}"},
            payload={"properties": {"total": 1.0}},
            message_id=f"{token}-no-valid-identifier").to_bytes()),
        # a resolved event without its profile_id
        (topics.EVENTS_RESOLVED, new_envelope(
            "Order Completed", "web", identifiers={"user_id": f"F{token}-unresolved"},
            payload={"properties": {"total": 1.0}},
            message_id=f"{token}-no-profile-id").to_bytes()),
    }
    producer = Producer(settings, "fault-tests")
    try:
        producer.send([Outgoing(topic, f"malformed-{token}", raw)
                       for topic, raw in sorted(garbage | refused)])
    finally:
        producer.close()
    return {(topic, raw): READERS[topic] for topic, raw in garbage | refused}


def dead_letters_of(settings, token: str) -> dict[tuple[str, bytes], set[str]]:
    """(source topic, original bytes) → the groups that dead-lettered it, for this test's
    messages in this session's groups."""
    found: dict[tuple[str, bytes], set[str]] = {}
    for letter in read_all(settings, topics.DEAD_LETTER, idle_ms=500):
        if not str(letter.get("group", "")).startswith(settings.consumer_group_prefix):
            continue
        raw = base64.b64decode(letter["original_b64"])
        if token.encode() in raw:
            found.setdefault((letter["source_topic"], raw), set()).add(
                letter["group"].removeprefix(settings.consumer_group_prefix))
    return found


# --- waiting and judging -------------------------------------------------------------------

def profiles_of(db, customers: list[str]) -> dict[str, list[dict]]:
    """user id → the live profiles holding it."""
    wanted = set(customers)
    found: dict[str, list[dict]] = {}
    for doc in live_profiles(db):
        for user_id in wanted.intersection(doc["identifiers"].get("user_id", [])):
            found.setdefault(user_id, []).append(doc)
    return found


def live_profiles(db) -> Iterator[dict]:
    """Every stored profile not merged into another (profiles are stored packed: their
    fields cannot be filtered on in the store)."""
    for stored in db.profiles.find({}):
        doc = unpack(stored)
        if not doc.get("merged_into"):
            yield doc


def applied(db, customers: list[str]) -> dict[str, tuple[int, int]]:
    """user id → (purchase_count, purchase_total in cents) of its profile(s)."""
    result = {}
    for user_id, docs in profiles_of(db, customers).items():
        result[user_id] = (sum(d["computed"].get("purchase_count", 0) for d in docs),
                           sum(round(d["computed"].get("purchase_total", 0) * 100) for d in docs))
    return result


def mentions_applied(db, authors: list[str]) -> dict[str, int]:
    """X user id → social events applied to the profile(s) holding it."""
    wanted = set(authors)
    found: dict[str, int] = {}
    for doc in live_profiles(db):
        for author in wanted.intersection(doc["identifiers"].get("twitter_id", [])):
            found[author] = found.get(author, 0) + doc["aggregates"]["channels"].get("social", 0)
    return found


def wait_drained(stack: PlatformStack, settings, timeout: float) -> None:
    """Until every consumer group has committed everything in its topics."""
    lags: dict[str, int | None] = {}

    def caught_up():
        stack.check_alive()
        lags.update({group: group_lag(settings, group, read) for group, read in GROUPS.items()})
        return all(lag == 0 for lag in lags.values())

    try:
        wait_until(caught_up, timeout, interval=1, what="every consumer group to catch up")
    except AssertionError as timeout_error:
        raise AssertionError(f"{timeout_error}; records left per group: {lags}") from None


def wait_busy(settings, group: str, topic: str, before: int, at_least: int = 20) -> None:
    """Until ``group`` has committed ``at_least`` records of ``topic`` since ``before`` while
    more wait: the worker is in the middle of the stream."""
    def busy():
        done = committed_total(settings, group, topic) - before
        return done >= at_least and (group_lag(settings, group, [topic]) or 0) > 0

    wait_until(busy, 120, interval=0.2, what=f"{group} busy on {topic}")


def judge(stack: PlatformStack, settings, db, load: Load, log: StatusLog,
          malformed: dict[tuple[str, bytes], set[str]], label: str) -> None:
    load.wait(timeout=max(600.0, 4 * PER_TEST / RATE))
    assert not load.rejected, f"valid calls refused: {load.rejected[:5]}"
    expected = expected_purchases(load.accepted)
    assert sum(count for count, _ in expected.values()) == PER_TEST
    mentions = Counter(author for author, _ in load.accepted_tweets)
    assert sum(mentions.values()) == load.tweets
    drain_timeout = max(300.0, PER_TEST / 5)
    try:
        wait_until(lambda: stack.check_alive() or (
            applied(db, load.customers) == expected
            and mentions_applied(db, load.authors) == mentions),
            drain_timeout, interval=1, what="every accepted event in the profiles")
    except AssertionError:
        pass  # judged below, with the difference shown
    applied_at = time.monotonic()
    wait_drained(stack, settings, drain_timeout)

    profiles = profiles_of(db, load.customers)
    assert {u: len(docs) for u, docs in profiles.items() if len(docs) != 1} == {}
    now = applied(db, load.customers)
    wrong = {u: {"applied": now.get(u), "accepted": want} for u, want in expected.items()
             if now.get(u) != want}
    assert not wrong, f"{len(wrong)} customers differ from what was accepted: " \
                      f"{dict(list(wrong.items())[:5])}"
    assert sum(c for c, _ in now.values()) == PER_TEST
    assert sum(t for _, t in now.values()) == sum(p.cents for p in load.accepted)
    assert mentions_applied(db, load.authors) == mentions

    assert dead_letters_of(settings, load.token) == malformed

    unexplained = log.unexplained_failures()
    assert not unexplained, f"errors outside an outage: {unexplained[:10]}"
    statuses = log.counts()
    allowed = {200, 404, 503, CONNECTION_ERROR}
    assert {key for key in statuses if key[1] not in allowed} == set(), statuses

    seconds = applied_at - load.started_at
    failed = sum(n for (kind, status), n in statuses.items() if status in (503, 0))
    print(f"\n[faults] {label}: {PER_TEST} purchases of {CUSTOMERS} customers and "
          f"{load.tweets} mentions accepted, purchases at "
          f"{load.accept_rate:.1f}/s, all applied after {seconds:.1f}s "
          f"({PER_TEST / seconds:.1f} events/s end to end); failed calls {failed} "
          f"(calls retried {load.failed_calls}); answers {dict(sorted(statuses.items()))}")


def run_with_fault(stack, settings, db, api_keys, token: str, label: str, fault) -> None:
    """Start the load, let ``fault(load, log, inject)`` inject the malformed messages and do
    its damage (returning what ``inject`` returned), then judge the end state."""
    log = StatusLog()
    load = make_load(stack, api_keys, token, log)
    load.start()
    malformed = fault(load, log, lambda: inject_malformed(settings, token))
    judge(stack, settings, db, load, log, malformed, label)


def _kill_worker_mid_batch(stack, settings, service: str, group: str, topic: str):
    def fault(load, log, inject):
        before = committed_total(settings, group, topic)
        malformed = inject()
        wait_busy(settings, group, topic, before)
        stack.workers[service].kill()
        time.sleep(1)
        stack.workers[service].start()
        return malformed

    return fault


# --- the faults ----------------------------------------------------------------------------

def test_identity_worker_killed_mid_batch_loses_and_repeats_nothing(
        stack, settings, db, api_keys, unique):
    run_with_fault(stack, settings, db, api_keys, unique, "identity worker SIGKILL",
                   _kill_worker_mid_batch(stack, settings, "identity", "identity-graph",
                                          topics.EVENTS_WEB))


def test_profile_worker_killed_mid_batch_loses_and_repeats_nothing(
        stack, settings, db, api_keys, unique):
    run_with_fault(stack, settings, db, api_keys, unique, "profile worker SIGKILL",
                   _kill_worker_mid_batch(stack, settings, "profile", "profile-projection",
                                          topics.EVENTS_RESOLVED))


def test_consent_worker_killed_mid_batch_loses_and_repeats_nothing(
        stack, settings, db, api_keys, unique):
    run_with_fault(stack, settings, db, api_keys, unique, "consent worker SIGKILL",
                   _kill_worker_mid_batch(stack, settings, "consent", "consent-identity",
                                          topics.EVENTS_RESOLVED))


def test_export_worker_killed_mid_batch_keeps_its_read_model_exact(
        stack, settings, db, api_keys, unique):
    run_with_fault(stack, settings, db, api_keys, unique, "export worker SIGKILL",
                   _kill_worker_mid_batch(stack, settings, "export", "export-feed",
                                          topics.PROFILE_CHANGES))
    # the export read model holds each profile's last snapshot
    profiles = {d["_id"]: d["computed"]
                for docs in profiles_of(db, [f"F{unique}-{n}" for n in range(CUSTOMERS)]).values()
                for d in docs}
    exported = {d["_id"]: unpack(d)["computed"] for d in db.export_profiles.find(
        {"_id": {"$in": list(profiles)}})}
    assert {pid: (c["purchase_count"], c["purchase_total"]) for pid, c in exported.items()} \
        == {pid: (c["purchase_count"], c["purchase_total"]) for pid, c in profiles.items()}


def test_social_worker_killed_while_privacy_requests_flow_acknowledges_each_once(
        stack, settings, db, api_keys, unique):
    """The social worker consumes data-subject requests: access requests filed during the load
    are each acknowledged exactly once by every service although it is killed among them."""
    filed: list[str] = []

    def file_requests(load: Load, stop: threading.Event) -> None:
        # eight at once: a scan during the first profiles' bulk write may see only some
        profile_ids = wait_until(lambda: ids[:8] if len(ids := [d["_id"] for docs in profiles_of(
            db, load.customers).values() for d in docs]) >= 8 else None, 120, interval=0.5,
            what="the first profiles")
        for profile_id in profile_ids:
            if stop.is_set():
                return
            answer = requests.post(f"{stack.url('consent')}/v1/privacy/requests", timeout=30,
                                   headers=_headers(api_keys, "dpo"), json={
                                       "kind": "access", "subject": {"profile_id": profile_id},
                                       "reason": "fault test"})
            assert answer.status_code == 202, answer.text
            filed.append(answer.json()["request_id"])
            time.sleep(1)

    def fault(load, log, inject):
        before = committed_total(settings, "social-privacy", topics.PRIVACY_REQUESTS)
        malformed = inject()
        stop = threading.Event()
        filer = threading.Thread(target=file_requests, args=(load, stop), daemon=True)
        filer.start()
        wait_until(lambda: committed_total(settings, "social-privacy", topics.PRIVACY_REQUESTS)
                   - before >= 3, 180, interval=0.2, what="the social worker busy")
        stack.workers["social"].kill()
        time.sleep(1)
        stack.workers["social"].start()
        filer.join(120)
        stop.set()
        return malformed

    run_with_fault(stack, settings, db, api_keys, unique, "social worker SIGKILL", fault)
    assert len(filed) >= 4

    def completed(request_id: str):
        status = requests.get(f"{stack.url('consent')}/v1/privacy/requests/{request_id}",
                              headers=_headers(api_keys, "dpo"), timeout=30).json()
        return status if status["state"] == "completed" else None

    for request_id in filed:
        status = wait_until(lambda r=request_id: completed(r), 120, interval=0.5,
                            what=f"access request {request_id} completed")
        assert sorted(a["service"] for a in status["acknowledged"]) == sorted(SERVICES)
        assert all(a["status"] == "done" for a in status["acknowledged"])
    # at-least-once may repeat an ack on the topic, but always under the same derived id
    ack_ids: dict[tuple[str, str], set[str]] = {}
    for ack in read_all(settings, topics.PRIVACY_ACKS, idle_ms=500):
        if ack["payload"].get("request_id") in filed:
            ack_ids.setdefault((ack["payload"]["request_id"], ack["payload"]["service"]),
                               set()).add(ack["message_id"])
    assert set(ack_ids) == {(r, s) for r in filed for s in SERVICES}
    assert all(len(ids) == 1 for ids in ack_ids.values()), ack_ids


def _outage(stack, infra, what: str, stop, start):
    def fault(load, log, inject):
        malformed = inject()
        wait_until(lambda: len(load.accepted) >= PER_TEST // 3, 300, interval=0.2,
                   what="a third of the load accepted")
        outage = log.outage(what)
        stop()
        time.sleep(OUTAGE_SECONDS)
        start()
        infra.wait_ready()
        outage.ended = time.monotonic()
        return malformed

    return fault


def test_broker_stopped_and_restarted_loses_and_repeats_nothing(
        stack, infra, settings, db, api_keys, unique):
    run_with_fault(stack, settings, db, api_keys, unique, "broker stop/start",
                   _outage(stack, infra, "kafka", infra.stop_kafka, infra.start_kafka))


def test_store_stopped_and_restarted_loses_and_repeats_nothing(
        stack, infra, settings, db, api_keys, unique):
    run_with_fault(stack, settings, db, api_keys, unique, "store stop/start",
                   _outage(stack, infra, "store", infra.stop_mongo, infra.start_mongo))


def test_store_killed_and_restarted_loses_and_repeats_nothing(
        stack, infra, settings, db, api_keys, unique):
    # the store commits without an fsync: what it acknowledged is in the OS's page cache and
    # must survive its process dying without a shutdown of its own
    run_with_fault(stack, settings, db, api_keys, unique, "store SIGKILL/start",
                   _outage(stack, infra, "store", infra.kill_mongo, infra.start_mongo))
