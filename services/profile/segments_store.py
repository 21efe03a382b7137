"""Segment definitions and memberships in MongoDB, and the progress of the membership pass.

* ``profile_segments``: one definition per segment (``_id`` = the segment id) with its rule,
  a ``version`` bumped on every change, and ``deleted`` once removed (the document stays until
  the membership pass has taken every profile out of the segment);
* ``profile_segment_members``: ``_id = "<segment_id>|<profile_id>"``, one per member, so
  members page and count without reading profiles;
* ``profile_jobs``: where the background membership pass stands (resumable).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from datetime import datetime
from typing import Any

import pymongo
import pymongo.errors
from pymongo.database import Database

from services.common.store import (
    Index,
    delete_by_ids,
)

SEGMENTS = "profile_segments"
MEMBERS = "profile_segment_members"
JOBS = "profile_jobs"
PASS_JOB = "segment-membership-pass"

SEGMENT_INDEXES = [Index(MEMBERS, [("segment_id", 1), ("profile_id", 1)]),
                   Index(MEMBERS, [("profile_id", 1)])]


class SegmentExists(Exception):
    pass


class SegmentVersionConflict(Exception):
    """The definition changed since the caller read it."""


class SegmentStore:
    def __init__(self, db: Database):
        self.segments = db[SEGMENTS]
        self.members = db[MEMBERS]
        self.jobs = db[JOBS]

    # definitions

    def create(self, segment_id: str, fields: dict[str, Any], by: str, at: datetime) -> dict:
        doc = {"_id": segment_id, **fields, "version": 1, "deleted": False, "created_at": at,
               "updated_at": at, "updated_by": by}
        existing = self.segments.find_one({"_id": segment_id})
        if existing and existing.get("deleted"):
            # the id of a deleted segment is reused: continue its version numbers
            doc["version"] = existing["version"] + 1
            self._replace(existing, doc)
            return doc
        try:
            self.segments.insert_one(doc)
        except pymongo.errors.DuplicateKeyError:
            raise SegmentExists(segment_id) from None
        return doc

    def update(self, segment_id: str, fields: dict[str, Any], by: str, at: datetime,
               expected_version: int | None = None) -> dict | None:
        """The updated definition, or None when there is no such (live) segment."""
        current = self.get(segment_id)
        if current is None:
            return None
        if expected_version is not None and expected_version != current["version"]:
            raise SegmentVersionConflict(segment_id)
        doc = {**current, **fields, "version": current["version"] + 1, "updated_at": at,
               "updated_by": by}
        self._replace(current, doc)
        return doc

    def delete(self, segment_id: str, by: str, at: datetime) -> bool:
        current = self.get(segment_id)
        if current is None:
            return False
        self._replace(current, {**current, "deleted": True, "version": current["version"] + 1,
                                "updated_at": at, "updated_by": by})
        return True

    def _replace(self, current: dict, doc: dict) -> None:
        if self.segments.replace_one({"_id": current["_id"], "version": current["version"]},
                                     doc).matched_count != 1:
            raise SegmentVersionConflict(current["_id"])

    def get(self, segment_id: str) -> dict | None:
        doc = self.segments.find_one({"_id": segment_id})
        return doc if doc and not doc.get("deleted") else None

    def all(self) -> list[dict]:
        """Every definition, deleted ones included (their members must still leave)."""
        return sorted(self.segments.find({}), key=lambda d: d["_id"])

    def purge_deleted(self, versions: dict[str, int]) -> None:
        """Remove deleted definitions whose deletion (``versions``) a finished pass applied."""
        for segment_id, version in versions.items():
            self.segments.delete_one({"_id": segment_id, "deleted": True, "version": version})

    # members

    def add_member(self, segment_id: str, profile_id: str, since: datetime) -> None:
        self.members.update_one({"_id": f"{segment_id}|{profile_id}"},
                                {"$setOnInsert": {"segment_id": segment_id,
                                                  "profile_id": profile_id, "since": since}},
                                upsert=True)

    def remove_member(self, segment_id: str, profile_id: str) -> None:
        self.members.delete_one({"_id": f"{segment_id}|{profile_id}"})

    def remove_profiles(self, profile_ids: Iterable[str]) -> int:
        """Take the profiles out of every segment, by member ``_id``: a deleted segment's
        definition stays until its members are out, so ``all`` names every segment a
        profile can still be a member of."""
        profile_ids = list(profile_ids)
        segment_ids = [doc["_id"] for doc in self.segments.find({}, {"_id": 1})]
        return delete_by_ids(self.members, [f"{segment_id}|{profile_id}"
                                            for segment_id in segment_ids
                                            for profile_id in profile_ids])

    def page(self, segment_id: str, after: str | None, limit: int) -> list[dict]:
        query: dict[str, Any] = {"segment_id": segment_id}
        if after:
            query["profile_id"] = {"$gt": after}
        return list(self.members.find(query, {"_id": 0}).sort("profile_id", 1).limit(limit))

    def count(self, segment_id: str) -> int:
        return self.members.count_documents({"segment_id": segment_id})

    # the membership pass

    def pass_state(self) -> dict:
        return self.jobs.find_one({"_id": PASS_JOB}) or {"_id": PASS_JOB, "key": None,
                                                          "after": None, "done": False}

    def save_pass_state(self, key: str, after: str | None, done: bool) -> None:
        self.jobs.replace_one({"_id": PASS_JOB},
                              {"key": key, "after": after, "done": done}, upsert=True)


def pass_key(definitions: list[dict], day: str) -> str:
    """What a membership pass evaluates: every definition's version, and the day (rules over
    time windows and recency change with it)."""
    versions = ",".join(f"{d['_id']}:{d['version']}" for d in definitions)
    return f"{day}|" + hashlib.sha256(versions.encode()).hexdigest()[:16]
