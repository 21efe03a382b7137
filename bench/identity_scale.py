"""The identity service at scale: the graph worker next to raw store upserts, one worker
process's memory with a million identifiers in the graph, and the match batch at 100k records.

`python -m bench.identity_scale [--identifiers N] [--events N] [--customers N] [--parts ...]`
against the instance CDP_KAFKA_BOOTSTRAP / CDP_MONGO_URI point at (fresh databases and
consumer groups each run; the large databases are dropped afterwards); `python -m bench`
calls :func:`run`.

* Worker vs raw store: the identity graph's ConsumerLoop alone, in this process, on shop
  traffic (bench/worker_costs.py), with pymongo command monitoring counting its round trips;
  next to single-document upserts by _id, one per round trip (what the graph does: mean of
  one run just before and one just after the worker) and bulk upserts, in the same run.
* One worker with N identifiers (default 1M = 250k customers × user_id, email, phone,
  anonymous_id): a fresh database loaded in the graph's own document shape
  (services/identity/graph_store.py) with inserts of at most 1000 documents, then
  `python -m services.identity worker` on it (its own consumer-group prefix, started at the
  end of its input topics), a warm-up, then ``--events`` events on cdp.events.web: half
  returning customers, a fifth known customers on a new device, a tenth identifies with
  traits, a fifth new visitors. Its peak RSS (VmHWM) and events/s; the same at 10k
  identifiers, to show what the graph's size adds.
* Match batch: `python -m services.identity.matching INPUT.jsonl > PAIRS.jsonl` as a child
  process on 10k and 100k generated records without national ids (bench/matching_quality.py's
  data), its wall and CPU time (interpreter start, reading, matching, writing), peak RSS and
  the precision/recall/F1 of its "match" pairs. Its cost follows the candidate pairs it
  scores, which grow faster than the records until blocks reach their cap: the growth of CPU
  time per record from 10k to 100k is given, and the CPU time split into a cost per record
  and a cost per candidate pair (fitted to the two sizes).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path

from kafka import KafkaConsumer, TopicPartition
from kafka.structs import OffsetAndMetadata
from pymongo import monitoring
from pymongo.database import Database

from bench import matching_quality
from bench.baselines import peak_rss_mb, raw_single_upserts, raw_upserts
from bench.pipeline import group_lag, step
from bench.worker_costs import CommandCounter, envelopes, fresh_env, run_loop
from services.common import store, topics
from services.common.bus import Outgoing, Producer, ensure_topics
from services.common.config import Settings
from services.common.envelope import Envelope, new_envelope
from services.identity import matching
from services.identity import worker as identity_worker
from services.identity.graph import Identifier, new_profile_id
from services.identity.graph_store import LINKS, PROFILES
from services.identity.matching_data import evaluate
from tests.support.processes import ServiceWorker, wait_until

REPO = Path(__file__).resolve().parents[1]
SMALL_GRAPH = 10_000
# inserts, not upserts, and at most 1000 documents a command: FerretDB 1.x hangs on update
# commands of a hundred or more matched statements (services/common/store.py bulk_write)
LINKS_PER_INSERT = 1000


# --- the worker next to raw upserts ----------------------------------------------------------

def worker_vs_raw(env: Mapping[str, str], customers: int,
                  bulk_upsert_per_s: float | None = None) -> dict:
    """The identity graph's ConsumerLoop alone on ``customers`` × 5 shop events, and raw
    single and bulk upserts on the same store. Measures the bulk rate unless given."""
    counter = CommandCounter()
    monitoring.register(counter)  # before the client: listeners attach at its creation
    settings = Settings.from_env(fresh_env(env, "muisti_idworker"))
    db = store.database(store.connect(settings), settings)
    ensure_topics(settings)
    results = {}
    if bulk_upsert_per_s is None:
        results.update(raw_upserts(settings))
        bulk_upsert_per_s = results["raw_upsert_per_s"]
    web, _ = envelopes(uuid.uuid4().hex[:8], customers)
    single_before = raw_single_upserts(db)
    producer = Producer(settings, "bench")
    try:
        loop = identity_worker.build_consumers(settings, producer, db)[0]
        measured = run_loop(settings, db, counter, "identity", loop, web,
                            lambda m: "anonymous_id:" + m.identifiers["anonymous_id"])
    finally:
        producer.close()
    single = (single_before + raw_single_upserts(db)) / 2
    rate = measured["events_per_s"]
    return results | {
        "identity_worker_events": measured["events"],
        "identity_worker_events_per_s": rate,
        "identity_worker_round_trips_per_event": measured["commands_per_event"],
        "identity_worker_store_ms_per_event": measured["store_ms_per_event"],
        "identity_worker_commands": measured["top"],
        "raw_single_upsert_per_s": single,
        "identity_worker_ratio": rate / single,
        "identity_worker_bulk_ratio": rate / bulk_upsert_per_s,
    }


# --- one worker process with a large graph ---------------------------------------------------

SEEDED_TYPES = ("user_id", "email", "phone", "anonymous_id")


def customer_identifiers(run: str, customer: int) -> dict[str, str]:
    """A seeded customer's identifiers, already in their normal forms (phones are Finnish
    mobiles, so at most 10M customers a run)."""
    return {"user_id": f"{run}-u{customer}", "email": f"{run}-u{customer}@example.fi",
            "phone": f"+35840{customer:07d}", "anonymous_id": f"{run}-a{customer}"}


def graph_documents(run: str, customer: int, at: datetime) -> tuple[dict, list[dict]]:
    """One seeded customer as the graph stores it: its identity_profiles document and one
    identity_links document per identifier."""
    cause = f"{run}-seed-{customer}"
    profile_id = new_profile_id(cause)
    identifiers = customer_identifiers(run, customer)
    links = [{"_id": Identifier(type_, value).key, "type": type_, "value": value,
              "profile_id": profile_id, "verified": True, "source_message_id": cause,
              "linked_at": at} for type_, value in identifiers.items()]
    profile = {"_id": profile_id, "created_at": at, "merged_into": None,
               "identifiers": {type_: [value] for type_, value in identifiers.items()}}
    return profile, links


def load_graph(db: Database, run: str, customers: int) -> float:
    """Insert ``customers`` seeded customers; returns the seconds it took."""
    at = datetime.now(UTC)
    per_insert = LINKS_PER_INSERT // len(SEEDED_TYPES)
    started = time.perf_counter()
    for start in range(0, customers, per_insert):
        profiles, links = [], []
        for customer in range(start, min(customers, start + per_insert)):
            profile, customer_links = graph_documents(run, customer, at)
            profiles.append(profile)
            links.extend(customer_links)
        db[LINKS].insert_many(links, ordered=False)
        db[PROFILES].insert_many(profiles, ordered=False)
        if (start + per_insert) % 50_000 == 0:
            step(f"  {start + per_insert:,} customers loaded "
                 f"({time.perf_counter() - started:.0f} s)")
    return time.perf_counter() - started


def graph_events(run: str, customers: int, count: int, tag: str, seed: int) -> list[Envelope]:
    """``count`` web events on a graph of ``customers`` seeded customers: half returning
    customers (nothing to write), a fifth known customers on a new device (a link added), a
    tenth identifies with traits, a fifth new visitors (a profile created)."""
    rng = random.Random(seed)
    events = []
    for n in range(count):
        known = customer_identifiers(run, rng.randrange(customers))
        new_cookie = f"{run}-{tag}-a{n}"
        roll = rng.random()
        payload: dict = {"call": "track", "event": "Product Viewed"}
        if roll < 0.5:
            identifiers = {"anonymous_id": known["anonymous_id"], "user_id": known["user_id"]}
        elif roll < 0.7:
            identifiers = {"anonymous_id": new_cookie, "user_id": known["user_id"]}
        elif roll < 0.8:
            identifiers = known
            payload = {"call": "identify", "traits": {
                "email": known["email"], "phone": known["phone"], "firstName": "Maija",
                "lastName": f"Asiakas{n}"}}
        else:
            identifiers = {"anonymous_id": new_cookie}
            payload = {"call": "page", "name": "Home"}
        event_type = payload.get("event") or payload["call"].capitalize()
        events.append(new_envelope(event_type, "web", identifiers=identifiers,
                                   payload=payload, source="bench"))
    return events


def start_at_end(settings: Settings, group: str, topic_names) -> None:
    """Commit the group's offsets at the end of its topics, so a new consumer group does not
    replay what earlier runs left on the instance."""
    consumer = KafkaConsumer(bootstrap_servers=settings.kafka_bootstrap.split(","),
                             group_id=settings.consumer_group_prefix + group,
                             enable_auto_commit=False)
    try:
        partitions = [TopicPartition(topic, p) for topic in topic_names
                      for p in consumer.partitions_for_topic(topic) or ()]
        consumer.commit({tp: OffsetAndMetadata(offset, "", -1)
                         for tp, offset in consumer.end_offsets(partitions).items()})
    finally:
        consumer.close(autocommit=False)


def push_and_wait(settings: Settings, producer: Producer, worker: ServiceWorker,
                  events: list[Envelope]) -> float:
    """Send ``events`` to cdp.events.web and wait until the worker committed them all;
    returns the seconds from the first send."""
    started = time.perf_counter()
    producer.send([Outgoing(topics.EVENTS_WEB, "anonymous_id:" + e.identifiers["anonymous_id"],
                            e) for e in events])

    def drained() -> bool:
        if not worker.alive():
            raise AssertionError(f"the identity worker exited:\n{worker.tail()}")
        return group_lag(settings, identity_worker.GROUP, topics.EVENTS_WEB) == 0

    wait_until(drained, timeout=1800, interval=0.5, what="the identity worker to drain")
    return time.perf_counter() - started


def worker_with_graph(env: Mapping[str, str], identifiers: int, events: int) -> dict:
    """Load ``identifiers`` into a fresh graph, run a real identity worker process on it,
    push ``events`` through it; its peak RSS and rate. Drops the database afterwards."""
    run = uuid.uuid4().hex[:8]
    env = {**fresh_env(env, "muisti_idscale"),
           "CDP_CONSUMER_GROUP_PREFIX": f"bench-{run}-", "CDP_WORKER_METRICS_PORT": "0"}
    settings = Settings.from_env(env)
    client = store.connect(settings)
    db = store.database(client, settings)
    customers = identifiers // len(SEEDED_TYPES)
    step(f"loading {customers * len(SEEDED_TYPES):,} identifiers ({customers:,} customers)")
    load_seconds = load_graph(db, run, customers)
    ensure_topics(settings)
    start_at_end(settings, identity_worker.GROUP, identity_worker.INPUT_TOPICS)
    start_at_end(settings, identity_worker.PRIVACY_GROUP, [topics.PRIVACY_REQUESTS])
    worker = ServiceWorker("services.identity", env, name="identity-worker-scale").start()
    producer = Producer(settings, "bench")
    try:
        step("identity worker warming up")
        push_and_wait(settings, producer, worker, graph_events(run, customers, 200, "warm", 1))
        step(f"{events:,} events through the identity worker")
        seconds = push_and_wait(settings, producer, worker,
                                graph_events(run, customers, events, "timed", 2))
        peak = peak_rss_mb(worker.proc.pid)
    finally:
        producer.close()
        worker.stop()
        client.drop_database(db.name)
    documents = customers * (len(SEEDED_TYPES) + 1)
    return {"identifiers": customers * len(SEEDED_TYPES), "load_seconds": load_seconds,
            "load_documents_per_s": documents / load_seconds, "events": events,
            "events_per_s": events / seconds, "peak_rss_mb": peak}


def worker_memory(env: Mapping[str, str], identifiers: int, events: int) -> dict:
    """The worker with a small graph, then with ``identifiers`` in it."""
    small = worker_with_graph(env, SMALL_GRAPH, events)
    large = worker_with_graph(env, identifiers, events)
    return {
        "identity_graph_identifiers": large["identifiers"],
        "identity_graph_load_seconds": large["load_seconds"],
        "identity_graph_load_documents_per_s": large["load_documents_per_s"],
        "identity_worker_peak_rss_mb": large["peak_rss_mb"],
        "identity_worker_large_graph_events_per_s": large["events_per_s"],
        "identity_worker_large_graph_events": large["events"],
        "identity_worker_small_graph_identifiers": small["identifiers"],
        "identity_worker_small_graph_peak_rss_mb": small["peak_rss_mb"],
        "identity_worker_small_graph_events_per_s": small["events_per_s"],
    }


# --- the match batch -------------------------------------------------------------------------

def match_cli(records_path: Path, pairs_path: Path) -> dict:
    """`python -m services.identity.matching INPUT.jsonl > PAIRS.jsonl` as a child process:
    its wall and CPU seconds and its own peak RSS in MiB."""
    with pairs_path.open("wb") as out:
        started = time.perf_counter()
        child = subprocess.Popen([sys.executable, "-m", "services.identity.matching",
                                  str(records_path)], stdout=out, cwd=REPO)
        _, status, usage = os.wait4(child.pid, 0)
        seconds = time.perf_counter() - started
    child.returncode = os.waitstatus_to_exitcode(status)
    if child.returncode != 0:
        raise RuntimeError(f"the match batch exited with {child.returncode}")
    return {"seconds": seconds, "cpu_seconds": usage.ru_utime + usage.ru_stime,
            "peak_rss_mb": usage.ru_maxrss / 1024}


def match_batch(size: int, workdir: Path) -> dict:
    """The match batch on ``size`` generated records without national ids."""
    data = matching_quality.dataset_for(size, matching_quality.DEFAULT_SEED, None)
    records_path, pairs_path = workdir / f"records-{size}.jsonl", workdir / f"pairs-{size}.jsonl"
    with records_path.open("w", encoding="utf-8") as handle:
        for record in data.records:
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")
    measured = match_cli(records_path, pairs_path)
    with pairs_path.open(encoding="utf-8") as handle:
        pairs = [json.loads(line) for line in handle]
    quality = evaluate([(p["a"], p["b"]) for p in pairs if p["decision"] == "match"], data)
    candidates = matching.candidate_pairs([matching.normalise_record(r) for r in data.records])
    return measured | {"precision": quality.precision, "recall": quality.recall,
                       "f1": quality.f1, "candidate_pairs": len(candidates)}


def cost_per_record_and_pair(small: tuple[float, int, int],
                             large: tuple[float, int, int]) -> tuple[float, float]:
    """Split (cost, records, candidate pairs) measured at two sizes into a cost per record
    and a cost per candidate pair: cost = records × a + pairs × b, solved for a and b."""
    (cost_1, records_1, pairs_1), (cost_2, records_2, pairs_2) = small, large
    determinant = records_1 * pairs_2 - records_2 * pairs_1
    if determinant == 0:
        raise ValueError("the two sizes have the same candidate pairs per record")
    return ((cost_1 * pairs_2 - cost_2 * pairs_1) / determinant,
            (records_1 * cost_2 - records_2 * cost_1) / determinant)


def match_scaling() -> dict:
    """The match batch at 10k and 100k records. Growth is judged on CPU seconds less the
    interpreter's start (an empty input): wall time on a shared machine says more about the
    neighbours."""
    with tempfile.TemporaryDirectory(prefix="muisti-bench-match-") as workdir:
        empty = Path(workdir) / "empty.jsonl"
        empty.touch()
        startup = match_cli(empty, Path(workdir) / "pairs-0.jsonl")["cpu_seconds"]
        step("match batch CLI on 10k records")
        small = match_batch(10_000, Path(workdir))
        step("match batch CLI on 100k records")
        large = match_batch(100_000, Path(workdir))
    small_cpu, large_cpu = small["cpu_seconds"] - startup, large["cpu_seconds"] - startup
    per_record, per_pair = cost_per_record_and_pair(
        (small_cpu, 10_000, small["candidate_pairs"]),
        (large_cpu, 100_000, large["candidate_pairs"]))
    return {
        "match_cli_startup_cpu_seconds": startup,
        "match_10k_cli_seconds": small["seconds"],
        "match_10k_cpu_seconds": small["cpu_seconds"],
        "match_100k_seconds": large["seconds"],
        "match_100k_cpu_seconds": large["cpu_seconds"],
        "match_100k_records_per_s": 100_000 / large["seconds"],
        # CPU per record at 100k over CPU per record at 10k: 1.0 is linear growth
        "match_growth_per_record": (large_cpu / 100_000) / (small_cpu / 10_000),
        # blocks fill up as the population grows: more candidate pairs to score per record
        "match_candidate_pairs_per_record_10k": small["candidate_pairs"] / 10_000,
        "match_candidate_pairs_per_record_100k": large["candidate_pairs"] / 100_000,
        "match_cpu_us_per_record": per_record * 1e6,
        "match_cpu_us_per_candidate_pair": per_pair * 1e6,
        "match_100k_peak_rss_mb": large["peak_rss_mb"],
        "match_100k_precision": large["precision"],
        "match_100k_recall": large["recall"],
        "match_100k_f1": large["f1"],
    }


PARTS = ("worker", "memory", "match")


def run(env: Mapping[str, str], *, identifiers: int = 1_000_000, events: int = 5_000,
        customers: int = 400, bulk_upsert_per_s: float | None = None,
        parts: tuple[str, ...] = PARTS) -> dict:
    """The measurements in ``parts``; ``env`` holds the instance's CDP_KAFKA_BOOTSTRAP and
    CDP_MONGO_URI."""
    results: dict = {}
    if "worker" in parts:
        step(f"identity worker alone on {customers * 5:,} shop events vs raw upserts")
        results.update(worker_vs_raw(env, customers, bulk_upsert_per_s))
    if "memory" in parts:
        results.update(worker_memory(env, identifiers, events))
    if "match" in parts:
        results.update(match_scaling())
    return results


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.identity_scale", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--identifiers", type=int, default=1_000_000,
                        help="identifiers in the large graph (default 1M)")
    parser.add_argument("--events", type=int, default=5_000,
                        help="events through the worker process at each graph size")
    parser.add_argument("--customers", type=int, default=400,
                        help="shop customers (5 events each) for the in-process worker")
    parser.add_argument("--parts", nargs="+", choices=PARTS, default=PARTS,
                        help="what to measure (default: all)")
    args = parser.parse_args()
    results = run(os.environ, identifiers=args.identifiers, events=args.events,
                  customers=args.customers, parts=tuple(args.parts))
    print(json.dumps(results, indent=2), flush=True)


if __name__ == "__main__":
    main()
