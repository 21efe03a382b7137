"""Quality and speed of the identity service's record matcher on generated Finnish data.

For each size (10k and 100k records by default) and each id-number scenario
(none, on every record, on 60 % of records) this generates a labelled data set with
:mod:`services.identity.matching_data`, runs :func:`services.identity.matching.find_matches`
and reports pairwise precision, recall and F1 of the "match" pairs, F1 of match+possible,
false matches between known look-alikes (twins, father and son, household members,
namesakes) and the wall time of matching. The result goes to
``bench/results/matching.json``. The whole run takes about two minutes on one core (the
100k runs take about 25 s of matching each), so 100k is not behind a flag; ``--quick``
runs 10k only.

    python bench/matching_quality.py [--quick] [--sizes N ...] [--seed S] [--out PATH]
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from collections import Counter
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from services.identity import matching  # noqa: E402
from services.identity.matching_data import Dataset, evaluate, generate  # noqa: E402

SCENARIOS = {
    "without_id_number": None,  # every id_number removed
    "with_id_number": 1.0,  # every record carries its hetu (about 1 % of them mistyped)
    "id_number_on_60pct": 0.6,
}
DEFAULT_SEED = 20240  # distinct from the tuning seeds (101, 202) and the unit tests' (4242)


def dataset_for(size: int, seed: int, id_rate: float | None) -> Dataset:
    if id_rate is None:
        return generate(size, seed).without_id_numbers()
    return generate(size, seed, id_number_rate=id_rate)


def run_one(size: int, seed: int, scenario: str, threshold_match: float,
            threshold_possible: float) -> dict:
    data = dataset_for(size, seed, SCENARIOS[scenario])
    started = time.perf_counter()
    pairs = matching.find_matches(data.records, threshold_match, threshold_possible)
    wall = time.perf_counter() - started
    matches = [(p.a, p.b) for p in pairs if p.decision == "match"]
    at_match = evaluate(matches, data)
    with_possible = evaluate([(p.a, p.b) for p in pairs], data)
    relation = {}
    for a, b, kind in data.relations:
        relation[(a, b)] = relation[(b, a)] = kind
    false_matches = Counter(
        relation.get((data.truth[a], data.truth[b]), "unrelated")
        for a, b in matches if data.truth[a] != data.truth[b]
    )
    return {
        "records": size,
        "scenario": scenario,
        "entities": len(set(data.truth.values())),
        "true_pairs": len(data.true_pairs()),
        "match": at_match.to_dict(),
        "match_or_possible": with_possible.to_dict(),
        "pairs_returned": len(pairs),
        "false_matches_by_relation": dict(sorted(false_matches.items())),
        "look_alike_entity_pairs": dict(sorted(Counter(k for *_, k in data.relations).items())),
        "wall_seconds": round(wall, 2),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000],
                        help="numbers of records (default 10000 100000)")
    parser.add_argument("--quick", action="store_true", help="10k records only")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED)
    parser.add_argument("--threshold-match", type=float,
                        default=matching.DEFAULT_THRESHOLD_MATCH)
    parser.add_argument("--threshold-possible", type=float,
                        default=matching.DEFAULT_THRESHOLD_POSSIBLE)
    parser.add_argument("--out", type=Path,
                        default=REPO_ROOT / "bench" / "results" / "matching.json")
    args = parser.parse_args(argv)

    sizes = [10_000] if args.quick else args.sizes
    results = []
    header = (f"{'records':>8} {'scenario':<20} {'precision':>9} {'recall':>7} {'F1':>7} "
              f"{'F1 m+p':>7} {'false matches by relation':<40} {'wall s':>7}")
    print(header)
    print("-" * len(header))
    for size in sizes:
        for scenario in SCENARIOS:
            row = run_one(size, args.seed, scenario, args.threshold_match,
                          args.threshold_possible)
            results.append(row)
            m = row["match"]
            fms = ", ".join(f"{k} {v}" for k, v in row["false_matches_by_relation"].items())
            print(f"{size:>8} {scenario:<20} {m['precision']:>9.4f} {m['recall']:>7.4f} "
                  f"{m['f1']:>7.4f} {row['match_or_possible']['f1']:>7.4f} "
                  f"{fms or '-':<40} {row['wall_seconds']:>7.2f}", flush=True)
    report = {
        "benchmark": "identity record matching (services.identity.matching)",
        "seed": args.seed,
        "threshold_match": args.threshold_match,
        "threshold_possible": args.threshold_possible,
        "block_cap": matching.DEFAULT_BLOCK_CAP,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "wall_time_is": "find_matches only (normalisation, blocking, scoring), one core",
        "results": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
