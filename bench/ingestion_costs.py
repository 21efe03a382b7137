"""Where an ingested event's CPU goes, and which worker sets the pace.

`python -m bench.ingestion_costs [--customers N] [--rounds R]` starts its own "bench"
infrastructure and every service as `make bench` does, sends shop traffic over HTTP as the
benchmark's ingestion does, and prints for each round the events/s end to end, when each
consumer group had drained its topic (the last to drain sets the pace), and the CPU each
process spent per event (Kafka, the store, each service's API and worker).
"""

from __future__ import annotations

import argparse
import threading
import time

from bench import pipeline
from bench.__main__ import Stack, fresh_platform
from bench.baselines import children, cpu_seconds
from bench.pipeline import LagReader, step
from deploy.local.infra import Instance
from services.common import topics
from services.common.bus import ensure_topics
from services.common.config import Settings

# each consumer group the shop traffic passes through, with the topic it reads it from
GROUPS = (("identity-graph", topics.EVENTS_WEB), ("profile-projection", topics.EVENTS_RESOLVED),
          ("consent-identity", topics.EVENTS_RESOLVED), ("export-feed", topics.PROFILE_CHANGES))


def processes(instance: Instance, stack: Stack) -> dict[str, list[int]]:
    found = {"kafka": [instance.pid("kafka")], "store": [instance.pid("ferretdb")]}
    for kind, group in (("api", stack.apis), ("worker", stack.workers)):
        for name, process in group.items():
            found[f"{name} {kind}"] = [process.proc.pid, *children(process.proc.pid)]
    return found


def drain_times(settings: Settings, started: float, stop: threading.Event,
                drained: dict[str, float]) -> None:
    """Note when each group's lag, once seen above zero, is zero again (every half second)."""
    reader = LagReader(settings)
    busy: set[str] = set()
    try:
        while not stop.is_set():
            for group, topic in GROUPS:
                if reader.lag(group, topic):
                    busy.add(group)
                    drained.pop(group, None)
                elif group in busy and group not in drained:
                    drained[group] = time.perf_counter() - started
            time.sleep(0.5)
    finally:
        reader.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.ingestion_costs", description=__doc__)
    parser.add_argument("--customers", type=int, default=1200,
                        help="customers per round, five events each (default 1,200)")
    parser.add_argument("--rounds", type=int, default=1)
    args = parser.parse_args(argv)
    instance, env, keys = fresh_platform()
    settings = Settings.from_env(env)
    ensure_topics(settings, topics.ALL)
    stack = Stack(env).start()
    try:
        for round_ in range(args.rounds):
            pipeline.wait_quiet(settings)
            pids = processes(instance, stack)
            before = {name: sum(map(cpu_seconds, group)) for name, group in pids.items()}
            started, stop, drained = time.perf_counter(), threading.Event(), {}
            watcher = threading.Thread(target=drain_times,
                                       args=(settings, started, stop, drained), daemon=True)
            watcher.start()
            result = pipeline.ingestion(stack.url("identity"), settings, keys["collector"],
                                        args.customers)
            time.sleep(1.0)  # the watcher's last look
            stop.set()
            watcher.join()
            events = result["ingest_events"]
            spent = {name: sum(map(cpu_seconds, group)) - before[name]
                     for name, group in pids.items()}
            step(f"round {round_}: {events:,} events, {result['ingest_events_per_s']:.0f}/s end "
                 f"to end; drained at " + ", ".join(
                     f"{group} {seconds:.1f} s" for group, seconds in
                     sorted(drained.items(), key=lambda item: item[1])))
            for name, seconds in sorted(spent.items(), key=lambda item: -item[1]):
                if seconds * 1000 / events >= 0.01:
                    step(f"  {name:18s} {seconds * 1000 / events:5.2f} ms of CPU per event")
            step(f"  {'all':18s} {sum(spent.values()) * 1000 / events:5.2f} ms of CPU per event")
    finally:
        stack.stop()
        instance.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
