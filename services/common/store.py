"""MongoDB access: the client factory, index bootstrap and the processed-message ledger.

Code here runs on both FerretDB 1.x (SQLite) and MongoDB. Where MongoDB does more (TTL indexes),
``ensure_indexes`` uses it when the server accepts it and says so when it does not.
"""

from __future__ import annotations

import bisect
import itertools
import logging
import random
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, ClassVar

import bson
import pymongo
import pymongo.collection
import pymongo.errors
from bson.codec_options import CodecOptions
from pymongo.database import Database

from services.common.config import Settings

log = logging.getLogger(__name__)


def connect(settings: Settings) -> pymongo.MongoClient:
    """A client for the configured store. It connects lazily; the first operation may raise
    ``pymongo.errors.ConnectionFailure`` if the store is unreachable."""
    return pymongo.MongoClient(
        settings.mongo_uri,
        serverSelectionTimeoutMS=5000,
        connectTimeoutMS=3000,
        # a store that stops answering mid-request surfaces as a retryable error, not a hang
        socketTimeoutMS=30000,
        tz_aware=True,
        appname="muisti",
    )


def database(client: pymongo.MongoClient, settings: Settings) -> Database:
    return client[settings.mongo_db]


PACKED = "packed"
# as the store's client decodes (tz_aware): a packed document reads back exactly as a plain one
_PACKED_CODEC = CodecOptions(tz_aware=True)


def pack(doc: dict, plain: Iterable[str]) -> dict:
    """The document as stored: the ``plain`` fields (those the store filters or updates on)
    as fields, the rest one BSON binary. FerretDB converts a stored document field by field
    (about 1 ms of CPU per KB); a binary it passes whole."""
    plain = set(plain)
    stored = {name: value for name, value in doc.items() if name in plain}
    stored[PACKED] = bson.Binary(bson.encode(
        {name: value for name, value in doc.items() if name not in plain}))
    return stored


def unpack(stored: dict | None) -> dict | None:
    """The document from its stored form, packed or (written before packing) not."""
    if stored is None or PACKED not in stored:
        return stored
    body = bson.decode(stored[PACKED], codec_options=_PACKED_CODEC)
    return {**{name: value for name, value in stored.items() if name != PACKED}, **body}


def find_by_ids(collection: pymongo.collection.Collection, ids: list[str],
                projection: dict | None = None) -> list[dict]:
    """The documents whose ``_id`` is one of ``ids``: one query per ``IDS_PER_QUERY`` ids.

    Stock FerretDB 1.x scans the whole collection for ``$in``; the FerretDB deploy/local
    builds answers it from the ``_id`` index (deploy/local/infra.py), as MongoDB does.
    """
    found: list[dict] = []
    unique = list(dict.fromkeys(ids))
    for start in range(0, len(unique), IDS_PER_QUERY):
        chunk = unique[start:start + IDS_PER_QUERY]
        found.extend(collection.find({"_id": {"$in": chunk}}, projection))
    return found


IDS_PER_QUERY = 500  # FerretDB's pushdown stops at 1000


def id_prefix(prefix: str) -> dict:
    """The filter of the documents whose ``_id`` starts with ``prefix``, as an ``_id`` range.

    MongoDB answers it from the ``_id`` index. So does the FerretDB deploy/local builds when
    the prefix is printable ASCII other than space, ``!"\\<>&~`` (deploy/local/infra.py); stock
    FerretDB 1.x scans the collection."""
    return {"_id": {"$gte": prefix, "$lt": prefix[:-1] + chr(ord(prefix[-1]) + 1)}}

BULK_CHUNK = 50


def bulk_write(collection: pymongo.collection.Collection, writes: list, *,
               ordered: bool = False) -> tuple[int, list[dict]]:
    """``collection.bulk_write`` in commands of at most ``BULK_CHUNK`` writes. Returns how
    many documents were matched, inserted or upserted and the write errors (an ordered
    write stops at the first).

    Stock FerretDB 1.x keeps each update's query open until its whole command ends, one
    SQLite connection each: an update command of a hundred or more statements that match
    exhausts its connection pool and hangs the store for every client (the deploy/local
    build closes each query after its statement)."""
    done, errors = 0, []
    for start in range(0, len(writes), BULK_CHUNK):
        try:
            result = collection.bulk_write(writes[start:start + BULK_CHUNK], ordered=ordered)
        except pymongo.errors.BulkWriteError as exc:
            details = exc.details
            done += (details.get("nMatched", 0) + details.get("nInserted", 0)
                     + details.get("nUpserted", 0))
            errors.extend(details.get("writeErrors", []))
            if ordered:
                break
            continue
        done += result.matched_count + result.inserted_count + result.upserted_count
    return done, errors


def raise_write_errors(outcome: tuple[int, list[dict]]) -> None:
    """Raise the write errors ``bulk_write`` returned, if any: a write that failed is never
    passed over in silence."""
    if outcome[1]:
        raise pymongo.errors.BulkWriteError({"writeErrors": outcome[1]})


def insert_new(collection: pymongo.collection.Collection, docs: list[dict],
               taken: Callable[[dict], Any] | None = None) -> int:
    """Insert ``docs`` in one command; returns how many were new. A document whose ``_id``
    is stored already is left as it is (a re-delivery inserting again what it inserted
    before) or, given ``taken``, gets the write ``taken`` makes of it (an update or replace)
    instead. Any other write error is raised.

    For documents that are mostly new this is far cheaper on FerretDB than upserting each:
    there an upsert is a read and then an insert in a transaction of its own, while one
    insert of many documents is one SQLite statement and one commit."""
    if not docs:
        return 0
    try:
        collection.insert_many(docs, ordered=False)
    except pymongo.errors.BulkWriteError as exc:
        errors = exc.details.get("writeErrors", [])
        if any(error.get("code") != 11000 for error in errors):
            raise
        if taken is not None:
            raise_write_errors(bulk_write(collection, [taken(docs[error["index"]])
                                                       for error in errors]))
        return len(docs) - len(errors)
    return len(docs)


def pages_by_id(read: Callable[[list[str]], list[dict]], ids: list[str], after: str | None,
                size: int) -> Iterator[list[dict]]:
    """What ``read`` finds for the sorted ``ids`` above ``after``, ``size`` ids at a time;
    a page whose documents are all gone is skipped.

    FerretDB answers neither a range nor a sort on ``_id`` from its index, so paging by
    ``_id > cursor`` (or a sorted find) scans the whole collection per page: list the ids
    once instead, then read each page by id."""
    start = bisect.bisect_right(ids, after) if after is not None else 0
    for first in range(start, len(ids), size):
        page = read(ids[first:first + size])
        if page:
            yield page


def delete_by_ids(collection: pymongo.collection.Collection, ids: Iterable[str],
                  where: dict | None = None) -> int:
    """Delete the documents whose ``_id`` is one of ``ids`` (and that match ``where``, if
    given); returns how many were deleted.

    One ``_id`` equality per delete, sent ``BULK_CHUNK`` to a command: FerretDB 1.x answers
    that from its index, where ``{"_id": {"$in": ids}}`` scans the whole collection."""
    writes = [pymongo.DeleteOne({"_id": one, **(where or {})}) for one in sorted(set(ids))]
    deleted = 0
    for start in range(0, len(writes), BULK_CHUNK):
        deleted += collection.bulk_write(writes[start:start + BULK_CHUNK],
                                         ordered=False).deleted_count
    return deleted


def paced(items: Iterable, size: int, pause: Callable[[float], bool] | None) -> Iterator[list]:
    """``items`` (a list, or a stream such as a cursor) ``size`` at a time for background
    work: after each chunk, ``pause`` is called with the seconds the caller spent on it (to
    wait as long, leaving the store to others); it returns True to stop."""
    items = iter(items)
    while chunk := list(itertools.islice(items, size)):
        began = time.monotonic()
        yield chunk
        if pause is not None and pause(time.monotonic() - began):
            return


LISTING_BATCH = 5000  # documents per batch of a streamed listing: each well within the timeout


def older_than(collection: pymongo.collection.Collection, field_name: str, before: datetime,
               fields: Iterable[str] = ()) -> list[dict]:
    """The documents whose ``field_name`` is before ``before``, with ``_id``, that field and
    ``fields``.

    FerretDB 1.x answers a range filter by loading and filtering the whole collection inside
    one command, which outlasts the socket timeout once a collection is large (the
    history sweep would fail every time, keeping the store busy). One streamed read of the
    field, a batch at a time, compared here, keeps each command short."""
    projection = {field_name: 1, **{name: 1 for name in fields}}
    listing = collection.find({}, projection).batch_size(LISTING_BATCH)
    return [doc for doc in listing
            if isinstance(doc.get(field_name), datetime) and doc[field_name] < before]


EXPIRY_CHUNK = 500  # expired documents deleted between two pauses of a retention sweep


def delete_older(collection: pymongo.collection.Collection, field_name: str, before: datetime,
                 pause: Callable[[float], bool] | None = None) -> int:
    """Delete the documents whose ``field_name`` is before ``before`` (a retention sweep),
    found by one streamed read (``older_than``), ``EXPIRY_CHUNK`` at a time with ``pause``
    between chunks (``paced``); returns how many."""
    expired = [doc["_id"] for doc in older_than(collection, field_name, before)]
    return sum(delete_by_ids(collection, chunk) for chunk in paced(expired, EXPIRY_CHUNK, pause))


def documents_after(collection: pymongo.collection.Collection, after: str | None,
                    page_size: int = 200) -> Iterator[list[dict]]:
    """The documents of ``collection`` with ``_id`` above ``after``, in ``_id`` order, a page
    at a time; documents inserted after the first page are not seen.

    FerretDB answers neither a sort nor a range on ``_id`` from its index: a sorted find
    loads and sorts the whole collection before its first batch (22 s at 30k profiles, past
    the socket timeout at 100k). The ids are listed instead in one streamed pass, sorted here,
    and the documents read by id a page at a time."""
    listing = collection.find({}, {"_id": 1}).batch_size(LISTING_BATCH)
    ids = sorted(doc["_id"] for doc in listing)
    yield from pages_by_id(lambda page: sorted(find_by_ids(collection, page),
                                               key=lambda doc: doc["_id"]),
                           ids, after, page_size)


class EarlierCollection:
    """A collection an earlier version kept, which the housekeeping empties into what this
    version keeps and then drops: whether it is still there, looked up at most once every
    ``CHECK_SECONDS`` (readers consult it until then)."""

    CHECK_SECONDS = 60.0

    def __init__(self, db: Database, name: str):
        self.collection = db[name]
        self._checked_at, self._there = -self.CHECK_SECONDS, False

    def there(self, refresh: bool = False) -> bool:
        if refresh or time.monotonic() - self._checked_at > self.CHECK_SECONDS:
            self._there = self.collection.name in self.collection.database.list_collection_names()
            self._checked_at = time.monotonic()
        return self._there

    def drop(self) -> None:
        self.collection.drop()
        self._checked_at, self._there = time.monotonic(), False

    def drop_if_empty(self) -> bool:
        """Drop it once nothing is left in it; returns whether it is gone."""
        if self.collection.find_one({}, {"_id": 1}) is not None:
            return False
        self.drop()
        return True


def ping(client: pymongo.MongoClient) -> None:
    """Raise ConnectionFailure unless the store answers."""
    client.admin.command("ping")


@dataclass(frozen=True)
class Index:
    """An index a service needs; ``ttl_seconds`` asks the store to expire documents."""

    collection: str
    keys: list[tuple[str, int]]
    unique: bool = False
    ttl_seconds: int | None = None
    name: str | None = None
    options: dict = field(default_factory=dict)


INDEX_CONFLICTS = (85, 86)  # IndexOptionsConflict, IndexKeySpecsConflict


def ensure_indexes(db: Database, indexes: Iterable[Index]) -> dict[str, bool]:
    """Create ``indexes`` (idempotent). Returns, per TTL index name, whether the store honours
    TTL; FerretDB 1.x does not, and the owning service then deletes expired data itself.

    An index that already exists under another name or with other options (left by an older
    version) is kept and reported in the log, so a rolling upgrade never stops a service."""
    ttl_support: dict[str, bool] = {}
    for index in indexes:
        try:
            _ensure_index(db, index, ttl_support)
        except pymongo.errors.OperationFailure as exc:
            if exc.code not in INDEX_CONFLICTS:
                raise
            log.warning("an existing index differs from the declared one; keeping it",
                        extra={"collection": index.collection, "error": str(exc)})
    return ttl_support


def _ensure_index(db: Database, index: Index, ttl_support: dict[str, bool]) -> None:
    name = index.name or "_".join(f"{key}_{direction}" for key, direction in index.keys)
    options = {"name": name, "unique": index.unique, **index.options}
    if index.ttl_seconds is not None:
        try:
            db[index.collection].create_index(
                index.keys, expireAfterSeconds=index.ttl_seconds, **options)
            ttl_support[name] = _ttl_honoured(db, index.collection, name)
            return
        except pymongo.errors.OperationFailure as exc:
            if exc.code in INDEX_CONFLICTS:
                raise
            log.info("store refused a TTL index; expiring in the service instead",
                     extra={"index": name, "error": str(exc)})
            ttl_support[name] = False
    db[index.collection].create_index(index.keys, **options)


def _ttl_honoured(db: Database, collection: str, name: str) -> bool:
    info = db[collection].index_information().get(name, {})
    return "expireAfterSeconds" in info


class ProcessedLedger:
    """Which message_ids a consumer group has applied, so re-deliveries are skipped.

    One document per (group, message_id), kept ``RETENTION`` (far longer than any re-delivery
    window). ``seen`` looks a batch up by _id. Call ``prepare`` once at start.
    """

    COLLECTION = "processed_messages"
    RETENTION = timedelta(days=14)
    PURGE_EVERY_SECONDS = 3600.0
    # when each ledger collection is next purged by hand in this process: one purge serves
    # every group (it scans the whole collection), so a process's loops share it
    _purge_due: ClassVar[dict[str, float]] = {}

    def __init__(self, db: Database, group: str):
        self._collection = db[self.COLLECTION]
        self._group = group
        self._expire_by_hand = False

    @classmethod
    def indexes(cls) -> list[Index]:
        ttl = int(cls.RETENTION.total_seconds())
        return [Index(cls.COLLECTION, [("processed_at", 1)], ttl_seconds=ttl,
                      name="processed_at_ttl")]

    def prepare(self) -> None:
        """Create the ledger's index; where the store ignores TTL, expire entries by hand."""
        support = ensure_indexes(self._collection.database, self.indexes())
        self._expire_by_hand = not support.get(self.indexes()[0].name, False)

    def expire_if_due(self) -> int:
        """Where the store has no TTL index: purge entries past retention once an hour per
        process, the first time at a random moment of the first hour, so that processes
        started together do not all scan the ledger at once. Returns how many were deleted."""
        if not self._expire_by_hand:
            return 0
        now = time.monotonic()
        key = self._collection.full_name
        due = self._purge_due.setdefault(key, now + random.uniform(0, self.PURGE_EVERY_SECONDS))
        if now < due:
            return 0
        self._purge_due[key] = now + self.PURGE_EVERY_SECONDS
        return self.expire()

    def expire(self) -> int:
        """Delete every group's entries past retention now; returns how many."""
        cutoff = datetime.now(UTC) - self.RETENTION
        return self._collection.delete_many({"processed_at": {"$lt": cutoff}}).deleted_count

    def _id(self, message_id: str) -> str:
        return f"{self._group}:{message_id}"

    def seen(self, message_ids: Iterable[str]) -> set[str]:
        ids = [self._id(message_id) for message_id in message_ids]
        if not ids:
            return set()
        prefix = len(self._group) + 1
        return {doc["_id"][prefix:] for doc in find_by_ids(self._collection, ids, {"_id": 1})}

    def mark(self, message_ids: Iterable[str]) -> None:
        now = datetime.now(UTC)
        docs = [{"_id": self._id(message_id), "processed_at": now} for message_id in message_ids]
        insert_new(self._collection, docs)  # a re-delivery marks again what it marked
