"""What the identity service keeps about a data subject, erased or collected on request, and
the suppression list of erased identifiers.

The suppression list holds keyed digests (HMAC-SHA256), never the identifiers themselves: it
must outlive the erasure without becoming a copy of what was erased.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable
from datetime import datetime

from pymongo.database import Database

from services.common.store import find_by_ids
from services.identity.graph import Identifier
from services.identity.graph_store import CONFLICTS, LINKS, LOG, PROFILES
from services.identity.suggestions import RECORDS, SUGGESTIONS

SUPPRESSIONS = "identity_suppressions"


class GraphEraser:
    """Erasure and access over everything the identity service keeps about a subject."""

    def __init__(self, db: Database):
        self.db = db

    def erase(self, profile_ids: Iterable[str], identifiers: Iterable[Identifier]) -> dict:
        profile_ids, identifiers = sorted(set(profile_ids)), list(identifiers)
        ours = {"$in": profile_ids}
        links = sum(self.db[LINKS].delete_one({"_id": i.key, "profile_id": ours}).deleted_count
                    for i in identifiers)
        erased = {
            "links": links,
            "profiles": self.db[PROFILES].delete_many({"_id": ours}).deleted_count,
            "person_records": self.db[RECORDS].delete_many({"_id": ours}).deleted_count,
            "suggestions": self.db[SUGGESTIONS].delete_many(
                {"$or": [{"a": ours}, {"b": ours}]}).deleted_count,
            "conflicts": self.db[CONFLICTS].delete_many(
                {"$or": [{"profile_id": ours}, {"other_profile": ours}]}).deleted_count,
            # the log keeps that a merge or split happened, not which identifiers it involved
            "log_entries_anonymised": self.db[LOG].update_many(
                {"profiles": ours}, {"$set": {"identifier": None, "identifiers": []}}
            ).modified_count,
        }
        return erased

    def access(self, profile_ids: Iterable[str], identifiers: Iterable[Identifier]) -> dict:
        profile_ids = sorted(set(profile_ids))
        ours = {"$in": profile_ids}
        links = [doc for doc in (self.db[LINKS].find_one({"_id": i.key}) for i in identifiers)
                 if doc is not None and doc["profile_id"] in profile_ids]
        return {
            "profiles": profile_ids,
            "identifiers": [{"type": d["type"], "value": d["value"], "profile_id": d["profile_id"],
                             "verified": d.get("verified", True), "linked_at": d.get("linked_at")}
                            for d in links],
            "identity_log": [{k: v for k, v in entry.items() if k != "announced"}
                             for entry in self.db[LOG].find({"profiles": ours}).sort("at", 1)],
            "person_records": list(self.db[RECORDS].find({"_id": ours})),
        }


class SuppressionList:
    """Identifiers erased on request: events carrying one are dropped, not resolved."""

    def __init__(self, db: Database, key: bytes):
        self.collection = db[SUPPRESSIONS]
        self.key = key

    def digest(self, identifier: Identifier) -> str:
        return hmac.new(self.key, identifier.key.encode(), hashlib.sha256).hexdigest()

    def add(self, identifiers: Iterable[Identifier], request_id: str, at: datetime) -> int:
        added = 0
        for identifier in identifiers:
            result = self.collection.update_one(
                {"_id": self.digest(identifier)},
                {"$setOnInsert": {"type": identifier.type, "request_id": request_id, "at": at}},
                upsert=True)
            added += result.upserted_id is not None
        return added

    def any_suppressed(self, identifiers: Iterable[Identifier]) -> bool:
        digests = [self.digest(identifier) for identifier in identifiers]
        return bool(find_by_ids(self.collection, digests, {"_id": 1}))
