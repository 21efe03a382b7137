"""`make bench`: Muisti's benchmarks, each next to the raw ceiling measured in the same run.

Runs on its own infrastructure instance ("bench": Kafka 39092, store 27038) with its own
service processes, so it neither disturbs nor is disturbed by `make run`. Writes
bench/results/latest.json and prints a table. Figures for parts of the platform that do not
exist yet are reported as null, never invented.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import platform
import secrets
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import orjson
from kafka import KafkaConsumer, KafkaProducer

from bench import (
    identity_scale,
    lookup_costs,
    matching_quality,
    pipeline,
    social_latency,
    worker_costs,
)
from bench.baselines import children, cpu_speed_ms, idle_cpu_ms_per_s, peak_rss_mb, raw_upserts
from bench.pipeline import step
from deploy.local.infra import Instance
from services.common import store, topics
from services.common.bus import ensure_topics
from services.common.config import Settings
from tests.support.platform_stack import PlatformStack

RESULTS = Path(__file__).parent / "results"
# ingestion during the second lookup measurement: what the pipeline sustains beside lookups
BUSY_EVENTS_PER_S = 20.0


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


class Stack(PlatformStack):
    """The platform as `make run` starts it, with each process's peak memory."""

    def __init__(self, env: dict):
        super().__init__(env)
        self.settings = Settings.from_env(env)

    def start(self) -> Stack:
        super().start()
        pipeline.wait_settled(self.settings,
                              ["identity-graph", "profile-projection", "export-feed"])
        return self

    def process_ids(self, instance: Instance) -> dict[str, list[int]]:
        """The platform's processes by kind: Kafka, the store, the services (with the API
        servers' worker processes)."""
        services = [process.proc.pid for process in self.processes]
        return {"kafka": [pid for pid in [instance.pid("kafka")] if pid],
                "store": [pid for pid in [instance.pid("ferretdb")] if pid],
                "services": services + [child for pid in services for child in children(pid)]}

    def peak_memory_mb(self) -> dict:
        return {f"{name}_{kind}": peak_rss_mb(process.proc.pid)
                for kind, processes in (("api", self.apis), ("worker", self.workers))
                for name, process in processes.items()}


def fresh_platform() -> tuple[Instance, dict[str, str], dict[str, str]]:
    """The "bench" infrastructure started from empty, the services' environment for it (a
    fresh database, secrets, an export directory) and an API key per role."""
    instance = Instance.named("bench")
    instance.stop()
    instance.wipe()
    instance.start()
    keys = {role: f"bench-{role}-{uuid.uuid4().hex}" for role in
            ("collector", "agent", "supervisor", "dpo", "admin")}
    env = {**os.environ, **instance.env(),
           "CDP_MONGO_DB": f"muisti_bench_{uuid.uuid4().hex[:6]}",
           "CDP_BOOTSTRAP_API_KEYS": ",".join(f"{r}:{k}" for r, k in keys.items()),
           "CDP_SERVICE_API_KEY": keys["dpo"],
           "CDP_PRIVACY_DIGEST_KEY": secrets.token_hex(16),
           "CDP_MASTER_KEY": base64.b64encode(secrets.token_bytes(32)).decode(),
           "CDP_LOG_LEVEL": "WARNING",
           "CDP_EXPORT_DIRECTORY_ROOT": tempfile.mkdtemp(prefix="muisti-bench-export-"),
           "CDP_SOCIAL_META_APP_SECRET": secrets.token_hex(16),
           "CDP_SOCIAL_X_CONSUMER_SECRET": secrets.token_hex(16)}
    return instance, env, keys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--profiles", type=int, default=100_000,
                        help="profiles in the store for the lookup benchmark (default 100k)")
    args = parser.parse_args(argv)
    step("starting the bench infrastructure (Kafka, store) from empty")
    instance, env, keys = fresh_platform()
    export_dir = env["CDP_EXPORT_DIRECTORY_ROOT"]
    settings = Settings.from_env(env)
    ensure_topics(settings, topics.ALL)
    db = store.database(store.connect(settings), settings)

    results: dict = {"date": datetime.now(UTC).isoformat(timespec="seconds"),
                     "cores": os.cpu_count(), "machine": platform.machine(),
                     "python": platform.python_version(), "cpu_speed_ms_start": cpu_speed_ms()}
    step("raw Kafka produce → consume (kafka-python)")
    results.update(raw_kafka(settings))
    step("raw pymongo bulk upserts")
    results.update(raw_upserts(settings))
    step("starting every service's API and worker")
    stack = Stack(env).start()
    try:
        step("end-to-end ingestion: HTTP batch → identity graph → stored profile")
        results.update(pipeline.ingestion(stack.url("identity"), settings, keys["collector"]))
        step("freshness: identify accepted → profile found by phone, under background load")
        results.update(pipeline.freshness(stack.url("identity"), stack.url("profile"), keys))
        step("social: signed webhooks → event read on cdp.events.social, 20/s for 30 s")
        results.update(social_latency.run(stack.url("social"), settings,
                                          env["CDP_SOCIAL_META_APP_SECRET"],
                                          env["CDP_SOCIAL_X_CONSUMER_SECRET"]))
        step(f"seeding {args.profiles:,} profiles through the profile worker")
        phones, profile_ids = pipeline.seed_profiles(settings, args.profiles)
        pipeline.wait_quiet(settings)
        step("the idle platform's CPU, 20 s")
        results["idle_cpu_ms_per_s"] = idle_cpu_ms_per_s(stack.process_ids(instance))
        step(f"lookups by phone with {args.profiles:,} profiles stored")
        results.update(pipeline.lookups(
            stack.url("profile"), keys["agent"], db, phones,
            busy=lambda: pipeline.background_traffic(stack.url("identity"), keys["collector"],
                                                      BUSY_EVENTS_PER_S)))
        results["lookup_busy_events_per_s"] = BUSY_EVENTS_PER_S
        results["lookup_profiles"] = args.profiles
        step("what one lookup costs: store commands, CPU in the API and the store")
        results.update(lookup_costs.measure(settings, stack.apis["profile"], keys["agent"],
                                            phones))
        step("export: every seeded profile, consented, hashed for Meta, to CSV files")
        pipeline.grant_partner_consent(settings, profile_ids)
        results.update(pipeline.export(stack.url("export"), keys["admin"], settings, db,
                                       args.profiles, export_dir))
        step("erasure: request filed → acknowledged by every service")
        results.update(pipeline.erasures(stack.url("consent"), keys["dpo"], profile_ids))
        results["peak_memory_mb"] = stack.peak_memory_mb()
    finally:
        stack.stop()
    step("identity service at scale: its worker vs raw upserts, 1M identifiers, 100k matched")
    results.update(identity_scale.run(env, bulk_upsert_per_s=results["raw_upsert_per_s"]))
    step("profile projection alone over returning customers (1,000 earlier events each)")
    results.update(worker_costs.returning_customers(env))
    step("identity match quality on 10k generated Finnish records (no national id)")
    quality = matching_quality.run_one(10_000, matching_quality.DEFAULT_SEED, "without_id_number",
                                       0.99, 0.95)
    results["match_precision"] = quality["match"]["precision"]
    results["match_recall"] = quality["match"]["recall"]
    results["match_f1"] = quality["match"]["f1"]
    results["match_10k_seconds"] = quality["wall_seconds"]
    results["cpu_speed_ms_end"] = cpu_speed_ms()
    slower_raw = min(results["raw_consume_per_s"], results["raw_upsert_per_s"])
    results["ingest_ratio"] = results["ingest_events_per_s"] / slower_raw

    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "latest.json").write_text(json.dumps(results, indent=2) + "\n")
    print_table(results)
    instance.stop()
    return 0


def print_table(results: dict) -> None:
    rows = [
        ("CPU speed: fixed loop at start (ms)", results["cpu_speed_ms_start"]),
        ("CPU speed: fixed loop at end (ms)", results["cpu_speed_ms_end"]),
        ("raw Kafka produce (msg/s)", results["raw_produce_per_s"]),
        ("raw Kafka consume (msg/s)", results["raw_consume_per_s"]),
        ("raw store bulk upsert (doc/s)", results["raw_upsert_per_s"]),
        ("ingestion HTTP accept (events/s)", results["ingest_http_accept_per_s"]),
        ("ingestion end to end (events/s)", results["ingest_events_per_s"]),
        ("ingest ratio (vs slower raw)", results["ingest_ratio"]),
        ("HTTP batch of 100, p50 (ms)", results["ingest_http_batch_p50_ms"]),
        ("freshness p50 (ms)", results["freshness_p50_ms"]),
        ("freshness p95 (ms)", results["freshness_p95_ms"]),
        (f"lookup p50 at {results['lookup_rate']:.0f}/s (ms)", results["lookup_p50_ms"]),
        (f"lookup p99 at {results['lookup_rate']:.0f}/s (ms)", results["lookup_p99_ms"]),
        ("lookup errors", results["lookup_errors"]),
        (f"lookup p50, {results['lookup_busy_events_per_s']:.0f} events/s ingested (ms)",
         results["lookup_busy_p50_ms"]),
        (f"lookup p99, {results['lookup_busy_events_per_s']:.0f} events/s ingested (ms)",
         results["lookup_busy_p99_ms"]),
        ("raw find_one p99 (ms)", results["raw_lookup_p99_ms"]),
        ("lookup p99 / raw p99", results["lookup_p99_ratio"]),
        ("lookup max rate (req/s)", results["lookup_max_rate"]),
        ("raw find_one max rate (req/s)", results["raw_lookup_max_rate"]),
        ("lookup max rate / raw", results["lookup_max_rate_ratio"]),
        ("lookup: bench client CPU (ms/req)", results["lookup_client_cpu_ms"]),
        ("lookup: load average at the time", results["lookup_load_average"]),
        ("lookup: store commands, 1 caller", results["lookup_commands"]),
        ("lookup: store commands, 8 callers", results["lookup_commands_8_callers"]),
        ("lookup: API CPU (ms/lookup)", results["lookup_api_cpu_ms"]),
        ("lookup: store CPU (ms/lookup)", results["lookup_store_cpu_ms"]),
        ("profile projection, returning (ev/s)", results["returning_projection_events_per_s"]),
        ("  its store time per event (ms)", results["returning_projection_store_ms_per_event"]),
        ("match precision, 10k, no national id", results["match_precision"]),
        ("match recall", results["match_recall"]),
        ("match F1", results["match_f1"]),
        ("matching 10k records (s)", results["match_10k_seconds"]),
        ("identity worker alone (events/s)", results["identity_worker_events_per_s"]),
        ("raw single upsert by _id (doc/s)", results["raw_single_upsert_per_s"]),
        ("identity worker / raw single upserts", results["identity_worker_ratio"]),
        ("identity store round trips per event",
         results["identity_worker_round_trips_per_event"]),
        (f"loading {results['identity_graph_identifiers']:,} identifiers (s)",
         results["identity_graph_load_seconds"]),
        ("peak RSS identity worker there (MiB)", results["identity_worker_peak_rss_mb"]),
        ("identity worker there (events/s)",
         results["identity_worker_large_graph_events_per_s"]),
        ("peak RSS identity worker 10k ids (MiB)",
         results["identity_worker_small_graph_peak_rss_mb"]),
        ("match batch CLI, 100k records (s)", results["match_100k_seconds"]),
        ("match batch CLI, 100k (records/s)", results["match_100k_records_per_s"]),
        ("match CPU per record, 100k / 10k", results["match_growth_per_record"]),
        ("match F1, 100k, no national id", results["match_100k_f1"]),
    ]
    rows += [(f"idle platform CPU, {name} (ms/s)", used)
             for name, used in results["idle_cpu_ms_per_s"].items()]
    rows += [(f"peak RSS {name} (MiB)", mb) for name, mb in results["peak_memory_mb"].items()]
    rows += [("export (profiles/s)", results["export_per_s"]),
             ("raw read + hash + CSV (rows/s)", results["raw_export_per_s"]),
             ("export ratio", results["export_ratio"]),
             ("erasure p50 (ms)", results["erasure_p50_ms"]),
             ("erasure p95 (ms)", results["erasure_p95_ms"]),
             ("social webhook answer p95 (ms)", results["social_webhook_answer_p95_ms"]),
             ("social webhook → Kafka p50 (ms)", results["social_webhook_to_kafka_p50_ms"]),
             ("social webhook → Kafka p95 (ms)", results["social_webhook_to_kafka_p95_ms"]),
             ("social webhook → Kafka p99 (ms)", results["social_webhook_to_kafka_p99_ms"]),
             ("raw Kafka round trip p95 (ms)", results["raw_kafka_roundtrip_p95_ms"]),
             ("social → Kafka p95 / raw p95", results["social_webhook_to_kafka_p95_ratio"])]
    print()
    for label, value in rows:
        shown = "not built yet" if value is None else f"{value:,.2f}"
        print(f"  {label:38} {shown:>14}")
    print(f"\n  written to {RESULTS / 'latest.json'}")


if __name__ == "__main__":
    sys.exit(main())
