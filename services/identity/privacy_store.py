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

from pymongo import ReturnDocument
from pymongo.database import Database

from services.common.erasure_counts import ErasureCounts
from services.common.store import delete_by_ids, find_by_ids, insert_new
from services.identity.graph import Identifier
from services.identity.graph_store import CONFLICTS, LINKS, LOG, LOG_ANONYMISED, PROFILES
from services.identity.suggestions import RECORDS, SUGGESTIONS

SUPPRESSIONS = "identity_suppressions"
ERASING = "identity_erasures_in_progress"
ERASURE_COUNTS = "identity_erasure_counts"  # services.common.erasure_counts
SUPPRESSION_VERSION = "identity_suppression_version"


class GraphEraser:
    """Erasure and access over everything the identity service keeps about a subject."""

    def __init__(self, db: Database):
        self.db = db
        self.counts = ErasureCounts(db[ERASURE_COUNTS])

    def erase_graph(self, profile_ids: Iterable[str], identifiers: Iterable[Identifier]) -> dict:
        """The subject's links and profile nodes: with the profiles locked (see
        privacy.locked_subject), since a resolution links to them under those locks."""
        profile_ids = sorted(set(profile_ids))
        ours = {"$in": profile_ids}
        return {
            "links": delete_by_ids(self.db[LINKS], [i.key for i in identifiers],
                                   where={"profile_id": ours}),
            # by _id, one each: FerretDB answers _id equality from its index, $in by a scan
            "profiles": delete_by_ids(self.db[PROFILES], profile_ids),
        }

    def note_erasing(self, request_id: str, profile_ids: Iterable[str],
                     identifiers: Iterable[Identifier]) -> tuple[set[str], set[Identifier]]:
        """Note the profiles and identifiers an erasure is about to delete; returns them
        and those an earlier attempt of the request noted (until ``erased``)."""
        doc = self.db[ERASING].find_one_and_update({"_id": request_id}, {"$addToSet": {
            "profile_ids": {"$each": sorted(profile_ids)},
            "identifiers": {"$each": sorted(i.key for i in identifiers)}}},
            upsert=True, return_document=ReturnDocument.AFTER)
        return (set(doc.get("profile_ids", [])),
                {Identifier.from_key(key) for key in doc.get("identifiers", [])})

    def erased(self, request_id: str) -> None:
        self.db[ERASING].delete_one({"_id": request_id})

    def erase_traces(self, profile_ids: Iterable[str], identifiers: Iterable[Identifier]) -> dict:
        """What else names the subject's profiles, once their nodes are gone (these are
        scans on FerretDB, kept out of the locks), and the conflicts naming its identifiers
        on other customers' profiles."""
        profile_ids = sorted(set(profile_ids))
        ours = {"$in": profile_ids}
        named = [{"identifier.type": i.type, "identifier.value": i.value} for i in identifiers]
        return {
            "person_records": delete_by_ids(self.db[RECORDS], profile_ids),
            "suggestions": self.db[SUGGESTIONS].delete_many(
                {"$or": [{"a": ours}, {"b": ours}]}).deleted_count,
            "conflicts": self.db[CONFLICTS].delete_many(
                {"$or": [{"profile_id": ours}, {"other_profile": ours}, *named]}).deleted_count,
            # the log keeps that a merge or split happened, not which identifiers it involved
            "log_entries_anonymised": self.db[LOG].update_many(
                {"profiles": ours}, LOG_ANONYMISED).modified_count,
        }

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
            "person_records": find_by_ids(self.db[RECORDS], profile_ids),
        }


class SuppressionList:
    """Identifiers erased on request: events carrying one are dropped, not resolved.

    The worker checks every identifier of every event, so it keeps the digests in memory and
    asks the store only whether the list changed (one read per batch of events instead of
    one per identifier): each ``add`` bumps a version number after adding its digests.
    """

    def __init__(self, db: Database, key: bytes):
        self.collection = db[SUPPRESSIONS]
        self.versions = db[SUPPRESSION_VERSION]
        self.key = key
        self._digests: set[str] = set()
        self._version: int | None = None

    def digest(self, identifier: Identifier) -> str:
        return hmac.new(self.key, identifier.key.encode(), hashlib.sha256).hexdigest()

    def add(self, identifiers: Iterable[Identifier], request_id: str, at: datetime) -> int:
        added = insert_new(self.collection, [
            {"_id": digest, "type": identifier.type, "request_id": request_id, "at": at}
            for digest, identifier in {self.digest(i): i for i in identifiers}.items()])
        # bumped even when nothing was new: a crash may have come between the adds and the bump
        self.versions.update_one({"_id": "current"}, {"$inc": {"version": 1}}, upsert=True)
        return added

    def refresh(self) -> None:
        """Reload the digests if the list changed since the last load."""
        doc = self.versions.find_one({"_id": "current"}) or {}
        version = doc.get("version", 0)
        if version != self._version:
            # version first, digests second: what is loaded is at least that version
            self._digests = {d["_id"] for d in self.collection.find({}, {"_id": 1})}
            self._version = version

    def any_suppressed(self, identifiers: Iterable[Identifier]) -> bool:
        """Against the list as of the last ``refresh``."""
        return any(self.digest(identifier) in self._digests for identifier in identifiers)
