"""Retention of the consent service's own data, swept daily by its worker and on demand.

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
from datetime import UTC, datetime

from pymongo.database import Database

from services.common import retention, store
from services.common.bus import Outgoing, Relay
from services.common.config import ConfigError, Settings
from services.consent.privacy_store import RETENTION_RULES

log = logging.getLogger(__name__)


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
            report = retention.sweep(self.db, RETENTION_RULES, self.policy, datetime.now(UTC),
                                     apply=True)
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
        report = retention.sweep(store.database(client, settings), RETENTION_RULES,
                                 retention.parse_policy(settings.retention_days),
                                 datetime.now(UTC), apply=args.apply)
    finally:
        client.close()
    print(json.dumps({"applied": args.apply, "kinds": report}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
