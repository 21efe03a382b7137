"""Benchmarks of the event pipeline: ingestion to stored profile, lookups, freshness.

Traffic is shaped like a web shop's: each customer browses anonymously, registers (identify
with a customer number, email and phone), then views and buys with both ids, so most events
meet identifiers the graph already knows and a few link new ones.
"""

from __future__ import annotations

import random
import statistics
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime

import requests
from kafka import KafkaAdminClient, KafkaConsumer, TopicPartition

from services.common import topics
from services.common.bus import Outgoing, Producer
from services.common.config import Settings
from services.common.envelope import new_envelope
from services.profile.profile_store import IDENTIFIERS
from tests.support.processes import wait_until


def step(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", flush=True)


def shop_traffic(run: str, customers: int) -> list[dict]:
    """Five Segment messages per customer, customers interleaved as on a live site."""
    sessions = []
    for c in range(customers):
        cookie, user = f"{run}-c{c}", f"{run}-u{c}"
        phone = f"+35840{c:07d}"
        sessions.append([
            {"type": "page", "anonymousId": cookie, "name": "Home"},
            {"type": "track", "anonymousId": cookie, "event": "Product Viewed",
             "properties": {"sku": f"S-{c % 50}", "category": "kahvi", "price": 8.9}},
            {"type": "identify", "anonymousId": cookie, "userId": user,
             "traits": {"email": f"{user}@example.fi", "phone": phone,
                        "firstName": "Maija", "lastName": f"Asiakas{c}"}},
            {"type": "track", "anonymousId": cookie, "userId": user, "event": "Product Viewed",
             "properties": {"sku": f"S-{c % 40}", "category": "tee", "price": 5.5}},
            {"type": "track", "anonymousId": cookie, "userId": user, "event": "Order Completed",
             "properties": {"order_id": f"{run}-o{c}", "total": 14.4, "currency": "EUR",
                            "products": [{"sku": f"S-{c % 50}", "category": "kahvi",
                                          "price": 8.9, "quantity": 1}]}},
        ])
    messages = []
    for position in range(5):
        for c, session in enumerate(sessions):
            messages.append({**session[position], "messageId": f"{run}-{c}-{position}"})
    return messages


def group_lag(settings: Settings, group: str, topic: str) -> int:
    """Messages in ``topic`` the consumer group has not committed yet."""
    group = settings.consumer_group_prefix + group
    admin = KafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap.split(","))
    consumer = KafkaConsumer(bootstrap_servers=settings.kafka_bootstrap.split(","))
    try:
        committed = {tp: meta.offset for tp, meta in
                     admin.list_group_offsets(group).get(group, {}).items() if tp.topic == topic}
        partitions = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic)]
        ends = consumer.end_offsets(partitions)
    finally:
        admin.close()
        consumer.close()
    return sum(end - max(committed.get(tp, 0), 0) for tp, end in ends.items())


def ingestion(identity_url: str, settings: Settings, collector_key: str,
              customers: int = 600) -> dict:
    """HTTP batches into the identity API → resolved by the graph → projected into profiles."""
    run = uuid.uuid4().hex[:8]
    messages = shop_traffic(run, customers)
    started = time.perf_counter()
    batch_latencies = []
    for start in range(0, len(messages), 100):
        sent = time.perf_counter()
        response = requests.post(f"{identity_url}/v1/batch",
                                 json={"batch": messages[start:start + 100]},
                                 auth=(collector_key, ""), timeout=60)
        batch_latencies.append(time.perf_counter() - sent)
        response.raise_for_status()
    accepted_s = time.perf_counter() - started
    step(f"  {len(messages)} events accepted over HTTP in {accepted_s:.1f}s; "
         "waiting for the graph and the profiles")

    def drained() -> bool:
        return (group_lag(settings, "identity-graph", topics.EVENTS_WEB) == 0
                and group_lag(settings, "profile-projection", topics.EVENTS_RESOLVED) == 0)

    wait_until(drained, 1800, interval=0.5, what="every event resolved and projected")
    total_s = time.perf_counter() - started
    return {"ingest_events": len(messages),
            "ingest_events_per_s": len(messages) / total_s,
            "ingest_http_accept_per_s": len(messages) / accepted_s,
            "ingest_http_batch_p50_ms": statistics.median(batch_latencies) * 1000}


def seed_profiles(settings: Settings, count: int) -> list[str]:
    """``count`` profiles made by the profile worker from resolved registrations produced
    straight to cdp.events.resolved; returns their phone numbers."""
    run = uuid.uuid4().hex[:6]
    phones = [f"+35850{i:07d}" for i in range(count)]
    producer = Producer(settings, "bench")
    try:
        for start in range(0, count, 2000):
            batch = []
            for i in range(start, min(start + 2000, count)):
                profile_id = f"p_bench_{run}_{i}"
                envelope = new_envelope(
                    "Identify", "web", message_id=f"seed-{run}-{i}",
                    identifiers={"phone": phones[i], "user_id": f"SEED{run}{i}"},
                    payload={"call": "identify",
                             "traits": {"firstName": "Seppo", "lastName": f"Siemen{i}"}},
                ).resolved_to(profile_id)
                batch.append(Outgoing(topics.EVENTS_RESOLVED, profile_id, envelope))
            producer.send(batch)
    finally:
        producer.close()
    started = time.perf_counter()

    def projected() -> bool:
        lag = group_lag(settings, "profile-projection", topics.EVENTS_RESOLVED)
        step(f"  seeding: {count - lag:,} of {count:,} profiles stored "
             f"({(count - lag) / max(time.perf_counter() - started, 1e-9):,.0f}/s)")
        return lag == 0

    wait_until(projected, 7200, interval=10, what="seed profiles projected")
    return phones


def _fixed_rate(call: Callable[[str], bool], keys: list[str], rate: float,
                seconds: float) -> dict:
    """Open-loop load: request i is due at start + i/rate; latency counts from when it was due,
    so a slow answer that delays the next requests is not hidden (coordinated omission)."""
    total = int(rate * seconds)
    latencies: list[float] = []
    errors = 0
    lock = threading.Lock()
    start = time.perf_counter() + 0.2
    rng = random.Random(7)
    chosen = [rng.choice(keys) for _ in range(total)]

    def one(i: int) -> None:
        nonlocal errors
        due = start + i / rate
        delay = due - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        ok = call(chosen[i])
        with lock:
            latencies.append(time.perf_counter() - due)
            errors += not ok

    with ThreadPoolExecutor(max_workers=16) as pool:
        list(pool.map(one, range(total)))
    latencies.sort()
    return {"p50_ms": latencies[len(latencies) // 2] * 1000,
            "p99_ms": latencies[int(len(latencies) * 0.99) - 1] * 1000,
            "errors": errors, "requests": total}


def _max_rate(call: Callable[[str], bool], keys: list[str], seconds: float = 8.0,
              clients: int = 8) -> float:
    """Closed loop: ``clients`` callers back to back for ``seconds``; answers per second."""
    done = 0
    lock = threading.Lock()
    deadline = time.perf_counter() + seconds

    def caller(seed: int) -> None:
        nonlocal done
        rng = random.Random(seed)
        while time.perf_counter() < deadline:
            if call(rng.choice(keys)):
                with lock:
                    done += 1

    with ThreadPoolExecutor(max_workers=clients) as pool:
        list(pool.map(caller, range(clients)))
    return done / seconds


def lookups(profile_url: str, agent_key: str, db, phones: list[str], rate: float = 200.0,
            seconds: float = 20.0) -> dict:
    """Lookup by phone through the profile API against a raw find_one by the same key."""
    session = requests.Session()
    headers = {"Authorization": f"Bearer {agent_key}", "X-Purpose": "customer_service"}
    local = threading.local()

    def api(phone: str) -> bool:
        if not hasattr(local, "session"):
            local.session = requests.Session()
        response = local.session.get(f"{profile_url}/v1/profiles", headers=headers,
                                     params={"type": "phone", "value": phone}, timeout=10)
        return response.status_code == 200

    def raw(phone: str) -> bool:
        return db[IDENTIFIERS].find_one({"_id": f"phone:{phone}"}) is not None

    assert api(phones[0]), "a seeded profile is not found by its phone"
    session.close()
    step(f"  raw find_one at {rate:.0f}/s for {seconds:.0f}s")
    raw_fixed = _fixed_rate(raw, phones, rate, seconds)
    step(f"  profile API lookups at {rate:.0f}/s for {seconds:.0f}s")
    api_fixed = _fixed_rate(api, phones, rate, seconds)
    step("  maximum sustained rates (8 callers back to back)")
    raw_max, api_max = _max_rate(raw, phones), _max_rate(api, phones)
    return {
        "lookup_rate": rate,
        "lookup_p50_ms": api_fixed["p50_ms"], "lookup_p99_ms": api_fixed["p99_ms"],
        "lookup_errors": api_fixed["errors"],
        "raw_lookup_p50_ms": raw_fixed["p50_ms"], "raw_lookup_p99_ms": raw_fixed["p99_ms"],
        "lookup_p99_ratio": api_fixed["p99_ms"] / raw_fixed["p99_ms"],
        "lookup_max_rate": api_max, "raw_lookup_max_rate": raw_max,
        "lookup_max_rate_ratio": api_max / raw_max,
    }


def freshness(identity_url: str, profile_url: str, keys: dict, probes: int = 30,
              background_per_s: float = 100.0) -> dict:
    """An identify accepted by the identity API → its profile found by phone in the profile
    API, while other traffic flows in the background."""
    run = uuid.uuid4().hex[:8]
    stop = threading.Event()
    collector = (keys["collector"], "")

    def background() -> None:
        traffic = shop_traffic(f"{run}bg", 10_000)
        for start in range(0, len(traffic), 20):
            if stop.is_set():
                return
            requests.post(f"{identity_url}/v1/batch", json={"batch": traffic[start:start + 20]},
                          auth=collector, timeout=30)
            time.sleep(20 / background_per_s)

    loader = threading.Thread(target=background, daemon=True)
    loader.start()
    headers = {"Authorization": f"Bearer {keys['agent']}", "X-Purpose": "customer_service"}
    delays = []
    try:
        for i in range(probes):
            phone = f"+35845{i:03d}{random.randint(1000, 9999)}"
            message = {"userId": f"{run}-fresh-{i}", "messageId": f"{run}-fresh-{i}",
                       "traits": {"phone": phone, "firstName": "Tuore"},
                       "timestamp": datetime.now(UTC).isoformat()}
            accepted = time.perf_counter()
            requests.post(f"{identity_url}/v1/identify", json=message, auth=collector,
                          timeout=30).raise_for_status()

            def visible(phone: str = phone) -> bool:
                return requests.get(f"{profile_url}/v1/profiles", headers=headers, timeout=10,
                                    params={"type": "phone", "value": phone}).status_code == 200

            wait_until(visible, 60, interval=0.01, what="the new profile in the lookup API")
            delays.append(time.perf_counter() - accepted)
    finally:
        stop.set()
        loader.join(30)
    delays.sort()
    return {"freshness_p50_ms": delays[len(delays) // 2] * 1000,
            "freshness_p95_ms": delays[int(len(delays) * 0.95) - 1] * 1000,
            "freshness_background_events_per_s": background_per_s}
