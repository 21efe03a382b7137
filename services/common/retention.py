"""Retention: how long each kind of data is kept, and an explicit sweep that deletes what is
older. FerretDB 1.x refuses TTL indexes, so retention is enforced by sweeps everywhere, the
same way on MongoDB.

The policy (``CDP_RETENTION_DAYS``, ``kind=days,...``) names data kinds; each service declares
``RetentionRule``s for the kinds it holds (which collection, which time field, which
documents) and runs ``sweep`` on its own data: dry-run to see what would go, then for real.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from pymongo.database import Database

from services.common.config import parse_type_limits


@dataclass(frozen=True)
class RetentionRule:
    """Documents of ``collection`` matching ``match`` are of data kind ``kind`` and expire
    when ``time_field`` is older than the kind's retention."""

    kind: str
    collection: str
    time_field: str
    description: str
    match: dict[str, Any] = field(default_factory=dict)


def parse_policy(text: str) -> dict[str, timedelta]:
    """``consent_proof=1825,access_log=730`` → {kind: retention}; raises ValueError."""
    return {kind: timedelta(days=days) for kind, days in parse_type_limits(text).items()}


def sweep(db: Database, rules: list[RetentionRule], policy: dict[str, timedelta],
          now: datetime, *, apply: bool) -> list[dict[str, Any]]:
    """For every rule whose kind has a retention: how many documents are past it, and with
    ``apply`` delete them. Rules whose kind the policy does not name keep their data."""
    report = []
    for rule in rules:
        keep_for = policy.get(rule.kind)
        if keep_for is None:
            report.append({"kind": rule.kind, "collection": rule.collection,
                           "description": rule.description, "retention_days": None,
                           "expired": 0, "deleted": 0})
            continue
        cutoff = now - keep_for
        query = {**rule.match, rule.time_field: {"$lt": cutoff}}
        expired = db[rule.collection].count_documents(query)
        deleted = db[rule.collection].delete_many(query).deleted_count if apply and expired else 0
        report.append({"kind": rule.kind, "collection": rule.collection,
                       "description": rule.description, "retention_days": keep_for.days,
                       "cutoff": cutoff.isoformat(), "expired": expired, "deleted": deleted})
    return report
