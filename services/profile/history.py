"""The full event history of every profile, kept for a retention period.

Two collections:

* ``profile_events``: one document per applied event, ``_id = "<profile_id>|<message_id>"``
  (a replay finds it there and adds nothing), with the event's payload and ``expires_at``;
* ``profile_event_months``: per profile and month (``_id = "<profile_id>|<YYYY-MM>"``) the
  month's timeline entries, so a page of history is read by ``_id`` alone (FerretDB 1.x on
  SQLite pushes nothing else down) and the timeline pages beyond the profile's capped recent
  list. The profile document lists its months (``history_months``).

Retention: ``expires_at = occurred_at + retention``. Where the store honours TTL indexes
(MongoDB) it expires documents itself; FerretDB refuses them, and the worker then calls
``sweep`` periodically. Reads hide entries past retention either way.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from datetime import datetime, timedelta
from typing import Any

import pymongo.errors
from pymongo import UpdateOne
from pymongo.database import Database

from services.common.documents import unstorable
from services.common.store import (
    Index,
    bulk_write,
    delete_by_ids,
    ensure_indexes,
    insert_new,
    older_than,
    paced,
)
from services.profile.projection import month_of

EVENTS = "profile_events"
MONTHS = "profile_event_months"
TTL_INDEX_NAMES = ("profile_events_expiry", "profile_event_months_expiry")
SWEEP_CHUNK = 500  # deletes between two pauses of a sweep


def history_indexes() -> list[Index]:
    return [Index(EVENTS, [("expires_at", 1)], ttl_seconds=0, name=TTL_INDEX_NAMES[0]),
            Index(MONTHS, [("expires_at", 1)], ttl_seconds=0, name=TTL_INDEX_NAMES[1]),
            Index(EVENTS, [("profile_id", 1), ("at", -1)]),
            Index(MONTHS, [("profile_id", 1)])]


class HistoryStore:
    def __init__(self, db: Database, retention: timedelta):
        self.events = db[EVENTS]
        self.months = db[MONTHS]
        self.retention = retention

    def prepare(self) -> bool:
        """Create the indexes; returns True when the store expires history itself (TTL),
        False when ``sweep`` must."""
        support = ensure_indexes(self.events.database, history_indexes())
        return all(support.get(name, False) for name in TTL_INDEX_NAMES)

    def record(self, profile_id: str, event: dict[str, Any], entry: dict[str, Any],
               now: datetime) -> bool:
        """Keep one applied event (``entry`` is its timeline entry). Idempotent. Returns
        False for an event already past retention (nothing stored)."""
        return bool(self.record_many([(profile_id, event, entry)], now))

    def record_many(self, items: Iterable[tuple[str, dict[str, Any], dict[str, Any]]],
                    now: datetime) -> int:
        """``record`` for several (profile_id, event, entry): the events in one insert, each
        profile's month pages in one upsert. Idempotent. Returns how many were within
        retention."""
        documents, pages = [], {}
        for profile_id, event, entry in items:
            expires_at = entry["at"] + self.retention
            if expires_at <= now:
                continue
            documents.append(self._document(profile_id, event, entry, expires_at))
            page = pages.setdefault((profile_id, month_of(entry["at"])),
                                    {"entries": [], "expires_at": expires_at})
            page["entries"].append(entry)
            page["expires_at"] = max(page["expires_at"], expires_at)
        if not documents:
            return 0
        insert_new(self.events, documents)  # replays: those events are already kept
        _, errors = bulk_write(self.months, [
            self._add_entries_write(profile_id, month, page["entries"], page["expires_at"])
            for (profile_id, month), page in pages.items()])
        if errors:
            raise pymongo.errors.BulkWriteError({"writeErrors": errors})
        return len(documents)

    @staticmethod
    def _document(profile_id: str, event: dict[str, Any], entry: dict[str, Any],
                  expires_at: datetime) -> dict[str, Any]:
        payload = event.get("payload") or {}
        return {"_id": f"{profile_id}|{entry['message_id']}", "profile_id": profile_id,
                "message_id": entry["message_id"], "type": entry["type"],
                "channel": entry["channel"], "at": entry["at"],
                "identifiers": event.get("identifiers") or {},
                "payload": None if unstorable(payload) else payload,
                "expires_at": expires_at}

    @staticmethod
    def _add_entries_write(profile_id: str, month: str, entries: list[dict],
                           expires_at: datetime) -> UpdateOne:
        return UpdateOne(
            {"_id": f"{profile_id}|{month}"},
            {"$addToSet": {"entries": {"$each": entries}}, "$max": {"expires_at": expires_at},
             "$setOnInsert": {"profile_id": profile_id, "month": month}}, upsert=True)

    def _add_entries(self, profile_id: str, month: str, entries: list[dict],
                     expires_at: datetime) -> None:
        self.months.bulk_write([self._add_entries_write(profile_id, month, entries,
                                                        expires_at)])

    def copy(self, from_profile: str, to_profile: str, months: Iterable[str]) -> None:
        """Add one profile's history pages to another's (a merge). Idempotent."""
        for month in months:
            page = self.months.find_one({"_id": f"{from_profile}|{month}"})
            if page and page.get("entries"):
                self._add_entries(to_profile, month, page["entries"], page["expires_at"])

    def page(self, profile_id: str, months: Iterable[str], now: datetime, *,
             before: tuple[datetime, str] | None = None, channel: str | None = None,
             limit: int = 20) -> tuple[list[dict], tuple[datetime, str] | None]:
        """Up to ``limit`` entries newest first, older than ``before`` (at, message_id), and
        the cursor of the next page (None at the end)."""
        oldest = now - self.retention
        found: list[dict] = []
        for month in sorted(months, reverse=True):
            if before is not None and month > month_of(before[0]):
                continue
            page = self.months.find_one({"_id": f"{profile_id}|{month}"}) or {}
            found.extend(e for e in page.get("entries", ())
                         if e["at"] > oldest and (channel is None or e["channel"] == channel)
                         and (before is None or (e["at"], e["message_id"]) < before))
            if len(found) > limit:
                break
        found.sort(key=lambda e: (e["at"], e["message_id"]), reverse=True)
        unique = list({e["message_id"]: e for e in reversed(found)}.values())[::-1]
        more = len(unique) > limit
        entries = unique[:limit]
        return entries, ((entries[-1]["at"], entries[-1]["message_id"]) if more else None)

    def count(self, profile_id: str, months: Iterable[str], now: datetime) -> int:
        oldest = now - self.retention
        ids = set()
        for month in months:
            page = self.months.find_one({"_id": f"{profile_id}|{month}"}) or {}
            ids.update(e["message_id"] for e in page.get("entries", ()) if e["at"] > oldest)
        return len(ids)

    def forget(self, items: Iterable[tuple[str, str, datetime]]) -> None:
        """Delete the events given as (profile_id, message_id, at) and their profiles'
        pages of those months (profiles erased while the events were stored: whatever the
        erasure found of them, these are found by their own keys)."""
        items = list(items)
        delete_by_ids(self.events, sorted({f"{p}|{m}" for p, m, _ in items}))
        delete_by_ids(self.months, sorted({f"{p}|{month_of(at)}" for p, _, at in items}))

    def erase(self, months_of: Mapping[str, Iterable[str]]) -> int:
        """Delete everything kept for the profiles ({profile id: its ``history_months``});
        returns how many events were deleted.

        By ``_id`` only: each month page lists its events' message ids, and an event's
        ``_id`` is "<profile_id>|<message_id>". A page also holds the entries copied from
        profiles merged into it, whose events are kept under the merged profile's id, so
        each message id is tried under every erased profile (they are erased together)."""
        pages, message_ids = [], set()
        for profile_id, months in sorted(months_of.items()):
            for month in sorted(set(months)):
                page = self.months.find_one({"_id": f"{profile_id}|{month}"},
                                            {"entries.message_id": 1})
                if page is not None:
                    pages.append(page["_id"])
                    message_ids.update(e["message_id"] for e in page.get("entries", ()))
        deleted = delete_by_ids(self.events, [f"{profile_id}|{message_id}"
                                              for profile_id in months_of
                                              for message_id in message_ids])
        delete_by_ids(self.months, pages)
        return deleted

    def sweep(self, now: datetime, pause: Callable[[float], bool] | None = None) -> int:
        """Delete history past retention (for stores without TTL). Returns events deleted.

        Found by a streamed read (``store.older_than``) and deleted by ``_id`` a chunk at a
        time, ``pause`` called between chunks (``store.paced``)."""
        _delete_expired(self.months, now, pause)
        return _delete_expired(self.events, now, pause)


def _delete_expired(collection, now: datetime, pause: Callable[[float], bool] | None) -> int:
    expired = [doc["_id"] for doc in older_than(collection, "expires_at", now)]
    return sum(delete_by_ids(collection, chunk) for chunk in paced(expired, SWEEP_CHUNK, pause))
