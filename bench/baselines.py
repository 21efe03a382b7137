"""Raw ceilings the benchmarks are reported against, and a process's CPU and peak memory.

Every speed figure of `python -m bench` is a ratio to one of these, measured in the same run
on the same instance: the machine is shared and noisy, absolute figures wander.
"""

from __future__ import annotations

import os
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

from pymongo import UpdateOne
from pymongo.database import Database

from services.common import store
from services.common.config import Settings


def cpu_speed_ms(loops: int = 3) -> float:
    """The best of ``loops`` timings of one fixed pure-Python loop, in ms. The machines are
    shared: a run whose figures all moved together usually ran on a slower core, and this
    says so (taken at the start and the end of a run)."""
    best = float("inf")
    for _ in range(loops):
        started = time.perf_counter()
        sum(i * i for i in range(2_000_000))
        best = min(best, time.perf_counter() - started)
    return best * 1000


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


def raw_single_upserts(db: Database, count: int = 2_000) -> float:
    """Single-document upserts by _id, one per round trip (what a worker handling one event
    at a time does), per second."""
    collection = db[f"bench_raw_single_{uuid.uuid4().hex[:6]}"]
    started = time.perf_counter()
    for i in range(count):
        collection.update_one({"_id": f"id-{i}"}, {"$set": {"n": i, "at": datetime.now(UTC)}},
                              upsert=True)
    return count / (time.perf_counter() - started)


def peak_rss_mb(pid: int) -> float | None:
    """The process's peak resident memory (VmHWM) in MiB; None once it has exited."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except FileNotFoundError:
        return None
    return None


def idle_cpu_ms_per_s(processes: dict[str, list[int]], seconds: float = 20.0) -> dict:
    """CPU each group of processes spends per second while the platform has nothing to do
    (every consumer caught up, no requests): the share of the cores every benchmark's work
    competes with."""
    def used() -> dict[str, float]:
        return {name: sum(cpu_seconds(pid) for pid in pids) for name, pids in processes.items()}

    before = used()
    time.sleep(seconds)
    after = used()
    return {name: round((after[name] - before[name]) * 1000 / seconds, 1) for name in processes}


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process, all its threads, and of its reaped children; 0 once it
    has exited."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except FileNotFoundError:
        return 0.0
    return sum(int(value) for value in fields[11:15]) / os.sysconf("SC_CLK_TCK")


def children(pid: int) -> list[int]:
    """The process's child processes (an API server's workers)."""
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        found += [int(c) for c in (task / "children").read_text().split()]
    return found
