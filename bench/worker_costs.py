"""Each ingestion worker alone: events/s and store round trips per event.

`python -m bench.worker_costs [--customers N]` against the instance CDP_KAFKA_BOOTSTRAP /
CDP_MONGO_URI point at (a fresh database and fresh topics each run). Shop traffic as in
bench/pipeline.py goes through the identity graph's ConsumerLoop, then the same events,
resolved, through the profile projection's ConsumerLoop; pymongo command monitoring counts
every command either sends, by command and collection. With ``--earlier-events N`` each
profile the projection meets already holds N events, as a returning customer's would.
"""

from __future__ import annotations

import argparse
import base64
import os
import secrets
import threading
import time
import uuid
from collections import Counter
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta

from pymongo import monitoring

from bench.pipeline import shop_traffic, step
from services.common import metrics, store
from services.common.bus import ConsumerLoop, Outgoing, Producer, ensure_topics
from services.common.config import Settings
from services.common.envelope import Envelope, new_envelope
from services.identity import worker as identity_worker
from services.identity.graph import new_profile_id
from services.profile import projection
from services.profile import worker as profile_worker
from services.profile.profile_store import PROFILES, pack


class CommandCounter(monitoring.CommandListener):
    """Counts the commands a process sends while ``active``."""

    def __init__(self):
        self.counts: Counter[tuple[str, str]] = Counter()
        self.micros: Counter[tuple[str, str]] = Counter()
        self.active = False
        self._keys: dict[int, tuple[str, str]] = {}

    def started(self, event):
        if self.active and event.command_name not in ("hello", "isMaster", "ping"):
            target = event.command.get(event.command_name)
            key = (event.command_name, target if isinstance(target, str) else "")
            self.counts[key] += 1
            self._keys[event.request_id] = key

    def succeeded(self, event):
        key = self._keys.pop(event.request_id, None)
        if key is not None:
            self.micros[key] += event.duration_micros

    def failed(self, event):
        pass


def fresh_env(base: Mapping[str, str], database_prefix: str) -> dict[str, str]:
    """``base`` with a fresh database and the secrets a worker needs to start."""
    return {**base, "CDP_MONGO_DB": f"{database_prefix}_{uuid.uuid4().hex[:6]}",
            "CDP_PRIVACY_DIGEST_KEY": secrets.token_hex(16), "CDP_LOG_LEVEL": "WARNING",
            "CDP_MASTER_KEY": base64.b64encode(secrets.token_bytes(32)).decode()}


def envelopes(run: str, customers: int) -> tuple[list[Envelope], list[Envelope]]:
    """The shop traffic as the identity API would emit it, and the same events resolved."""
    web, resolved = [], []
    first_of: dict[str, str] = {}
    for message in shop_traffic(run, customers):
        cookie = message["anonymousId"]
        identifiers = {"anonymous_id": cookie}
        if message.get("userId"):
            identifiers["user_id"] = message["userId"]
        traits = message.get("traits") or {}
        if traits:
            identifiers |= {"email": traits["email"], "phone": traits["phone"]}
        payload: dict = {"call": message["type"]}
        for name in ("event", "name"):
            if message.get(name):
                payload[name] = message[name]
        if message.get("properties"):
            payload["properties"] = message["properties"]
        if traits:
            payload["traits"] = traits
        event_type = message.get("event") or message["type"].capitalize()
        envelope = new_envelope(event_type, "web", identifiers=identifiers, payload=payload,
                                message_id=message["messageId"], source="bench")
        web.append(envelope)
        # the graph resolves a customer's events to the profile their first event created
        first_of.setdefault(cookie, envelope.message_id)
        resolved.append(envelope.resolved_to(new_profile_id(first_of[cookie])))
    return web, resolved


def seed_profiles(db, profile_ids: list[str], earlier_events: int) -> None:
    """Store each of ``profile_ids`` as one profile that took ``earlier_events`` page views
    and orders over the past weeks (one profile built, then stored under every id)."""
    now = datetime.now(UTC)
    template = projection.new_profile("template")
    for n in range(earlier_events):
        kind = "Order Completed" if n % 10 == 0 else "Product Viewed"
        template = projection.apply_event(template, {
            "message_id": f"earlier-{n}", "type": kind, "channel": "web", "source": "bench",
            "occurred_at": now - timedelta(minutes=30 * (earlier_events - n)),
            "profile_id": "template", "identifiers": {},
            "payload": {"properties": {"sku": f"S-{n % 60}", "category": "kahvi",
                                       "price": 8.9, "total": 8.9, "order_id": f"e-{n}"}}},
            now)
    docs = [pack({**template, "_id": profile_id, "version": 1}) for profile_id in profile_ids]
    for start in range(0, len(docs), 500):
        db[PROFILES].insert_many(docs[start:start + 500])


def run_loop(settings: Settings, db, counter: CommandCounter, name: str,
             worker_loop: ConsumerLoop, messages: list[Envelope], key) -> dict:
    """Produce ``messages`` to a fresh topic, consume them with a ConsumerLoop running
    the worker loop's handlers until every one was handled; report the rate and the
    commands per event."""
    topic = f"bench.{name}.{uuid.uuid4().hex[:8]}"
    ensure_topics(settings, [topic])
    producer = Producer(settings, "bench")
    producer.send([Outgoing(topic, key(m), m) for m in messages])
    group = f"bench-{name}-{uuid.uuid4().hex[:6]}"
    ledger = store.ProcessedLedger(db, group)
    ledger.prepare()
    batching = ({"batch_handler": worker_loop.batch_handler}
                if getattr(worker_loop, "batch_handler", None) else {})
    loop = ConsumerLoop(settings=settings, service="bench", group=group, topics=[topic],
                        handler=worker_loop.handler, producer=producer, ledger=ledger,
                        **batching)
    counter.counts.clear()
    counter.micros.clear()
    counter.active = True
    started = time.perf_counter()
    thread = threading.Thread(target=loop.run, daemon=True)
    thread.start()
    consumed = metrics.MESSAGES_CONSUMED.labels("bench", topic)
    while consumed._value.get() < len(messages) and time.perf_counter() - started < 1800:
        time.sleep(0.05)
    elapsed = time.perf_counter() - started
    loop.stop()
    thread.join(60)
    counter.active = False
    total = sum(counter.counts.values())
    producer.close()
    return {"events": len(messages), "events_per_s": len(messages) / elapsed,
            "commands_per_event": total / len(messages),
            "store_ms_per_event": sum(counter.micros.values()) / 1000 / len(messages),
            "top": {f"{c}:{coll}": (round(n / len(messages), 2),
                                    round(counter.micros[(c, coll)] / 1000 / len(messages), 2))
                    for (c, coll), n in counter.counts.most_common(12)}}


def returning_customers(base_env: Mapping[str, str], customers: int = 1000,
                        earlier_events: int = 1000) -> dict:
    """For `make bench`: the profile projection alone (fresh database and topic) over
    ``customers`` shop customers whose profiles already hold ``earlier_events`` each."""
    counter = CommandCounter()
    monitoring.register(counter)  # before the client below: it applies to clients made after
    settings = Settings.from_env(fresh_env(base_env, "muisti_returning"))
    client = store.connect(settings)
    db = store.database(client, settings)
    _, resolved = envelopes(uuid.uuid4().hex[:8], customers)
    producer = Producer(settings, "bench")
    try:
        ensure_topics(settings)
        projection_loop = profile_worker.build_consumers(settings, producer, db)[0]
        seed_profiles(db, sorted({m.profile_id for m in resolved}), earlier_events)
        report = run_loop(settings, db, counter, "returning", projection_loop, resolved,
                          lambda m: m.profile_id)
    finally:
        producer.close()
        client.drop_database(settings.mongo_db)
        client.close()
    return {"returning_projection_events_per_s": report["events_per_s"],
            "returning_projection_store_ms_per_event": report["store_ms_per_event"],
            "returning_earlier_events": earlier_events}


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.worker_costs", description=__doc__)
    parser.add_argument("--customers", type=int, default=200)
    parser.add_argument("--earlier-events", type=int, default=0,
                        help="events each profile held before the run")
    args = parser.parse_args()
    counter = CommandCounter()
    monitoring.register(counter)
    settings = Settings.from_env(fresh_env(os.environ, "muisti_costs"))
    db = store.database(store.connect(settings), settings)
    run = uuid.uuid4().hex[:8]
    web, resolved = envelopes(run, args.customers)
    ensure_topics(settings)
    producer = Producer(settings, "bench")
    identity_loops = identity_worker.build_consumers(settings, producer, db)
    profile_loops = profile_worker.build_consumers(settings, producer, db)
    step(f"identity graph alone, {len(web)} events ({datetime.now(UTC):%H:%M:%S})")
    report = {"identity": run_loop(settings, db, counter, "identity",
                                   identity_loops[0], web,
                                   lambda m: "anonymous_id:" + m.identifiers["anonymous_id"])}
    print(report["identity"], flush=True)
    if args.earlier_events:
        step(f"profiles holding {args.earlier_events} earlier events each")
        seed_profiles(db, sorted({m.profile_id for m in resolved}), args.earlier_events)
    step("profile projection alone")
    report["profile"] = run_loop(settings, db, counter, "profile", profile_loops[0],
                                 resolved, lambda m: m.profile_id)
    print(report["profile"], flush=True)
    producer.close()


if __name__ == "__main__":
    main()
