"""What one profile lookup by phone costs: store round trips, and CPU in the API and the store.

`python -m bench.lookup_costs [--profiles N] [--requests N] [--database DB]` against the
instance CDP_KAFKA_BOOTSTRAP / CDP_MONGO_URI point at (a fresh database and consumer groups
each run; the profile worker replays cdp.events.resolved from the start, so a fresh instance
is quickest). Profiles are seeded through the profile worker (bench/pipeline.py
seed_profiles). `make bench` reports ``measure``'s figures after the lookup benchmark.

* Round trips: the profile app built in this process (same factory, same settings) answers
  lookups through its WSGI interface, from one caller and from 8 at once (their access-log
  writes are shared), while pymongo command monitoring counts every command by command and
  collection.
* CPU: the profile API as `make run` starts it (granian, CDP_HTTP_* settings) answers
  ``--requests`` lookups from 1 and from 8 callers; the utime+stime deltas of its worker
  processes and of the store process (/proc/<pid>/stat), divided by the requests, say
  whether a lookup is Python-bound or store-bound. The load generator's own CPU is reported
  too: it shares the same cores.
* Where the API's Python time goes: cProfile of in-process lookups, by area.
"""

from __future__ import annotations

import argparse
import base64
import cProfile
import http.client
import os
import pstats
import secrets
import time
import urllib.parse
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from kafka.errors import KafkaError
from pymongo import monitoring

from bench.baselines import children, cpu_seconds
from bench.pipeline import group_lag, seed_profiles, step
from bench.worker_costs import CommandCounter
from services.common import store, topics
from services.common.bus import ensure_topics
from services.common.config import Settings
from services.profile.api import create_app
from tests.support.processes import ServiceApi, ServiceWorker, wait_until

# calls that wait rather than compute (the store's answer, another thread's lock)
WAITS = ("recv_into", "sendall", "acquire", "wait")
# cProfile areas, by the file a function lives in (first match wins)
AREAS = (("auth", ("services/common/auth.py",)),
         ("profile view + privacy", ("services/profile/",)),
         ("muisti web hooks", ("services/common/web.py", "services/common/logs.py")),
         ("metrics", ("prometheus_client",)),
         ("marshmallow / flask-smorest / webargs", ("marshmallow", "flask_smorest", "webargs",
                                                   "apispec")),
         ("JSON out", ("json/", "orjson", "flask/json")),
         ("pymongo / bson", ("pymongo", "bson")),
         ("flask / werkzeug", ("flask/", "werkzeug")))


def store_pid(mongo_uri: str) -> int | None:
    """The pid of the FerretDB serving ``mongo_uri`` on this machine (None: not found)."""
    port = urllib.parse.urlsplit(mongo_uri).port or 27017
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            args = cmdline.read_bytes().split(b"\0")
        except OSError:
            continue
        if args and args[0].endswith(b"ferretdb") and any(
                a.endswith(f":{port}".encode()) for a in args):
            return int(cmdline.parent.name)
    return None


def round_trips(app, counter: CommandCounter, agent_key: str, phones: list[str],
                callers: int, count: int = 400) -> dict:
    """Commands per lookup by command:collection, through the app in this process, with
    ``callers`` threads calling at once (concurrent reads share access-log writes)."""
    headers = {"Authorization": f"Bearer {agent_key}", "X-Purpose": "customer_service"}

    def call(share: list[str]) -> None:
        client = app.test_client()
        for phone in share:
            assert client.get("/v1/profiles", headers=headers, query_string={
                "type": "phone", "value": phone}).status_code == 200

    call(phones[:5])  # warm up: auth cache, connection pool, first-use imports
    counter.counts.clear()
    counter.micros.clear()
    counter.active = True
    with ThreadPoolExecutor(callers) as pool:
        list(pool.map(call, [phones[i:count:callers] for i in range(callers)]))
    counter.active = False
    total = sum(counter.counts.values())
    return {"callers": callers, "commands_per_lookup": round(total / count, 2),
            "by_command": {f"{c}:{coll}": round(n / count, 2)
                           for (c, coll), n in counter.counts.most_common()}}


def python_profile(app, agent_key: str, phones: list[str], count: int = 300) -> dict:
    """Share of the in-process lookup time per area, waits for the store apart (cProfile's
    own overhead included: the shares count, not the milliseconds)."""
    client = app.test_client()
    headers = {"Authorization": f"Bearer {agent_key}", "X-Purpose": "customer_service"}
    profiler = cProfile.Profile()
    started = time.perf_counter()
    profiler.enable()
    for phone in phones[:count]:
        client.get("/v1/profiles", headers=headers, query_string={"type": "phone",
                                                                  "value": phone})
    profiler.disable()
    elapsed = time.perf_counter() - started
    stats = pstats.Stats(profiler).stats
    own: dict[str, float] = {}
    for (filename, _line, function), (_cc, _nc, tottime, _ct, _callers) in stats.items():
        if filename == "~" and any(wait in function for wait in WAITS):
            area = "waiting (store answers, locks)"
        else:
            area = next((name for name, parts in AREAS if any(p in filename for p in parts)),
                        "other")
        own[area] = own.get(area, 0.0) + tottime
    total = sum(own.values())
    return {"profiled_ms_per_lookup": elapsed * 1000 / count,
            "share": {area: round(t / total, 3)
                      for area, t in sorted(own.items(), key=lambda i: -i[1])}}


def process_cpu(api: ServiceApi, store_process: int | None, agent_key: str,
                phones: list[str], count: int, callers: int) -> dict:
    """CPU ms per lookup in the API worker process(es), the store and this load generator, with
    ``callers`` threads calling back to back (one: no queueing anywhere)."""
    workers = children(api.proc.pid)
    ferret = store_process
    headers = {"Authorization": f"Bearer {agent_key}", "X-Purpose": "customer_service"}
    url = urllib.parse.urlsplit(api.url)

    def call(share: list[str]) -> int:
        connection = http.client.HTTPConnection(url.hostname, url.port, timeout=10)
        failed = 0
        for phone in share:
            query = urllib.parse.urlencode({"type": "phone", "value": phone})
            connection.request("GET", f"/v1/profiles?{query}", headers=headers)
            response = connection.getresponse()
            response.read()
            failed += response.status != 200
        connection.close()
        return failed

    call(phones[:20])
    shares = [[phones[i % len(phones)] for i in range(c, count, callers)]
              for c in range(callers)]
    before = ([cpu_seconds(p) for p in workers], cpu_seconds(ferret) if ferret else 0.0,
              cpu_seconds(os.getpid()))
    started = time.perf_counter()
    with ThreadPoolExecutor(callers) as pool:
        failed = sum(pool.map(call, shares))
    elapsed = time.perf_counter() - started
    api_cpu = sum(cpu_seconds(p) for p in workers) - sum(before[0])
    store_cpu = (cpu_seconds(ferret) - before[1]) if ferret else None
    own_cpu = cpu_seconds(os.getpid()) - before[2]
    return {"callers": callers, "requests": count, "failed": failed,
            "api_processes": len(workers), "lookups_per_s": round(count / elapsed, 1),
            "api_cpu_ms": round(api_cpu * 1000 / count, 2),
            "store_cpu_ms": round(store_cpu * 1000 / count, 2) if ferret else None,
            "client_cpu_ms": round(own_cpu * 1000 / count, 2),
            "load_average": os.getloadavg()[0]}


def measure(settings: Settings, api: ServiceApi, agent_key: str, phones: list[str],
            requests: int = 1000) -> dict:
    """The figures for the bench report: commands per lookup one at a time and with 8
    callers, CPU ms per lookup in the API, the store and the load generator (8 callers)."""
    counter = CommandCounter()
    monitoring.register(counter)
    app = create_app(settings)
    alone = round_trips(app, counter, agent_key, phones, 1)
    together = round_trips(app, counter, agent_key, phones, 8)
    cpu = process_cpu(api, store_pid(settings.mongo_uri), agent_key, phones, requests, 8)
    return {"lookup_commands": alone["commands_per_lookup"],
            "lookup_commands_8_callers": together["commands_per_lookup"],
            "lookup_api_cpu_ms": cpu["api_cpu_ms"], "lookup_store_cpu_ms": cpu["store_cpu_ms"],
            "lookup_bench_client_cpu_ms": cpu["client_cpu_ms"]}


def _group_known(settings: Settings) -> bool:
    try:
        group_lag(settings, "profile-projection", topics.EVENTS_RESOLVED)
        return True
    except KafkaError:
        return False


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.lookup_costs", description=__doc__)
    parser.add_argument("--profiles", type=int, default=3000)
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--database", help="a database seed_profiles filled with --profiles "
                        "profiles: measure there instead of seeding a new one (kept)")
    args = parser.parse_args()
    agent_key = f"bench-agent-{uuid.uuid4().hex}"
    env = {"CDP_PRIVACY_DIGEST_KEY": secrets.token_hex(16),
           "CDP_MASTER_KEY": base64.b64encode(secrets.token_bytes(32)).decode(),
           **os.environ, "CDP_MONGO_DB": args.database or f"muisti_lookup_{uuid.uuid4().hex[:6]}",
           "CDP_CONSUMER_GROUP_PREFIX": f"bench-{uuid.uuid4().hex[:6]}-",
           "CDP_BOOTSTRAP_API_KEYS": f"agent:{agent_key}", "CDP_LOG_LEVEL": "WARNING"}
    settings = Settings.from_env(env)
    phones = [f"+35850{i:07d}" for i in range(args.profiles)]  # as seed_profiles numbers them
    if not args.database:
        ensure_topics(settings)
        worker = ServiceWorker("services.profile", env, name="profile-worker").start()
        try:
            wait_until(lambda: _group_known(settings), 120, interval=1,
                       what="the profile worker's consumer group")
            step(f"seeding {args.profiles:,} profiles through the profile worker")
            phones, _ = seed_profiles(settings, args.profiles)
        finally:
            worker.stop()
    counter = CommandCounter()
    monitoring.register(counter)
    app = create_app(settings)
    keys = app.extensions["muisti"].api_keys
    wait_until(lambda: keys.authenticate(agent_key), 30, what="the bootstrap agent key")
    step("round trips per lookup (the app in this process, command monitoring)")
    for callers in (1, 8):
        print(round_trips(app, counter, agent_key, phones, callers), flush=True)
    step("where the Python time goes (cProfile, in process)")
    print(python_profile(app, agent_key, phones), flush=True)
    step(f"CPU per lookup: {args.requests} lookups through the API process, 1 and 8 callers")
    api = ServiceApi("profile", env).start()
    try:
        for callers in (1, 8):
            print(process_cpu(api, store_pid(settings.mongo_uri), agent_key, phones,
                              args.requests, callers), flush=True)
    finally:
        api.stop()
    if not args.database:
        store.connect(settings).drop_database(settings.mongo_db)


if __name__ == "__main__":
    main()
