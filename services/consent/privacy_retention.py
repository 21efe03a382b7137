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
import time
from datetime import UTC, datetime, timedelta
from typing import Any

from pymongo.database import Database

from services.common import retention, store
from services.common.bus import Outgoing, Relay
from services.common.config import ConfigError, Settings
from services.consent.consent_store import LEDGER, ConsentStore
from services.consent.privacy_store import RETENTION_RULES

log = logging.getLogger(__name__)


PROOF = "consent_proof"


def sweep(db: Database, policy: dict[str, timedelta], now: datetime, *,
          apply: bool) -> list[dict[str, Any]]:
    """Every kind this service holds: how much is past its retention, deleted with
    ``apply`` (the report of services.common.retention.sweep)."""
    report = retention.sweep(db, RETENTION_RULES, policy, now, apply=apply)
    proof = {"kind": PROOF, "collection": LEDGER, "retention_days": None,
             "description": "consent ledger entries (with their proof) of decisions replaced "
                            "by a later one on their purpose, counted from the replacement",
             "expired": 0, "deleted": 0}
    keep_for = policy.get(PROOF)
    if keep_for is not None:
        cutoff = now - keep_for
        expired, deleted = ConsentStore(db).sweep_replaced_proof(cutoff, apply=apply)
        proof |= {"retention_days": keep_for.days, "cutoff": cutoff.isoformat(),
                  "expired": expired, "deleted": deleted}
    return [*report, proof]


class DailySweep(Relay):
    """Runs the retention sweep from a consumer loop's idle time, once a day. It announces
    nothing: the relay hook is only the loop's clock."""

    interval_seconds = 3600.0
    EVERY_SECONDS = 86400.0

    def __init__(self, db: Database, settings: Settings):
        self.db = db
        self.policy = retention.parse_policy(settings.retention_days)
        self._due = 0.0

    def pending(self) -> list[Outgoing]:
        if time.monotonic() >= self._due:
            self._due = time.monotonic() + self.EVERY_SECONDS
            report = sweep(self.db, self.policy, datetime.now(UTC), apply=True)
            log.info("retention sweep", extra={"kinds": {r["kind"]: r["deleted"]
                                                         for r in report}})
        return []

    def sent(self, messages: list[Outgoing]) -> None:
        """Nothing is ever pending."""


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
