"""Webhook to Kafka latency of the social API, next to a bare Kafka round trip.

Signed, real-shaped deliveries (Meta page feed comments signed with X-Hub-Signature-256, X
Account Activity tweets signed with x-twitter-webhooks-signature; payloads from
tests/fixtures/social with fresh ids) are posted at a fixed rate. For each one: the HTTP
answer time, and the time from sending the request until its normalised event is read from
cdp.events.social by a consumer positioned at the end before the first request (matched by
message id). The API answers only after Kafka acknowledged the event, but the record is timed
as read, not the answer. The baseline, in the same run: kafka-python producing a message of the
same size (acks=all, as the service's producer) and reading it back, at the same rate.

`python -m bench.social_latency [--rate 20] [--seconds 30]` starts its own social API against
the instance CDP_KAFKA_BOOTSTRAP / CDP_MONGO_URI point at (a fresh database); `--url` uses a
running one instead, whose secrets must then be in CDP_SOCIAL_META_APP_SECRET and
CDP_SOCIAL_X_CONSUMER_SECRET.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import secrets
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path

import orjson
import requests
from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from bench.pipeline import step
from services.common import topics
from services.common.bus import ensure_topics
from services.common.config import Settings
from services.social import signatures
from tests.support.processes import ServiceApi
from tests.support.social_fixtures import sent_at

FIXTURES = Path(__file__).parents[1] / "tests" / "fixtures" / "social"
META_FIXTURE = "meta_page_feed_comment.json"
X_FIXTURE = "x_tweet_mention.json"
ARRIVAL_PATIENCE_SECONDS = 30.0


def percentile(values: list[float], share: float) -> float | None:
    """Nearest-rank percentile of ``values`` (None when there are none)."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, min(len(ordered) - 1, round(share * len(ordered)) - 1))]


class Arrivals:
    """Reads ``topic`` from its current end in a thread and notes when each awaited message id
    is first read (``time.perf_counter``) and how big its record was."""

    def __init__(self, settings: Settings, topic: str):
        self._consumer = KafkaConsumer(bootstrap_servers=settings.kafka_bootstrap.split(","),
                                       enable_auto_commit=False)
        partitions = [TopicPartition(topic, p)
                      for p in self._consumer.partitions_for_topic(topic) or ()]
        self._consumer.assign(partitions)
        self._consumer.seek_to_end(*partitions)
        for partition in partitions:  # resolve the end now, not after the first send
            self._consumer.position(partition)
        self.awaited: set[str] = set()
        self.seen: dict[str, float] = {}
        self.sizes: list[int] = []
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def expect(self, message_id: str) -> None:
        with self._lock:
            self.awaited.add(message_id)

    def _read(self) -> None:
        while not self._stopping.is_set():
            for records in self._consumer.poll(timeout_ms=100).values():
                now = time.perf_counter()
                for record in records:
                    try:
                        message_id = orjson.loads(record.value).get("message_id")
                    except (orjson.JSONDecodeError, AttributeError):
                        continue
                    with self._lock:
                        if message_id in self.awaited and message_id not in self.seen:
                            self.seen[message_id] = now
                            self.sizes.append(len(record.value))

    def wait_for_all(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if self.awaited <= self.seen.keys():
                    return
            time.sleep(0.05)

    def close(self) -> None:
        self._stopping.set()
        self._thread.join(10)
        self._consumer.close()


def _fresh_digits() -> str:
    return str(uuid.uuid4().int)[:16]


def meta_delivery(template: str, secret: str) -> tuple[bytes, dict[str, str], str]:
    """A page feed comment by a new author with a new comment id: body, headers, message id."""
    comment, author = _fresh_digits(), _fresh_digits()
    text = template.replace("1122334455667788", comment).replace("7012345678901234", author)
    body = json.dumps(sent_at(json.loads(text), datetime.now(UTC))).encode()
    return (body, {"Content-Type": "application/json",
                   "X-Hub-Signature-256": signatures.meta_signature(secret, body)},
            f"social:facebook:798765432109876_{comment}")


def x_delivery(template: str, secret: str) -> tuple[bytes, dict[str, str], str]:
    """A tweet mentioning the brand by a new author (id and handle: one handle shared by many
    ids would trip the identity graph's merge protection) with a new tweet id."""
    tweet, author = _fresh_digits(), _fresh_digits()
    text = (template.replace("1797560000000000001", tweet).replace("6253282", author)
            .replace("Anna_Virtanen", f"fan_{author}"))
    body = json.dumps(sent_at(json.loads(text), datetime.now(UTC))).encode()
    return (body, {"Content-Type": "application/json",
                   "x-twitter-webhooks-signature": signatures.x_signature(secret, body)},
            f"social:x:{tweet}")


def _at_fixed_rate(count: int, rate: float, one: Callable[[int], None]) -> None:
    """Call ``one(i)`` at start + i/rate (open loop: a slow answer delays no later send)."""
    start = time.perf_counter() + 0.2

    def due(i: int) -> None:
        delay = start + i / rate - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        one(i)

    with ThreadPoolExecutor(max_workers=16) as pool:
        list(pool.map(due, range(count)))


def webhooks(social_url: str, settings: Settings, meta_secret: str, x_secret: str,
             rate: float = 20.0, seconds: float = 30.0) -> dict:
    """Alternate Meta and X deliveries at ``rate`` per second for ``seconds``."""
    templates = {"meta": (FIXTURES / META_FIXTURE).read_text(),
                 "x": (FIXTURES / X_FIXTURE).read_text()}
    deliveries = []
    for i in range(int(rate * seconds)):
        if i % 2 == 0:
            deliveries.append((f"{social_url}/v1/social/meta/webhook",
                               *meta_delivery(templates["meta"], meta_secret)))
        else:
            deliveries.append((f"{social_url}/v1/social/x/webhook",
                               *x_delivery(templates["x"], x_secret)))
    arrivals = Arrivals(settings, topics.EVENTS_SOCIAL)
    sent_at: dict[str, float] = {}
    answers: list[float] = []
    errors = 0
    lock = threading.Lock()
    session = requests.Session()
    session.mount("http://", requests.adapters.HTTPAdapter(pool_maxsize=16))

    def send(i: int) -> None:
        nonlocal errors
        url, body, headers, message_id = deliveries[i]
        arrivals.expect(message_id)
        started = time.perf_counter()
        try:
            ok = session.post(url, data=body, headers=headers, timeout=30).status_code == 200
        except requests.RequestException:
            ok = False
        answered = time.perf_counter()
        with lock:
            sent_at[message_id] = started
            answers.append(answered - started)
            errors += not ok

    try:
        _at_fixed_rate(len(deliveries), rate, send)
        arrivals.wait_for_all(ARRIVAL_PATIENCE_SECONDS)
    finally:
        arrivals.close()
    to_kafka = [arrivals.seen[m] - sent_at[m] for m in sent_at if m in arrivals.seen]
    return {
        "social_webhook_rate_per_s": rate,
        "social_webhook_deliveries": len(deliveries),
        "social_webhook_errors": errors,
        "social_webhook_missing": len(sent_at) - len(to_kafka),
        "social_webhook_answer_p50_ms": _ms(percentile(answers, 0.50)),
        "social_webhook_answer_p95_ms": _ms(percentile(answers, 0.95)),
        "social_webhook_answer_p99_ms": _ms(percentile(answers, 0.99)),
        "social_webhook_to_kafka_p50_ms": _ms(percentile(to_kafka, 0.50)),
        "social_webhook_to_kafka_p95_ms": _ms(percentile(to_kafka, 0.95)),
        "social_webhook_to_kafka_p99_ms": _ms(percentile(to_kafka, 0.99)),
        "social_event_bytes": int(sum(arrivals.sizes) / len(arrivals.sizes))
        if arrivals.sizes else None,
    }


def raw_roundtrip(settings: Settings, size: int, rate: float = 20.0,
                  seconds: float = 30.0) -> dict:
    """kafka-python alone: a ``size``-byte message produced (acks=all, idempotent, linger 5 ms
    as the service's producer) and read back by a consumer at the end of a fresh topic."""
    topic = f"bench.social.raw.{uuid.uuid4().hex[:8]}"
    ensure_topics(settings, [topic])
    producer = KafkaProducer(bootstrap_servers=settings.kafka_bootstrap.split(","), acks="all",
                             enable_idempotence=True, linger_ms=5)
    arrivals = Arrivals(settings, topic)
    sent_at: dict[str, float] = {}
    lock = threading.Lock()

    def send(i: int) -> None:
        message_id = f"raw-{i}-{uuid.uuid4().hex}"
        head = orjson.dumps({"message_id": message_id, "pad": ""})
        value = head[:-2] + b"p" * max(0, size - len(head)) + b'"}'
        arrivals.expect(message_id)
        started = time.perf_counter()
        producer.send(topic, key=str(i).encode(), value=value).get(timeout=30)
        with lock:
            sent_at[message_id] = started

    try:
        _at_fixed_rate(int(rate * seconds), rate, send)
        arrivals.wait_for_all(ARRIVAL_PATIENCE_SECONDS)
    finally:
        arrivals.close()
        producer.close()
    trips = [arrivals.seen[m] - sent_at[m] for m in sent_at if m in arrivals.seen]
    return {"raw_kafka_roundtrip_p50_ms": _ms(percentile(trips, 0.50)),
            "raw_kafka_roundtrip_p95_ms": _ms(percentile(trips, 0.95))}


def run(social_url: str, settings: Settings, meta_secret: str, x_secret: str,
        rate: float = 20.0, seconds: float = 30.0) -> dict:
    """The webhook figures, the raw baseline of the same message size, and their ratio."""
    results = webhooks(social_url, settings, meta_secret, x_secret, rate, seconds)
    results.update(raw_roundtrip(settings, results["social_event_bytes"] or 1500, rate,
                                 seconds))
    webhook, raw = (results["social_webhook_to_kafka_p95_ms"],
                    results["raw_kafka_roundtrip_p95_ms"])
    results["social_webhook_to_kafka_p95_ratio"] = webhook / raw if webhook and raw else None
    return results


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else seconds * 1000


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.social_latency", description=__doc__)
    parser.add_argument("--rate", type=float, default=20.0, help="deliveries per second")
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--url", help="a running social API instead of starting one")
    args = parser.parse_args(argv)
    meta_secret = os.environ.get("CDP_SOCIAL_META_APP_SECRET") or secrets.token_hex(16)
    x_secret = os.environ.get("CDP_SOCIAL_X_CONSUMER_SECRET") or secrets.token_hex(16)
    env = {**os.environ, "CDP_MONGO_DB": f"muisti_bench_{uuid.uuid4().hex[:6]}",
           "CDP_SOCIAL_META_APP_SECRET": meta_secret, "CDP_SOCIAL_X_CONSUMER_SECRET": x_secret,
           "CDP_MASTER_KEY": os.environ.get("CDP_MASTER_KEY")
           or base64.b64encode(secrets.token_bytes(32)).decode(),
           # the API seals a hetu a collector gives with these two
           "CDP_PRIVACY_DIGEST_KEY": os.environ.get("CDP_PRIVACY_DIGEST_KEY")
           or secrets.token_hex(16),
           "CDP_LOG_LEVEL": "WARNING"}
    settings = Settings.from_env(env)
    ensure_topics(settings, topics.ALL)
    api = None
    if not args.url:
        step("starting the social API")
        api = ServiceApi("social", env).start()
    try:
        step(f"signed webhooks at {args.rate:g}/s for {args.seconds:g}s, then raw Kafka")
        results = run(args.url or api.url, settings, meta_secret, x_secret, args.rate,
                      args.seconds)
    finally:
        if api is not None:
            api.stop()
    results["load_average"] = os.getloadavg()
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
