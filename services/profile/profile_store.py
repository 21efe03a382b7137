"""Profiles in MongoDB: one document per profile, an identifier index, the access log.

Reads and writes go by ``_id`` (FerretDB 1.x pushes little else down). A profile is written
with a version check, so two workers can never lose each other's update.
"""

from __future__ import annotations

from datetime import datetime

import pymongo.errors
from pymongo.database import Database

from services.common.store import Index

PROFILES = "profiles"
IDENTIFIERS = "profile_identifiers"
ACCESS_LOG = "profile_access_log"

INDEXES = [Index(ACCESS_LOG, [("profile_id", 1), ("at", -1)])]


class VersionConflict(Exception):
    """Someone else wrote the profile since it was read; read again and retry."""


class ProfileStore:
    def __init__(self, db: Database):
        self.profiles = db[PROFILES]
        self.identifiers = db[IDENTIFIERS]
        self.access_log = db[ACCESS_LOG]

    def load(self, profile_id: str) -> dict | None:
        return self.profiles.find_one({"_id": profile_id})

    def load_current(self, profile_id: str) -> dict | None:
        """The profile, following merges to the one that absorbed it."""
        seen = set()
        doc = self.load(profile_id)
        while doc and doc.get("merged_into") and doc["_id"] not in seen:
            seen.add(doc["_id"])
            doc = self.load(doc["merged_into"]) or doc
        return doc

    def save(self, doc: dict) -> None:
        """Insert a new profile or replace the stored one if nobody changed it meanwhile.

        Raises VersionConflict otherwise."""
        version = doc.get("version", 0)
        new = {**doc, "version": version + 1}
        if version == 0:
            try:
                self.profiles.insert_one(new)
            except pymongo.errors.DuplicateKeyError:
                raise VersionConflict(doc["_id"]) from None
        elif self.profiles.replace_one({"_id": doc["_id"], "version": version},
                                       new).matched_count != 1:
            raise VersionConflict(doc["_id"])
        doc["version"] = version + 1

    def index(self, profile_id: str, identifiers: dict[str, list[str]]) -> None:
        for type_, values in identifiers.items():
            for value in values:
                self.identifiers.update_one({"_id": f"{type_}:{value}"},
                                            {"$set": {"profile_id": profile_id}}, upsert=True)

    def unindex(self, type_: str, value: str, profile_id: str) -> None:
        self.identifiers.delete_one({"_id": f"{type_}:{value}", "profile_id": profile_id})

    def find_by_identifier(self, type_: str, value: str) -> dict | None:
        entry = self.identifiers.find_one({"_id": f"{type_}:{value}"})
        return self.load_current(entry["profile_id"]) if entry else None

    def log_access(self, *, profile_id: str, key_id: str, roles: list[str], purpose: str,
                   endpoint: str, at: datetime) -> None:
        self.access_log.insert_one({"profile_id": profile_id, "key_id": key_id, "roles": roles,
                                    "purpose": purpose, "endpoint": endpoint, "at": at})

    def accesses(self, profile_id: str, limit: int) -> list[dict]:
        return list(self.access_log.find({"profile_id": profile_id}, {"_id": 0})
                    .sort("at", -1).limit(limit))
