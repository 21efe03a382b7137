"""Benchmarks of the event pipeline: ingestion to stored profile, lookups, freshness.

Traffic is shaped like a web shop's: each customer browses anonymously, registers (identify
with a customer number, email and phone), then views and buys with both ids, so most events
meet identifiers the graph already knows and a few link new ones.
"""

from __future__ import annotations

import http.client
import os
import random
import statistics
import threading
import time
import urllib.parse
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager as ContextManager
from contextlib import contextmanager
from datetime import UTC, datetime

import requests
from kafka import KafkaAdminClient, KafkaConsumer, TopicPartition

from services.common import topics
from services.common.bus import Outgoing, Producer
from services.common.config import Settings
from services.common.envelope import new_envelope
from services.common.store import unpack
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


class LagReader:
    """Consumer-group lag through one admin client and one consumer kept open: polling lag
    every half second with fresh clients cost 34 ms of CPU per check, taken from the very
    machine whose throughput is being measured."""

    def __init__(self, settings: Settings):
        servers = settings.kafka_bootstrap.split(",")
        self.prefix = settings.consumer_group_prefix
        self.admin = KafkaAdminClient(bootstrap_servers=servers)
        self.consumer = KafkaConsumer(bootstrap_servers=servers)

    def lag(self, group: str, topic: str) -> int:
        """Messages in ``topic`` the consumer group has not committed yet."""
        group = self.prefix + group
        committed = {tp: meta.offset for tp, meta in
                     self.admin.list_group_offsets(group).get(group, {}).items()
                     if tp.topic == topic}
        partitions = [TopicPartition(topic, p) for p in self.consumer.partitions_for_topic(topic)]
        ends = self.consumer.end_offsets(partitions)
        return sum(end - max(committed.get(tp, 0), 0) for tp, end in ends.items())

    def settled(self, groups: list[str]) -> bool:
        """Whether ``groups`` have members with partitions assigned and no group of this
        platform is rebalancing."""
        states = {group["group_id"]: group["group_state"] for group in self.admin.list_groups()
                  if group["group_id"].startswith(self.prefix)}
        return (all(states.get(self.prefix + group) == "Stable" for group in groups)
                and all(state in ("Stable", "Empty") for state in states.values()))

    def close(self) -> None:
        self.admin.close()
        self.consumer.close()


def wait_settled(settings: Settings, groups: list[str]) -> None:
    """Until the consumer groups a stage measures are assigned: started workers take seconds
    to join, and a stage timed from before that measures the join."""
    reader = LagReader(settings)
    try:
        wait_until(lambda: reader.settled(groups), 120, interval=0.5,
                   what=f"consumer groups {', '.join(groups)} settled")
    finally:
        reader.close()


def group_lag(settings: Settings, group: str, topic: str) -> int:
    """Messages in ``topic`` the consumer group has not committed yet."""
    reader = LagReader(settings)
    try:
        return reader.lag(group, topic)
    finally:
        reader.close()


def platform_lag(settings: Settings) -> dict[str, int]:
    """Records each of this platform's consumer groups has not committed yet, over the
    partitions it has committed on."""
    servers = settings.kafka_bootstrap.split(",")
    admin = KafkaAdminClient(bootstrap_servers=servers)
    consumer = KafkaConsumer(bootstrap_servers=servers)
    try:
        groups = [g["group_id"] for g in admin.list_groups()
                  if g["group_id"].startswith(settings.consumer_group_prefix)]
        committed = {group: {tp: meta.offset for tp, meta in
                             admin.list_group_offsets(group).get(group, {}).items()}
                     for group in groups}
        ends = consumer.end_offsets(list({tp for offsets in committed.values()
                                          for tp in offsets}))
    finally:
        admin.close()
        consumer.close()
    return {group.removeprefix(settings.consumer_group_prefix):
            sum(ends[tp] - max(offset, 0) for tp, offset in offsets.items())
            for group, offsets in committed.items()}


def wait_quiet(settings: Settings, timeout: float = 3600) -> None:
    """Until every worker has caught up: a stage measured while the workers still digest
    the previous stage's backlog measures that backlog, not the stage."""
    def quiet() -> bool:
        busy = {group: lag for group, lag in platform_lag(settings).items() if lag}
        if busy:
            step("  waiting for the workers to catch up: " + ", ".join(
                f"{group} {lag:,}" for group, lag in sorted(busy.items())))
        return not busy

    wait_until(quiet, timeout, interval=10, what="every consumer group caught up")


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

    reader = LagReader(settings)

    def drained() -> bool:
        return (reader.lag("identity-graph", topics.EVENTS_WEB) == 0
                and reader.lag("profile-projection", topics.EVENTS_RESOLVED) == 0)

    try:
        wait_until(drained, 1800, interval=0.5, what="every event resolved and projected")
    finally:
        reader.close()
    total_s = time.perf_counter() - started
    return {"ingest_events": len(messages),
            "ingest_events_per_s": len(messages) / total_s,
            "ingest_http_accept_per_s": len(messages) / accepted_s,
            "ingest_http_batch_p50_ms": statistics.median(batch_latencies) * 1000}


# the seed's names: common Finnish ones, so that many profiles share them and their prefixes
FIRST_NAMES = ("Anna", "Maria", "Aino", "Helmi", "Sofia", "Emma", "Juho", "Mikko", "Matti",
               "Jukka", "Timo", "Antti", "Liisa", "Johanna", "Tiina", "Sari", "Päivi", "Väinö")
LAST_NAMES = ("Korhonen", "Virtanen", "Mäkinen", "Nieminen", "Mäkelä", "Hämäläinen", "Laine",
              "Heikkinen", "Koskinen", "Järvinen", "Lehtonen", "Lehtinen", "Saarinen",
              "Salminen", "Heinonen", "Niemi", "Heikkilä", "Kinnunen", "Salonen", "Turunen")


def seed_profiles(settings: Settings, count: int) -> tuple[list[str], list[str]]:
    """``count`` profiles made by the profile worker from resolved registrations produced
    straight to cdp.events.resolved; returns their phone numbers and profile ids."""
    run = uuid.uuid4().hex[:6]
    phones = [f"+35850{i:07d}" for i in range(count)]
    profile_ids = [f"p_bench_{run}_{i}" for i in range(count)]
    producer = Producer(settings, "bench")
    try:
        for start in range(0, count, 2000):
            batch = []
            for i in range(start, min(start + 2000, count)):
                profile_id = profile_ids[i]
                envelope = new_envelope(
                    "Identify", "web", message_id=f"seed-{run}-{i}",
                    identifiers={"phone": phones[i], "user_id": f"SEED{run}{i}"},
                    payload={"call": "identify",
                             "traits": {"firstName": FIRST_NAMES[i % len(FIRST_NAMES)],
                                        "lastName": LAST_NAMES[i // len(FIRST_NAMES)
                                                               % len(LAST_NAMES)],
                                        "language": "fi", "city": "Tampere"}},
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
    return phones, profile_ids


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
            seconds: float = 20.0, busy: Callable[[], ContextManager] | None = None) -> dict:
    """Lookup by phone through the profile API against a raw find_one by the same key, on
    a platform whose workers have caught up, then again inside ``busy()`` (ingestion
    flowing meanwhile).

    The load generator runs on the same cores as the API and the store: it calls with
    http.client on one kept-alive connection per thread (~0.4 ms of CPU a request where
    requests took ~1.5 ms), and its own CPU per request and the load average are reported
    beside the figures."""
    url = urllib.parse.urlsplit(profile_url)
    headers = {"Authorization": f"Bearer {agent_key}", "X-Purpose": "customer_service"}
    local = threading.local()

    def api(phone: str) -> bool:
        connection = getattr(local, "connection", None)
        if connection is None:
            connection = local.connection = http.client.HTTPConnection(
                url.hostname, url.port, timeout=10)
        query = urllib.parse.urlencode({"type": "phone", "value": phone})
        try:
            connection.request("GET", f"/v1/profiles?{query}", headers=headers)
            response = connection.getresponse()
            response.read()
        except (OSError, http.client.HTTPException):
            connection.close()
            local.connection = None
            return False
        return response.status == 200

    def raw(phone: str) -> bool:
        return db[IDENTIFIERS].find_one({"_id": f"phone:{phone}"}) is not None

    assert api(phones[0]), "a seeded profile is not found by its phone"
    step(f"  raw find_one at {rate:.0f}/s for {seconds:.0f}s")
    raw_fixed = _fixed_rate(raw, phones, rate, seconds)
    step(f"  profile API lookups at {rate:.0f}/s for {seconds:.0f}s")
    load = os.getloadavg()[0]
    cpu = time.process_time()
    api_fixed = _fixed_rate(api, phones, rate, seconds)
    client_cpu_ms = (time.process_time() - cpu) * 1000 / api_fixed["requests"]
    busy_fixed = None
    if busy is not None:
        step(f"  profile API lookups at {rate:.0f}/s for {seconds:.0f}s, ingestion meanwhile")
        with busy():
            busy_fixed = _fixed_rate(api, phones, rate, seconds)
    step("  maximum sustained rates (8 callers back to back)")
    raw_max, api_max = _max_rate(raw, phones), _max_rate(api, phones)
    return {
        "lookup_busy_p50_ms": busy_fixed and busy_fixed["p50_ms"],
        "lookup_busy_p99_ms": busy_fixed and busy_fixed["p99_ms"],
        "lookup_busy_errors": busy_fixed and busy_fixed["errors"],
        "lookup_rate": rate,
        "lookup_p50_ms": api_fixed["p50_ms"], "lookup_p99_ms": api_fixed["p99_ms"],
        "lookup_errors": api_fixed["errors"],
        "raw_lookup_p50_ms": raw_fixed["p50_ms"], "raw_lookup_p99_ms": raw_fixed["p99_ms"],
        "lookup_p99_ratio": api_fixed["p99_ms"] / raw_fixed["p99_ms"],
        "lookup_max_rate": api_max, "raw_lookup_max_rate": raw_max,
        "lookup_max_rate_ratio": api_max / raw_max,
        "lookup_client_cpu_ms": client_cpu_ms, "lookup_load_average": load,
    }


@contextmanager
def background_traffic(identity_url: str, collector_key: str, per_s: float) -> Iterator[None]:
    """Shop traffic posted to the identity API at ``per_s`` events a second meanwhile."""
    run = uuid.uuid4().hex[:8]
    stop = threading.Event()

    def post() -> None:
        traffic = shop_traffic(f"{run}bg", 10_000)
        for start in range(0, len(traffic), 20):
            if stop.is_set():
                return
            requests.post(f"{identity_url}/v1/batch", json={"batch": traffic[start:start + 20]},
                          auth=(collector_key, ""), timeout=30)
            time.sleep(20 / per_s)

    loader = threading.Thread(target=post, daemon=True)
    loader.start()
    try:
        yield
    finally:
        stop.set()
        loader.join(30)


def freshness(identity_url: str, profile_url: str, keys: dict, probes: int = 20,
              background_per_s: float = 10.0) -> dict:
    """An identify accepted by the identity API → its profile found by phone in the profile
    API, while other traffic flows in the background (at a rate the pipeline sustains, so
    the figure is the delay of the path, not of a growing backlog)."""
    run = uuid.uuid4().hex[:8]
    collector = (keys["collector"], "")
    headers = {"Authorization": f"Bearer {keys['agent']}", "X-Purpose": "customer_service"}
    delays = []
    with background_traffic(identity_url, keys["collector"], background_per_s):
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

            wait_until(visible, 300, interval=0.01, what="the new profile in the lookup API")
            delays.append(time.perf_counter() - accepted)
    delays.sort()
    return {"freshness_p50_ms": delays[len(delays) // 2] * 1000,
            "freshness_p95_ms": delays[int(len(delays) * 0.95) - 1] * 1000,
            "freshness_background_events_per_s": background_per_s}


def erasures(consent_url: str, dpo_key: str, profile_ids: list[str], count: int = 10) -> dict:
    """Erasure requests filed with the privacy service → completed, i.e. acknowledged by every
    service after each erased what it holds."""
    headers = {"Authorization": f"Bearer {dpo_key}"}
    durations = []
    for profile_id in profile_ids[:count]:
        started = time.perf_counter()
        filed = requests.post(f"{consent_url}/v1/privacy/requests", headers=headers, timeout=30,
                              json={"kind": "erasure", "subject": {"profile_id": profile_id},
                                    "reason": "bench"})
        filed.raise_for_status()
        url = f"{consent_url}/v1/privacy/requests/{filed.json()['request_id']}"

        def completed(url: str = url) -> bool:
            state = requests.get(url, headers=headers, timeout=30).json()["state"]
            if state == "partially_failed":
                raise AssertionError(f"erasure failed: {url}")
            return state == "completed"

        wait_until(completed, 300, interval=0.05, what="the erasure to complete")
        durations.append(time.perf_counter() - started)
    durations.sort()
    return {"erasure_p50_ms": durations[len(durations) // 2] * 1000,
            "erasure_p95_ms": durations[max(int(len(durations) * 0.95) - 1, 0)] * 1000,
            "erasures": len(durations)}


def grant_partner_consent(settings: Settings, profile_ids: list[str]) -> None:
    """marketing_email granted for every seeded profile, as the consent service announces it."""
    producer = Producer(settings, "bench")
    try:
        for start in range(0, len(profile_ids), 2000):
            producer.send([Outgoing(topics.CONSENT_CHANGES, profile_id, new_envelope(
                "Consent Changed", "system", message_id=f"bench-consent-{profile_id}",
                payload={"purpose": "marketing_email", "state": "granted", "allowed": True,
                         "reason": "bench", "receipt_id": f"r-{profile_id}",
                         "notice_version": None, "source": "bench",
                         "collected_at": datetime.now(UTC).isoformat()},
            ).resolved_to(profile_id)) for profile_id in profile_ids[start:start + 2000]])
    finally:
        producer.close()


def export(export_url: str, admin_key: str, settings: Settings, db, expected: int,
           out_dir: str) -> dict:
    """A full export run of every seeded profile (email and phone hashed for Meta, CSV, to a
    directory) against the raw ceiling: reading the same read model with pymongo and writing
    the same columns, hashed, with the csv module."""
    import csv
    import hashlib
    from pathlib import Path

    def caught_up() -> bool:
        lag = (group_lag(settings, "export-feed", topics.PROFILE_CHANGES)
               + group_lag(settings, "export-feed", topics.CONSENT_CHANGES))
        step(f"  export read model: {lag:,} changes to go")
        return lag == 0

    wait_until(caught_up, 7200, interval=10, what="the export read model to catch up")
    headers = {"Authorization": f"Bearer {admin_key}"}
    contract = {"name": "Bench ads", "required_purposes": ["marketing_email"], "format": "csv",
                "destination": {"kind": "directory", "path": "bench"},
                "fields": [{"name": "ph", "source": "identifiers.phone", "treatment": "sha256",
                            "platform": "meta", "platform_field": "ph"},
                           {"name": "external_id", "source": "identifiers.user_id",
                            "treatment": "sha256", "platform": "meta",
                            "platform_field": "external_id"}]}
    requests.put(f"{export_url}/v1/partners/bench", json=contract, headers=headers,
                 timeout=30).raise_for_status()
    started = time.perf_counter()
    run = requests.post(f"{export_url}/v1/exports/bench/runs", json={}, headers=headers,
                        timeout=30)
    run.raise_for_status()
    url = f"{export_url}/v1/exports/bench/runs/{run.json()['run_id']}"

    def finished() -> dict | None:
        body = requests.get(url, headers=headers, timeout=30).json()
        if body["status"] == "failed":
            raise AssertionError(f"export run failed: {body}")
        return body if body["status"] == "succeeded" else None

    done = wait_until(finished, 3600, interval=0.5, what="the export run")
    export_s = time.perf_counter() - started
    exported = done["progress"]["exported"]

    started = time.perf_counter()
    with open(Path(out_dir) / "raw.csv", "w", newline="") as out:
        writer = csv.writer(out)
        rows = 0
        for doc in db["export_profiles"].find({}):
            ids = unpack(doc).get("identifiers", {})
            writer.writerow([hashlib.sha256(str(ids.get(k, [""])[0]).encode()).hexdigest()
                             for k in ("phone", "user_id")])
            rows += 1
    raw_s = time.perf_counter() - started
    return {"export_profiles": exported, "export_expected": expected,
            "export_per_s": exported / export_s, "raw_export_per_s": rows / raw_s,
            "export_ratio": (exported / export_s) / (rows / raw_s)}
