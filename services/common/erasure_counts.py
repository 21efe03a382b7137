"""Per erasure request, how much one service's handlings of it deleted: counts only, no
personal data. A retried or redelivered erasure finds little or nothing left to delete, and
its ack must still report what the erasure did, so each handling adds its counts here and acks
the totals. Kept as long as closed data-subject requests (the ``privacy_requests`` retention),
counted from the latest handling.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import datetime

import pymongo.collection
from pymongo import ReturnDocument

from services.common.store import delete_older


class ErasureCounts:
    def __init__(self, collection: pymongo.collection.Collection):
        self.collection = collection

    def add(self, request_id: str, counts: Mapping[str, int], at: datetime,
            highest: Mapping[str, int] | None = None) -> dict[str, int]:
        """Add ``counts`` to what the erasure ``request_id`` deleted, and keep the highest of
        each of ``highest`` (figures each handling reports whole, not in part); returns its
        totals over all its handlings."""
        update: dict = {"$max": {"handled_at": at, **{
            f"deleted.{kind}": count for kind, count in (highest or {}).items()}}}
        if counts:
            update["$inc"] = {f"deleted.{kind}": count for kind, count in counts.items()}
        doc = self.collection.find_one_and_update({"_id": request_id}, update, upsert=True,
                                                  return_document=ReturnDocument.AFTER)
        return dict(doc.get("deleted") or {})

    def expire(self, before: datetime, pause: Callable[[float], bool] | None = None) -> int:
        """Delete the records last handled before ``before`` (the retention sweep)."""
        return delete_older(self.collection, "handled_at", before, pause)
