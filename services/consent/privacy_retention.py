"""Retention of the consent service's own data, swept daily by its worker and on demand:
closed data-subject requests and access exports (``RETENTION_RULES``), and the consent proof
of decisions replaced by a later one on their purpose (``consent_proof``, counted from the
replacement: the decision in force is kept however old).

    python -m services.consent.privacy_retention            # dry run: what would go
    python -m services.consent.privacy_retention --apply    # delete it

Prints one JSON document (per data kind: collection, retention, cutoff, expired, deleted).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from pymongo.database import Database

from services.common import retention, store
from services.common.background import DailyHousekeeping
from services.common.config import ConfigError, Settings
from services.consent.consent_store import LEDGER, ConsentStore
from services.consent.privacy_store import RETENTION_RULES

log = logging.getLogger(__name__)


PROOF = "consent_proof"


def sweep(db: Database, policy: dict[str, timedelta], now: datetime, *, apply: bool,
          pause: Callable[[float], bool] | None = None) -> list[dict[str, Any]]:
    """Every kind this service holds: how much is past its retention, deleted with
    ``apply`` (the report of services.common.retention.sweep); ``pause`` paces the pass
    over the consent states (``store.paced``)."""
    report = retention.sweep(db, RETENTION_RULES, policy, now, apply=apply)
    proof = {"kind": PROOF, "collection": LEDGER, "retention_days": None,
             "description": "consent ledger entries (with their proof) of decisions replaced "
                            "by a later one on their purpose, counted from the replacement",
             "expired": 0, "deleted": 0}
    keep_for = policy.get(PROOF)
    if keep_for is not None:
        cutoff = now - keep_for
        expired, deleted = ConsentStore(db).sweep_replaced_proof(cutoff, apply=apply,
                                                                 pause=pause)
        proof |= {"retention_days": keep_for.days, "cutoff": cutoff.isoformat(),
                  "expired": expired, "deleted": deleted}
    return [*report, proof]


class RetentionSweep(DailyHousekeeping):
    """The consent worker's daily sweep, a loop of its own beside the consumers: the pass
    over every consent state must not hold up a consumer (the privacy requests')."""

    group = "consent-retention"
    report = ("retention sweep", "kinds")

    def __init__(self, db: Database, settings: Settings):
        super().__init__()
        self.db = db
        self.policy = retention.parse_policy(settings.retention_days)

    def sweep(self) -> dict[str, int]:
        """Delete what is past its retention; returns how much of each kind."""
        report = sweep(self.db, self.policy, datetime.now(UTC), apply=True, pause=self.pause)
        return {kind["kind"]: kind["deleted"] for kind in report}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m services.consent.privacy_retention")
    parser.add_argument("--apply", action="store_true", help="delete (default: dry run)")
    args = parser.parse_args(argv)
    try:
        settings = Settings.from_env()
    except ConfigError as exc:
        print(f"muisti consent: {exc}", file=sys.stderr)
        return 2
    client = store.connect(settings)
    try:
        report = sweep(store.database(client, settings),
                       retention.parse_policy(settings.retention_days), datetime.now(UTC),
                       apply=args.apply)
    finally:
        client.close()
    print(json.dumps({"applied": args.apply, "kinds": report}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
