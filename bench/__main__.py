"""`make bench`: Muisti's benchmarks, each next to the raw ceiling measured in the same run.

Runs on its own infrastructure instance ("bench": Kafka 39092, store 27038) with its own
service processes, so it neither disturbs nor is disturbed by `make run`. Writes
bench/results/latest.json and prints a table. Figures for parts of the platform that do not
exist yet are reported as null, never invented.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import sys
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import orjson
import requests
from kafka import KafkaConsumer, KafkaProducer
from pymongo import UpdateOne

from bench import matching_quality
from deploy.local.infra import Instance
from services.common import store, topics
from services.common.bus import ensure_topics
from services.common.config import Settings
from tests.support.processes import ServiceApi, ServiceWorker, wait_until

RESULTS = Path(__file__).parent / "results"


def step(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", flush=True)


def raw_kafka(settings: Settings, count: int = 20_000) -> dict:
    """kafka-python's own ceiling here: produce `count` ~300-byte messages (acks=all), then
    consume them all with a fresh consumer group."""
    topic = f"bench.raw.{uuid.uuid4().hex[:8]}"
    ensure_topics(settings, [topic])
    value = orjson.dumps({"message_id": "x" * 36, "payload": {"pad": "p" * 220}})
    producer = KafkaProducer(bootstrap_servers=settings.kafka_bootstrap, acks="all",
                             linger_ms=5)
    started = time.perf_counter()
    for i in range(count):
        producer.send(topic, key=str(i).encode(), value=value)
    producer.flush()
    produce_s = time.perf_counter() - started
    producer.close()
    consumer = KafkaConsumer(topic, bootstrap_servers=settings.kafka_bootstrap,
                             group_id=f"bench-{uuid.uuid4().hex[:6]}",
                             auto_offset_reset="earliest", enable_auto_commit=False,
                             max_poll_records=1000)
    seen = 0
    started = time.perf_counter()
    while seen < count:
        for records in consumer.poll(timeout_ms=1000).values():
            seen += len(records)
    consume_s = time.perf_counter() - started
    consumer.close()
    return {"raw_produce_per_s": count / produce_s, "raw_consume_per_s": count / consume_s}


def raw_upserts(settings: Settings, count: int = 5_000) -> dict:
    """pymongo's bulk upsert rate on the same store: the ceiling for any projection."""
    db = store.database(store.connect(settings), settings)
    collection = db[f"bench_raw_{uuid.uuid4().hex[:6]}"]
    started = time.perf_counter()
    for start in range(0, count, 500):
        collection.bulk_write([
            UpdateOne({"_id": f"id-{i}"}, {"$set": {"n": i, "at": datetime.now(UTC)}},
                      upsert=True) for i in range(start, start + 500)], ordered=False)
    return {"raw_upsert_per_s": count / (time.perf_counter() - started)}


def ingestion(env: dict, settings: Settings, keys: dict, count: int = 2_000) -> dict:
    """HTTP batches into the identity API → every event resolved by the identity worker."""
    api = ServiceApi("identity", env).start()
    worker = ServiceWorker("services.identity", env, name="identity-worker").start()
    db = store.database(store.connect(settings), settings)
    run = uuid.uuid4().hex[:8]
    try:
        time.sleep(3)  # let the worker join its group
        started = time.perf_counter()
        http_latencies = []
        for start in range(0, count, 100):
            batch = [{"type": "track", "userId": f"{run}-{i % 500}",
                      "anonymousId": f"{run}-c{i}", "event": "Product Viewed",
                      "messageId": f"{run}-{i}", "properties": {"sku": f"S-{i % 50}"}}
                     for i in range(start, min(start + 100, count))]
            sent = time.perf_counter()
            response = requests.post(f"{api.url}/v1/batch", json={"batch": batch},
                                     auth=(keys["collector"], ""), timeout=60)
            http_latencies.append(time.perf_counter() - sent)
            response.raise_for_status()
        accepted_s = time.perf_counter() - started
        step(f"  {count} events accepted over HTTP in {accepted_s:.1f}s; waiting for the graph")

        def resolved():
            done = db.processed_messages.count_documents(
                {"_id": {"$regex": f"^identity-graph:{run}-"}})
            return done >= count

        wait_until(resolved, 1800, interval=1, what="all events resolved")
        total_s = time.perf_counter() - started
        memory = {"identity_api": _peak_rss_mb(api.proc.pid),
                  "identity_worker": _peak_rss_mb(worker.proc.pid)}
    finally:
        api.stop()
        worker.stop()
    return {
        "ingest_events_per_s": count / total_s,
        "ingest_http_accept_per_s": count / accepted_s,
        "ingest_http_batch_p50_ms": statistics.median(http_latencies) * 1000,
        "peak_memory_mb": memory,
    }


def _peak_rss_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except FileNotFoundError:
        return None
    return None


def main() -> int:
    instance = Instance.named("bench")
    step("starting the bench infrastructure (Kafka, store)")
    instance.start()
    keys = {role: f"bench-{role}-{uuid.uuid4().hex}" for role in
            ("collector", "agent", "supervisor", "dpo", "admin")}
    env = {**os.environ, **instance.env(),
           "CDP_MONGO_DB": f"muisti_bench_{uuid.uuid4().hex[:6]}",
           "CDP_BOOTSTRAP_API_KEYS": ",".join(f"{r}:{k}" for r, k in keys.items()),
           "CDP_LOG_LEVEL": "WARNING"}
    settings = Settings.from_env(env)
    ensure_topics(settings, topics.ALL)

    results: dict = {"date": datetime.now(UTC).isoformat(timespec="seconds"),
                     "cores": os.cpu_count(), "machine": platform.machine(),
                     "python": platform.python_version()}
    step("raw Kafka produce → consume (kafka-python)")
    results.update(raw_kafka(settings))
    step("raw pymongo bulk upserts")
    results.update(raw_upserts(settings))
    step("end-to-end ingestion: HTTP batch → identity graph")
    results.update(ingestion(env, settings, keys))
    step("identity match quality on 10k generated Finnish records (no national id)")
    quality = matching_quality.run_one(10_000, matching_quality.DEFAULT_SEED, "without_id_number",
                                       0.99, 0.95)
    results["match_precision"] = quality["match"]["precision"]
    results["match_recall"] = quality["match"]["recall"]
    results["match_f1"] = quality["match"]["f1"]
    results["match_10k_seconds"] = quality["wall_seconds"]
    slower_raw = min(results["raw_consume_per_s"], results["raw_upsert_per_s"])
    results["ingest_ratio"] = results["ingest_events_per_s"] / slower_raw
    results["identity_worker_vs_raw_upsert"] = (results["ingest_events_per_s"]
                                                / results["raw_upsert_per_s"])
    for not_built in ("lookup_p50_ms", "lookup_p99_ms", "lookup_max_rate", "freshness_p95_ms",
                      "erasure_p95_ms", "export_ratio"):
        results[not_built] = None  # the services these measure do not exist yet

    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "latest.json").write_text(json.dumps(results, indent=2) + "\n")
    print_table(results)
    instance.stop()
    return 0


def print_table(results: dict) -> None:
    rows = [
        ("raw Kafka produce (msg/s)", results["raw_produce_per_s"]),
        ("raw Kafka consume (msg/s)", results["raw_consume_per_s"]),
        ("raw store bulk upsert (doc/s)", results["raw_upsert_per_s"]),
        ("ingestion HTTP accept (events/s)", results["ingest_http_accept_per_s"]),
        ("ingestion end to end (events/s)", results["ingest_events_per_s"]),
        ("ingest ratio (vs slower raw)", results["ingest_ratio"]),
        ("identity worker / raw upsert", results["identity_worker_vs_raw_upsert"]),
        ("HTTP batch of 100, p50 (ms)", results["ingest_http_batch_p50_ms"]),
        ("match precision, 10k, no national id", results["match_precision"]),
        ("match recall", results["match_recall"]),
        ("match F1", results["match_f1"]),
        ("matching 10k records (s)", results["match_10k_seconds"]),
    ]
    rows += [(f"peak RSS {name} (MiB)", mb) for name, mb in results["peak_memory_mb"].items()]
    rows += [(name, None) for name in ("lookup_p99_ms", "freshness_p95_ms", "erasure_p95_ms",
                                       "export_ratio")]
    print()
    for label, value in rows:
        shown = "not built yet" if value is None else f"{value:,.2f}"
        print(f"  {label:38} {shown:>14}")
    print(f"\n  written to {RESULTS / 'latest.json'}")


if __name__ == "__main__":
    sys.exit(main())
