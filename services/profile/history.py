"""The full event history of every profile, kept for a retention period.

Two collections, each written by inserts alone (a replay inserts what is there already and
adds nothing):

* ``profile_events``: one document per applied event, ``_id = "<profile_id>|<message_id>"``,
  with the event's payload and ``expires_at``;
* ``profile_timeline``: the event's timeline entry under the profile and its moment,
  ``_id = "<profile_id>|<UTC time, ISO>|<message_id>"``, so that a month or a day of a
  profile's timeline is one ``_id`` prefix range (``store.id_prefix``), read from the ``_id``
  index. A
  merge copies the merged profile's entries under the survivor's id; its events stay under
  the merged profile's. The profile document lists the months it has entries in
  (``history_months``), so a page reads only the months it needs.

Earlier versions kept a page per profile and month (``profile_event_months``), an upsert per
event that rewrote the whole month; the profile worker's housekeeping moves those pages into
the timeline and drops them (``migrate_month_pages``). Until then every read consults them
first and then the timeline: a page moved meanwhile is found in one or the other.

Retention: ``expires_at = occurred_at + retention``. Where the store honours TTL indexes
(MongoDB) it expires documents itself; FerretDB refuses them, and the worker then calls
``sweep`` periodically. Reads hide entries past retention either way.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from pymongo import DeleteOne
from pymongo.database import Database

from services.common.documents import unstorable
from services.common.store import (
    EarlierCollection,
    Index,
    bulk_write,
    delete_by_ids,
    documents_after,
    ensure_indexes,
    find_by_ids,
    id_prefix,
    insert_new,
    older_than,
    paced,
    raise_write_errors,
)
from services.profile.projection import in_utc, month_of

EVENTS = "profile_events"
TIMELINE = "profile_timeline"
MONTH_PAGES = "profile_event_months"  # earlier versions' pages, until migrated
MOVING = "profile_event_months_moving"  # the profiles of the chunk of pages being moved
TTL_INDEX_NAMES = ("profile_events_expiry", "profile_timeline_expiry")
SWEEP_CHUNK = 500  # deletes between two pauses of a sweep
MIGRATION_CHUNK = 50  # month pages moved between two pauses of the migration
# a page whose entries probably reach further back than this reads whole months, not days
MAX_DAYS_READ = 4
ENTRY_HIDDEN = {"_id": 0, "profile_id": 0, "expires_at": 0}  # a timeline doc less: its entry


def history_indexes() -> list[Index]:
    return [Index(EVENTS, [("expires_at", 1)], ttl_seconds=0, name=TTL_INDEX_NAMES[0]),
            Index(TIMELINE, [("expires_at", 1)], ttl_seconds=0, name=TTL_INDEX_NAMES[1]),
            Index(EVENTS, [("profile_id", 1), ("at", -1)])]


def timeline_id(profile_id: str, at: datetime, message_id: str) -> str:
    """Sorts as the moments do: UTC, fixed width, to the millisecond the store keeps."""
    moment = in_utc(at)
    return (f"{profile_id}|{moment:%Y-%m-%dT%H:%M:%S}.{moment.microsecond // 1000:03d}Z"
            f"|{message_id}")


def _month_start(month: str) -> datetime:
    return datetime(int(month[:4]), int(month[5:7]), 1, tzinfo=UTC)


class HistoryStore:
    def __init__(self, db: Database, retention: timedelta):
        self.events = db[EVENTS]
        self.timeline = db[TIMELINE]
        self.month_pages = EarlierCollection(db, MONTH_PAGES)
        self.moving = db[MOVING]
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
        """``record`` for several (profile_id, event, entry): one insert of the events and one
        of their entries. Idempotent. Returns how many were within retention."""
        events, entries = [], []
        for profile_id, event, entry in items:
            expires_at = entry["at"] + self.retention
            if expires_at <= now:
                continue
            events.append(self._document(profile_id, event, entry, expires_at))
            entries.append(self._timeline_document(profile_id, entry, expires_at))
        # entries first: an erasure finds events through them, and an entry whose event a
        # crash kept from being stored names nothing
        insert_new(self.timeline, entries)
        insert_new(self.events, events)
        return len(events)

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
    def _timeline_document(profile_id: str, entry: dict[str, Any],
                           expires_at: datetime) -> dict[str, Any]:
        return {**entry, "_id": timeline_id(profile_id, entry["at"], entry["message_id"]),
                "profile_id": profile_id, "expires_at": expires_at}

    def copy(self, from_profile: str, to_profile: str, months: Iterable[str]) -> None:
        """Add one profile's timeline (its ``history_months``) to another's (a merge).
        Idempotent."""
        entries = self._entries(from_profile, sorted(set(months)), ENTRY_HIDDEN)
        insert_new(self.timeline, [
            self._timeline_document(to_profile, entry, entry["at"] + self.retention)
            for entry in entries])

    def _entries(self, profile_id: str, months: list[str],
                 projection: dict | None = None) -> list[dict]:
        """The profile's timeline entries of ``months``, unordered, perhaps some twice
        (earlier versions' pages first: a page moved meanwhile is in the timeline then)."""
        found: list[dict] = []
        for page in self._month_pages([profile_id], months):
            found.extend(page.get("entries", ()))
        for month in months:
            found.extend(self.timeline.find(id_prefix(f"{profile_id}|{month}"), projection))
        return found

    def _month_pages(self, profile_ids: list[str], months: list[str],
                     projection: dict | None = None) -> list[dict]:
        """Earlier versions' pages of these profiles and months, while there are any."""
        wanted = [f"{profile_id}|{month}" for profile_id in profile_ids for month in months]
        # an empty $in would read every page
        if not wanted or not self.month_pages.there():
            return []
        return find_by_ids(self.month_pages.collection, wanted, projection)

    def page(self, profile_id: str, months: Iterable[str], now: datetime, *,
             before: tuple[datetime, str] | None = None, channel: str | None = None,
             limit: int = 20, reach: tuple[datetime, timedelta] | None = None,
             ) -> tuple[list[dict], tuple[datetime, str] | None]:
        """Up to ``limit`` entries newest first, older than ``before`` (at, message_id), and
        the cursor of the next page (None at the end).

        ``reach``: the moment of the profile's newest entry and how far back ``limit`` entries
        probably reach from it (``projection.timeline_reach``). When that is a few days, the
        months are read a day at a time from there or now, whichever is later (one ``_id``
        prefix each, twice as many days each round), instead of whole: a page of a profile
        with a thousand events this month reads a day or two of them. The store reads a range
        only forwards, so a whole month costs every entry in it. An entry dated later than
        both, which the profile as read did not have, shows once the profile has it."""
        oldest = now - self.retention
        found: dict[str, dict] = {}
        for entries in self._newest_first(profile_id, months, before, now, reach):
            found.update((e["message_id"], e) for e in entries
                         if e["at"] > oldest and (channel is None or e["channel"] == channel)
                         and (before is None or (e["at"], e["message_id"]) < before))
            if len(found) > limit:  # every entry still unread is older than these
                break
        newest = sorted(found.values(), key=lambda e: (e["at"], e["message_id"]), reverse=True)
        entries = newest[:limit]
        more = len(newest) > limit
        return entries, ((entries[-1]["at"], entries[-1]["message_id"]) if more else None)

    def _newest_first(self, profile_id: str, months: Iterable[str],
                      before: tuple[datetime, str] | None, now: datetime,
                      reach: tuple[datetime, timedelta] | None) -> Iterator[list[dict]]:
        """The entries of ``months``, a batch at a time, each batch holding every entry
        newer than the next batch's (a batch may repeat some of the one before)."""
        days = max(1, math.ceil(reach[1] / timedelta(days=1))) if reach else MAX_DAYS_READ + 1
        # the newest day a page may show: an entry the profile as read did not have yet (an
        # event applied, a merge copying entries, since) is dated up to now
        bound = in_utc(before[0] if before else max(reach[0], now)) if reach else None
        for month in sorted(set(months), reverse=True):
            if before is not None and month > month_of(before[0]):
                continue
            first = _month_start(month)
            if days > MAX_DAYS_READ or self.month_pages.there() or bound < first:
                yield self._entries(profile_id, [month], ENTRY_HIDDEN)
                continue
            day = min(bound.replace(hour=0, minute=0, second=0, microsecond=0),
                      _month_start(month_of(first + timedelta(days=31))) - timedelta(days=1))
            while day >= first:
                if days > MAX_DAYS_READ or first + timedelta(days=days) > day:
                    # the rest of the month in one read (its days read already again)
                    yield self._entries(profile_id, [month], ENTRY_HIDDEN)
                    break
                for _ in range(days):
                    yield list(self.timeline.find(id_prefix(f"{profile_id}|{day:%Y-%m-%d}"),
                                                  ENTRY_HIDDEN))
                    day -= timedelta(days=1)
                days *= 2

    def count(self, profile_id: str, months: Iterable[str], now: datetime) -> int:
        oldest = now - self.retention
        return len({e["message_id"] for e in self._entries(
            profile_id, sorted(set(months)), {"message_id": 1, "at": 1}) if e["at"] > oldest})

    def forget(self, items: Iterable[tuple[str, str, datetime]]) -> None:
        """Delete the events given as (profile_id, message_id, at) and their timeline entries
        (profiles erased while the events were stored: whatever the erasure found of them,
        these are found by their own keys)."""
        items = list(items)
        delete_by_ids(self.events, sorted({f"{p}|{m}" for p, m, _ in items}))
        delete_by_ids(self.timeline, sorted({timeline_id(p, at, m) for p, m, at in items}))
        if self.month_pages.there():
            delete_by_ids(self.month_pages.collection,
                          sorted({f"{p}|{month_of(at)}" for p, _, at in items}))

    def erase(self, months_of: Mapping[str, Iterable[str]]) -> int:
        """Delete everything kept for the profiles ({profile id: its ``history_months``});
        returns how many events were deleted.

        By ``_id`` only: each timeline entry names its event's message id, and an event's
        ``_id`` is "<profile_id>|<message_id>". A profile's timeline also holds the entries
        copied from profiles merged into it, whose events are kept under the merged profile's
        id, so each message id is tried under every erased profile (they are erased
        together)."""
        pages, entries, message_ids = [], [], set()
        months = sorted({month for listed in months_of.values() for month in listed})
        for page in self._month_pages(sorted(months_of), months, {"entries.message_id": 1}):
            pages.append(page["_id"])
            message_ids.update(e["message_id"] for e in page.get("entries", ()))
        for profile_id in sorted(months_of):
            # the whole profile, not only the months it lists: a merge may have copied
            # entries into it after the profile was read
            for entry in self.timeline.find(id_prefix(f"{profile_id}|"), {"message_id": 1}):
                entries.append(entry["_id"])
                message_ids.add(entry["message_id"])
        deleted = delete_by_ids(self.events, [f"{profile_id}|{message_id}"
                                              for profile_id in months_of
                                              for message_id in message_ids])
        delete_by_ids(self.timeline, entries)
        if pages:
            delete_by_ids(self.month_pages.collection, pages)
        return deleted

    def sweep(self, now: datetime, pause: Callable[[float], bool] | None = None) -> int:
        """Delete history past retention (for stores without TTL). Returns events deleted.

        Found by a streamed read (``store.older_than``) and deleted by ``_id`` a chunk at a
        time, ``pause`` called between chunks (``store.paced``); once it says stop, the sweep
        stops."""
        stopped = False

        def pausing(took: float) -> bool:
            nonlocal stopped
            stopped = stopped or (pause is not None and pause(took))
            return stopped

        deleted = {}
        earlier = [self.month_pages.collection] if self.month_pages.there() else []
        for collection in (*earlier, self.timeline, self.events):
            if not stopped:
                deleted[collection.name] = _delete_expired(collection, now, pausing)
        return deleted.get(EVENTS, 0)

    def migrate_month_pages(self, erased_among: Callable[[list[str]], set[str]], now: datetime,
                            pause: Callable[[float], bool] | None = None) -> int:
        """Move earlier versions' month pages into the timeline, ``MIGRATION_CHUNK`` pages at
        a time with ``pause`` between chunks, then drop them; returns how many entries moved.
        ``erased_among`` says which of the profile ids given are erased.

        A page's entries are inserted before the page is deleted, so a stop or crash midway
        loses none, and the page is deleted only as it was read (an earlier version's worker
        still running may have added to it: the next run moves it again). An erased
        profile's page is deleted with the events it names, not moved; and the erasure marks
        a profile before it reads what to delete, so the entries moved for a profile found
        marked after the insert are deleted again. The chunk's profiles are noted before the
        insert: a run cut short before that check makes it for them first."""
        if not self.month_pages.there(refresh=True):
            return 0
        self._take_back_interrupted(erased_among)
        moved = 0
        # each chunk read just before it is moved
        for page in documents_after(self.month_pages.collection, None, MIGRATION_CHUNK):
            for chunk in paced(page, MIGRATION_CHUNK, pause):
                moved += self._move_pages(chunk, erased_among, now)
            if pause is not None and pause(0):
                return moved
        if self.month_pages.drop_if_empty():
            self.moving.drop()
        return moved

    def _take_back_interrupted(self, erased_among: Callable[[list[str]], set[str]]) -> None:
        """Delete the entries an interrupted move inserted for profiles erased meanwhile: the
        erasure may have read their timeline before the insert and deleted the page."""
        noted = self.moving.find_one({"_id": "chunk"})
        for profile_id in sorted(erased_among(noted["profile_ids"]) if noted else ()):
            delete_by_ids(self.timeline, [doc["_id"] for doc in self.timeline.find(
                id_prefix(f"{profile_id}|"), {"_id": 1})])

    def _move_pages(self, pages: list[dict], erased_among: Callable[[list[str]], set[str]],
                    now: datetime) -> int:
        profile_ids = sorted({page["profile_id"] for page in pages})
        self.moving.replace_one({"_id": "chunk"}, {"profile_ids": profile_ids}, upsert=True)
        erased = erased_among(profile_ids)
        documents = [self._timeline_document(page["profile_id"], entry, expires_at)
                     for page in pages if page["profile_id"] not in erased
                     for entry in page.get("entries", ())
                     if (expires_at := entry["at"] + self.retention) > now]
        insert_new(self.timeline, documents)
        erased |= erased_among(sorted({doc["profile_id"] for doc in documents}))
        delete_by_ids(self.timeline, [doc["_id"] for doc in documents
                                      if doc["profile_id"] in erased])
        gone = [page for page in pages if page["profile_id"] in erased]
        delete_by_ids(self.events, [f"{page['profile_id']}|{entry['message_id']}"
                                    for page in gone for entry in page.get("entries", ())])
        raise_write_errors(bulk_write(self.month_pages.collection, [
            DeleteOne({"_id": page["_id"]} if page["profile_id"] in erased else
                      {"_id": page["_id"], "entries": {"$size": len(page.get("entries", ()))}})
            for page in pages]))
        return sum(1 for doc in documents if doc["profile_id"] not in erased)


def _delete_expired(collection, now: datetime, pause: Callable[[float], bool] | None) -> int:
    expired = [doc["_id"] for doc in older_than(collection, "expires_at", now)]
    return sum(delete_by_ids(collection, chunk) for chunk in paced(expired, SWEEP_CHUNK, pause))
