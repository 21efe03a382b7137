"""The identity graph kept in MongoDB (works on FerretDB 1.x: no transactions needed).

Collections: ``identity_links`` (one document per identifier, ``_id`` = "type:value", so the
store itself guarantees an identifier belongs to one profile), ``identity_profiles`` (creation
time, ``merged_into``, the profiles it ``absorbed``, the profile's identifiers by type, and as
``renamed`` the keys of those that are earlier names of another: an account renamed),
``identity_locks`` (lease locks, one document per locked profile), ``identity_log`` (merges,
splits, releases), ``identity_outbox`` (which log entries each event caused, re-emitted on
``cdp.identity.merges`` whenever the event is handled) and ``identity_conflicts``.

Hot paths read and write by ``_id`` only: FerretDB 1.x pushes little else down to its backend,
so a filter on any other field scans the collection. The profile document therefore carries
its identifiers (kept with the idempotent ``$addToSet``/``$pull``) instead of the graph asking
the links collection "which links has this profile".
"""

from __future__ import annotations

import copy
import time
import uuid
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta

import pymongo
import pymongo.errors
from pymongo import UpdateOne
from pymongo.database import Database

from services.common.store import (
    LISTING_BATCH,
    Index,
    bulk_write,
    delete_by_ids,
    find_by_ids,
    insert_new,
    raise_write_errors,
)
from services.identity.graph import (
    Conflict,
    GraphRepository,
    GraphSnapshot,
    Identifier,
    Link,
    LinkTaken,
    Merge,
    ProfileNode,
    Split,
)

LINKS = "identity_links"
PROFILES = "identity_profiles"
LOG = "identity_log"
OUTBOX = "identity_outbox"
CONFLICTS = "identity_conflicts"
LOCKS = "identity_locks"
# what an erasure leaves of a log entry: that a merge or split happened, not with what
LOG_ANONYMISED = {"$set": {"identifier": None, "identifiers": []}}

INDEXES = [
    Index(LOG, [("profiles", 1)]),
    Index(CONFLICTS, [("profile_id", 1)]),
]

LOCK_LEASE = timedelta(seconds=15)


class MongoGraph(GraphRepository):
    _ahead: _LocksAhead | None = None  # set on the graph a batch resolves through

    def __init__(self, db: Database, lock_wait_seconds: float = 10.0):
        self.links_ = db[LINKS]
        self.profiles = db[PROFILES]
        self.log = db[LOG]
        self.outbox = db[OUTBOX]
        self.conflicts = db[CONFLICTS]
        self.locks = db[LOCKS]
        self.lock_wait_seconds = lock_wait_seconds

    # reads

    def links(self, identifiers: Iterable[Identifier]) -> dict[Identifier, Link]:
        docs = find_by_ids(self.links_, [identifier.key for identifier in identifiers])
        return {link.identifier: link for link in map(_link, docs)}

    def all_links(self) -> Iterator[Link]:
        """Every link, from one streamed read in no order (FerretDB would load the whole
        collection to sort it)."""
        return map(_link, self.links_.find({}).batch_size(LISTING_BATCH))

    def links_of(self, profile_id: str) -> list[Link]:
        return list(self.links(sorted(self.listed(profile_id))).values())

    def profile(self, profile_id: str) -> ProfileNode | None:
        doc = self.profiles.find_one({"_id": profile_id})
        return _node(doc) if doc is not None else None

    def read_profiles(self, profile_ids: Iterable[str]) -> dict[str, ProfileNode]:
        return {doc["_id"]: _node(doc) for doc in find_by_ids(self.profiles, list(profile_ids))}

    def snapshot(self, identifiers: Iterable[Identifier]) -> GraphSnapshot:
        """The links of ``identifiers`` and the profiles they point to, in two queries."""
        identifiers = set(identifiers)
        links = self.links(identifiers)
        return GraphSnapshot(self, identifiers, links, self.read_profiles(
            sorted({link.profile_id for link in links.values()})))

    def caused_by(self, message_id: str) -> list[dict]:
        """The log entries an event caused, in order (the outbox of cdp.identity.merges)."""
        return self.caused_by_each([message_id])[message_id]

    def caused_by_each(self, message_ids: list[str]) -> dict[str, list[dict]]:
        """``caused_by`` for several events, in one query when none caused anything."""
        outboxes = {doc["_id"]: doc.get("entries", [])
                    for doc in find_by_ids(self.outbox, message_ids)}
        wanted = [entry_id for entries in outboxes.values() for entry_id in entries]
        by_id = {entry["_id"]: entry for entry in find_by_ids(self.log, wanted)}
        return {message_id: [by_id[e] for e in outboxes.get(message_id, []) if e in by_id]
                for message_id in message_ids}

    def log_entries(self, profile_id: str) -> list[dict]:
        return list(self.log.find({"profiles": profile_id}).sort("at", 1))

    def entry(self, entry_id: str) -> dict:
        return self.log.find_one({"_id": entry_id})

    def merged_into(self, profile_ids: Iterable[str]) -> list[str]:
        """Profiles merged into any of ``profile_ids``: the survivors list them (``absorbed``),
        since asking which profiles point at them would scan the collection."""
        return sorted({absorbed for doc in find_by_ids(self.profiles, list(profile_ids))
                       for absorbed in doc.get("absorbed", [])})

    # writes

    def create_profile(self, node: ProfileNode) -> None:
        self.profiles.update_one(
            {"_id": node.profile_id},
            {"$setOnInsert": {"created_at": node.created_at, "merged_into": None,
                              "identifiers": {}}},
            upsert=True,
        )

    def add_links(self, links: list[Link]) -> None:
        taken = self.link_together([], links)
        if taken:
            raise LinkTaken(sorted(taken)[0])

    def link_together(self, created: list[ProfileNode], links: list[Link]) -> set[str]:
        """Three round trips for them all: the new profiles, the links, then the records'
        lists of the links stored. A crash in between is repaired when the events are
        re-delivered; the links stored are listed even when another was taken, since a merge
        moves what is listed."""
        insert_new(self.profiles, [{"_id": node.profile_id, "created_at": node.created_at,
                                    "merged_into": None, "identifiers": {}}
                                   for node in created])
        taken = self._insert_links(links) if links else set()
        held: dict[str, list[Identifier]] = {}
        for link in links:
            if link.identifier.key not in taken:
                held.setdefault(link.profile_id, []).append(link.identifier)
        raise_write_errors(bulk_write(self.profiles, [
            UpdateOne({"_id": profile_id}, _listing(identifiers))
            for profile_id, identifiers in held.items()]))
        return taken

    def _insert_links(self, links: list[Link]) -> set[str]:
        """Store the links; returns the keys of those another profile holds already."""
        docs = [{
            "_id": link.identifier.key, "type": link.identifier.type,
            "value": link.identifier.value, "profile_id": link.profile_id,
            "verified": link.verified, "source_message_id": link.source_message_id,
            "linked_at": link.linked_at,
        } for link in links]
        try:
            self.links_.insert_many(docs, ordered=False)
        except pymongo.errors.BulkWriteError as exc:
            errors = exc.details.get("writeErrors", [])
            if any(error.get("code") != 11000 for error in errors):
                raise
            # linked before: by this event's earlier attempt, or by another worker
            duplicates = [links[error["index"]] for error in errors]
            existing = self.links(link.identifier for link in duplicates)
            return {link.identifier.key for link in duplicates
                    if link.identifier not in existing
                    or existing[link.identifier].profile_id != link.profile_id}
        return set()

    def merge(self, merge: Merge) -> None:
        self.log.update_one({"_id": merge.merge_id}, {"$setOnInsert": {
            "kind": "merge", "survivor": merge.survivor, "merged": merge.merged,
            "profiles": [merge.survivor, merge.merged],
            "identifier": {"type": merge.identifier.type, "value": merge.identifier.value}
            if merge.identifier else None,
            "cause_message_id": merge.cause_message_id, "at": merge.at,
            # an event's merges are re-emitted with the event; a person's decision is announced
            # by the API, or by the worker's relay if Kafka was away
            "announced": merge.identifier is not None,
        }}, upsert=True)
        self.outbox.update_one({"_id": merge.cause_message_id},
                               {"$addToSet": {"entries": merge.merge_id}}, upsert=True)
        # the survivor names it first: an erasure of the survivor then finds it even when a
        # crash came before the merge was finished (re-delivery finishes it)
        self.profiles.update_one({"_id": merge.survivor}, {"$addToSet": {"absorbed": merge.merged}})
        self.profiles.update_one({"_id": merge.merged}, {"$set": {"merged_into": merge.survivor}})
        merged = self.profiles.find_one({"_id": merge.merged}) or {}
        moved = _listed(merged)
        self._add_to_profile(merge.survivor, moved, _renamed(merged))
        for identifier in moved:
            self.links_.update_one({"_id": identifier.key, "profile_id": merge.merged},
                                   {"$set": {"profile_id": merge.survivor}})

    def move_links(self, identifiers: Iterable[Identifier], from_profile: str,
                   to_profile: str) -> None:
        identifiers = list(identifiers)
        self._add_to_profile(to_profile, identifiers)
        if from_profile == to_profile:
            return  # only the profile's record was behind its links
        for identifier in identifiers:
            self.links_.update_one({"_id": identifier.key, "profile_id": from_profile},
                                   {"$set": {"profile_id": to_profile}})
        self._remove_from_profile(from_profile, identifiers)

    def remove_links(self, identifiers: Iterable[Identifier], profile_id: str) -> int:
        identifiers = list(identifiers)
        # off the list first: a crash in between leaves a link the record does not list,
        # which a retry still finds (and a resolution lists again), not a listed identifier
        # without a link, which nothing finds
        self._remove_from_profile(profile_id, identifiers)
        return sum(self.links_.delete_one({"_id": i.key, "profile_id": profile_id}).deleted_count
                   for i in identifiers)

    def note_renamed(self, profile_id: str, identifiers: Iterable[Identifier]) -> None:
        self.profiles.update_one({"_id": profile_id}, {"$addToSet": {"renamed": {
            "$each": sorted(identifier.key for identifier in identifiers)}}})

    def _add_to_profile(self, profile_id: str, identifiers: list[Identifier],
                        renamed: Iterable[Identifier] = ()) -> None:
        if identifiers:
            self.profiles.update_one({"_id": profile_id}, _listing(identifiers, renamed))

    def _remove_from_profile(self, profile_id: str, identifiers: list[Identifier]) -> None:
        for identifier in identifiers:
            field = f"identifiers.{identifier.type}"
            self.profiles.update_one({"_id": profile_id}, {"$pull": {
                field: identifier.value, "renamed": identifier.key}})

    def record_split(self, split: Split) -> None:
        profiles = [split.profile_id] + ([split.new_profile_id] if split.new_profile_id else [])
        self.log.update_one({"_id": split.split_id}, {"$setOnInsert": {
            "kind": split.kind, "profile_id": split.profile_id,
            "new_profile_id": split.new_profile_id, "profiles": profiles,
            "identifiers": [{"type": i.type, "value": i.value} for i in split.identifiers],
            "reason": split.reason, "actor": split.actor, "at": split.at,
            "cause_message_id": None, "announced": False,
        }}, upsert=True)

    def mark_announced(self, entry_ids: list[str]) -> None:
        for entry_id in entry_ids:
            self.log.update_one({"_id": entry_id}, {"$set": {"announced": True}})

    def unannounced(self, before: datetime) -> list[dict]:
        return list(self.log.find({"announced": False, "at": {"$lt": before}}).limit(500))

    def record_conflicts(self, message_id: str, conflicts: list[Conflict],
                         at: datetime) -> None:
        for conflict in conflicts:
            self.conflicts.update_one(
                {"_id": f"{message_id}:{conflict.identifier.key}"},
                {"$setOnInsert": {
                    "profile_id": conflict.profile_id, "other_profile": conflict.other_profile,
                    "identifier": {"type": conflict.identifier.type,
                                   "value": conflict.identifier.value},
                    "reason": conflict.reason, "message_id": message_id, "at": at}},
                upsert=True)

    def drop_conflicts(self, identifiers_by_message: Mapping[str, Iterable[Identifier]]
                       ) -> None:
        """Forget the conflicts these events recorded (dropped after all: erased on request)."""
        delete_by_ids(self.conflicts, [f"{message_id}:{identifier.key}"
                                       for message_id, identifiers in identifiers_by_message.items()
                                       for identifier in identifiers])

    def anonymise_log(self, entry_ids: list[str]) -> None:
        """Blank the identifiers of these identity-log entries, as an erasure does."""
        raise_write_errors(bulk_write(self.log, [
            UpdateOne({"_id": entry_id}, LOG_ANONYMISED) for entry_id in entry_ids]))

    @contextmanager
    def locking_ahead(self, profile_ids: Iterable[str]) -> Iterator[MongoGraph]:
        """This graph, for the block, with the locks on ``profile_ids`` taken in one write and
        released in one: a batch names the profiles its events will change (graph.
        profiles_to_lock), and ``lock`` on them then costs no round trip.

        Those held by someone else (or a lease a dead worker left) are left out, not waited
        for; and before the graph waits on any lock it lets go of all the batch's. So it never
        holds a lock while it waits for one (no deadlock between workers), and whoever waits
        on the batch's locks waits at most until then, or the block's end: keep blocks short
        (the worker takes a few dozen events' locks at a time)."""
        view = copy.copy(self)
        view._ahead = _LocksAhead(self.locks, profile_ids)
        try:
            yield view
        finally:
            view._ahead.release()

    def held_ahead(self) -> set[str]:
        """The profiles whose locks this view holds (taken by ``locking_ahead``), read once:
        use them before a third of a lease has passed."""
        return self._ahead.still_held() if self._ahead is not None else set()

    @contextmanager
    def lock(self, profile_ids: Iterable[str]) -> Iterator[None]:
        """Lease locks on the profiles, taken in sorted order (no deadlock between workers).

        A lock is a document in ``identity_locks`` whose ``_id`` is the profile id: inserting
        a duplicate ``_id`` is the one check FerretDB 1.x enforces against a concurrent
        writer (a filtered update is not atomic there). Raises TimeoutError when the locks are
        not all taken within ``lock_wait_seconds``; the lease expires by itself if its holder
        dies. On a ``locking_ahead`` view, locks the batch holds cost nothing; any other
        first makes the batch give up all of its own."""
        wanted = sorted(set(profile_ids))
        if self._ahead is not None:
            if self._ahead.covers(wanted):
                yield
                return
            # never wait while holding the batch's locks (see locking_ahead)
            self._ahead.release()
        token = uuid.uuid4().hex
        held: list[str] = []
        # one wait for them all, shorter than a lease: the first is still held when the last
        # is taken
        deadline = time.monotonic() + self.lock_wait_seconds
        try:
            for profile_id in wanted:
                self._acquire(profile_id, token, deadline)
                held.append(profile_id)
            yield
        finally:
            for profile_id in held:
                self.locks.delete_one({"_id": profile_id, "owner": token})

    def _acquire(self, profile_id: str, token: str, deadline: float) -> None:
        delay = 0.005
        while True:
            now = datetime.now(UTC)
            try:
                self.locks.insert_one({"_id": profile_id, "owner": token,
                                       "until": now + LOCK_LEASE})
                return
            except pymongo.errors.DuplicateKeyError:
                held = self.locks.find_one({"_id": profile_id})
                if held is not None and held["until"] < now:
                    # its holder died: clear that lease (only that one) and try again
                    self.locks.delete_one({"_id": profile_id, "owner": held["owner"]})
                    continue
            if time.monotonic() > deadline:
                raise TimeoutError(f"profile {profile_id} stayed locked")
            time.sleep(delay)
            delay = min(delay * 2, 0.2)


class _LocksAhead:
    """The locks a batch took together (see MongoGraph.locking_ahead). Used for no more than
    a third of a lease, so a block entered under one has two thirds of the lease left; after
    that the batch gives them up and locks one event at a time."""

    def __init__(self, locks: pymongo.collection.Collection, profile_ids: Iterable[str]):
        self.locks = locks
        self.token = uuid.uuid4().hex
        self._expires = time.monotonic() + LOCK_LEASE.total_seconds() / 3
        until = datetime.now(UTC) + LOCK_LEASE
        docs = [{"_id": profile_id, "owner": self.token, "until": until}
                for profile_id in sorted(set(profile_ids))]
        self._tried = [doc["_id"] for doc in docs]  # released by owner, whatever the insert said
        refused: set[str] = set()
        try:
            if docs:
                self.locks.insert_many(docs, ordered=False)
        except pymongo.errors.BulkWriteError as exc:
            errors = exc.details.get("writeErrors", [])
            if any(error.get("code") != 11000 for error in errors):
                self.release()
                raise
            # held by another worker, or a lease a dead one left
            refused = {docs[error["index"]]["_id"] for error in errors}
        except pymongo.errors.PyMongoError:
            self.release()
            raise
        self.held = set(self._tried) - refused

    def covers(self, profile_ids: list[str]) -> bool:
        return set(profile_ids) <= self.still_held()

    def still_held(self) -> set[str]:
        if time.monotonic() >= self._expires:
            self.release()
        return set(self.held)

    def release(self) -> None:
        tried, self._tried, self.held = self._tried, [], set()
        delete_by_ids(self.locks, tried, where={"owner": self.token})


def _listing(identifiers: list[Identifier], renamed: Iterable[Identifier] = ()) -> dict:
    """The update listing ``identifiers`` on a profile's record, ``renamed`` (among them) as
    earlier names."""
    by_type: dict[str, list[str]] = {}
    for identifier in identifiers:
        by_type.setdefault(identifier.type, []).append(identifier.value)
    listing = {f"identifiers.{t}": {"$each": values} for t, values in by_type.items()}
    if renamed:
        listing["renamed"] = {"$each": sorted(identifier.key for identifier in renamed)}
    return {"$addToSet": listing}


def _node(profile_doc: dict) -> ProfileNode:
    return ProfileNode(profile_doc["_id"], profile_doc["created_at"],
                       profile_doc.get("merged_into"), frozenset(_listed(profile_doc)),
                       frozenset(_renamed(profile_doc)))


def _listed(profile_doc: dict) -> list[Identifier]:
    return [Identifier(type_, value)
            for type_, values in (profile_doc.get("identifiers") or {}).items()
            for value in values]


def _renamed(profile_doc: dict) -> list[Identifier]:
    return [Identifier.from_key(key) for key in profile_doc.get("renamed") or ()]


def _link(doc: dict) -> Link:
    return Link(Identifier(doc["type"], doc["value"]), doc["profile_id"],
                doc.get("verified", True), doc.get("source_message_id", ""),
                doc.get("linked_at"))

