"""The identity graph kept in MongoDB (works on FerretDB 1.x: no transactions needed).

Collections: ``identity_links`` (one document per identifier, ``_id`` = "type:value", so the
store itself guarantees an identifier belongs to one profile), ``identity_profiles`` (creation
time, ``merged_into``, a lease lock), ``identity_log`` (merges, splits, releases: the outbox
that the worker re-emits on ``cdp.identity.merges``) and ``identity_conflicts``.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta

import pymongo
import pymongo.errors
from pymongo.database import Database

from services.common.store import Index
from services.identity.graph import (
    Conflict,
    GraphRepository,
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
CONFLICTS = "identity_conflicts"

INDEXES = [
    Index(LINKS, [("profile_id", 1)]),
    Index(LOG, [("cause_message_id", 1)]),
    Index(LOG, [("profiles", 1)]),
    Index(CONFLICTS, [("profile_id", 1)]),
]

LOCK_LEASE = timedelta(seconds=15)


class MongoGraph(GraphRepository):
    def __init__(self, db: Database, lock_wait_seconds: float = 10.0):
        self.links_ = db[LINKS]
        self.profiles = db[PROFILES]
        self.log = db[LOG]
        self.conflicts = db[CONFLICTS]
        self.lock_wait_seconds = lock_wait_seconds

    # reads

    def links(self, identifiers: Iterable[Identifier]) -> dict[Identifier, Link]:
        keys = [identifier.key for identifier in identifiers]
        return {Identifier(doc["type"], doc["value"]): _link(doc)
                for doc in self.links_.find({"_id": {"$in": keys}})}

    def links_of(self, profile_id: str) -> list[Link]:
        return [_link(doc) for doc in self.links_.find({"profile_id": profile_id}).sort("_id", 1)]

    def profile(self, profile_id: str) -> ProfileNode | None:
        doc = self.profiles.find_one({"_id": profile_id}, {"created_at": 1, "merged_into": 1})
        if doc is None:
            return None
        return ProfileNode(doc["_id"], doc["created_at"], doc.get("merged_into"))

    def count_by_type(self, profile_id: str) -> dict[str, int]:
        rows = self.links_.aggregate([
            {"$match": {"profile_id": profile_id}},
            {"$group": {"_id": "$type", "n": {"$sum": 1}}},
        ])
        return {row["_id"]: row["n"] for row in rows}

    def log_entries(self, *, cause_message_id: str | None = None,
                    profile_id: str | None = None) -> list[dict]:
        if cause_message_id is not None:
            query = {"cause_message_id": cause_message_id}
        else:
            query = {"profiles": profile_id}
        return list(self.log.find(query).sort("at", 1))

    def entry(self, entry_id: str) -> dict:
        return self.log.find_one({"_id": entry_id})

    # writes

    def create_profile(self, node: ProfileNode) -> None:
        self.profiles.update_one(
            {"_id": node.profile_id},
            {"$setOnInsert": {"created_at": node.created_at, "merged_into": None}},
            upsert=True,
        )

    def add_link(self, link: Link) -> None:
        doc = {
            "_id": link.identifier.key, "type": link.identifier.type,
            "value": link.identifier.value, "profile_id": link.profile_id,
            "verified": link.verified, "source_message_id": link.source_message_id,
            "linked_at": link.linked_at,
        }
        try:
            self.links_.insert_one(doc)
        except pymongo.errors.DuplicateKeyError:
            existing = self.links_.find_one({"_id": link.identifier.key})
            if existing is None or existing["profile_id"] != link.profile_id:
                raise LinkTaken(link.identifier.key) from None

    def merge(self, merge: Merge) -> None:
        self.log.update_one({"_id": merge.merge_id}, {"$setOnInsert": {
            "kind": "merge", "survivor": merge.survivor, "merged": merge.merged,
            "profiles": [merge.survivor, merge.merged],
            "identifier": {"type": merge.identifier.type, "value": merge.identifier.value},
            "cause_message_id": merge.cause_message_id, "at": merge.at,
        }}, upsert=True)
        self.profiles.update_one({"_id": merge.merged}, {"$set": {"merged_into": merge.survivor}})
        self.links_.update_many({"profile_id": merge.merged},
                                {"$set": {"profile_id": merge.survivor}})

    def move_links(self, identifiers: Iterable[Identifier], from_profile: str,
                   to_profile: str) -> None:
        self.links_.update_many(
            {"_id": {"$in": [i.key for i in identifiers]}, "profile_id": from_profile},
            {"$set": {"profile_id": to_profile}})

    def remove_links(self, identifiers: Iterable[Identifier], profile_id: str) -> int:
        result = self.links_.delete_many(
            {"_id": {"$in": [i.key for i in identifiers]}, "profile_id": profile_id})
        return result.deleted_count

    def record_split(self, split: Split) -> None:
        profiles = [split.profile_id] + ([split.new_profile_id] if split.new_profile_id else [])
        self.log.update_one({"_id": split.split_id}, {"$setOnInsert": {
            "kind": split.kind, "profile_id": split.profile_id,
            "new_profile_id": split.new_profile_id, "profiles": profiles,
            "identifiers": [{"type": i.type, "value": i.value} for i in split.identifiers],
            "reason": split.reason, "actor": split.actor, "at": split.at,
            "cause_message_id": None,
        }}, upsert=True)

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

    @contextmanager
    def lock(self, profile_ids: Iterable[str]) -> Iterator[None]:
        """Lease locks on the profiles, taken in sorted order (no deadlock between workers).

        Raises TimeoutError when a lock is not free within ``lock_wait_seconds``; the lease
        expires by itself if its holder dies."""
        token = uuid.uuid4().hex
        held: list[str] = []
        try:
            for profile_id in sorted(set(profile_ids)):
                self._acquire(profile_id, token)
                held.append(profile_id)
            yield
        finally:
            for profile_id in held:
                self.profiles.update_one({"_id": profile_id, "lock_owner": token},
                                         {"$set": {"lock_owner": None, "lock_until": None}})

    def _acquire(self, profile_id: str, token: str) -> None:
        deadline = time.monotonic() + self.lock_wait_seconds
        delay = 0.005
        while True:
            now = datetime.now(UTC)
            taken = self.profiles.find_one_and_update(
                {"_id": profile_id,
                 "$or": [{"lock_until": None}, {"lock_until": {"$lt": now}}]},
                {"$set": {"lock_owner": token, "lock_until": now + LOCK_LEASE}},
            )  # no projection: FerretDB 1.x findAndModify does not implement "fields"
            if taken is not None:
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"profile {profile_id} stayed locked")
            time.sleep(delay)
            delay = min(delay * 2, 0.2)


def _link(doc: dict) -> Link:
    return Link(Identifier(doc["type"], doc["value"]), doc["profile_id"],
                doc.get("verified", True), doc.get("source_message_id", ""),
                doc.get("linked_at"))
