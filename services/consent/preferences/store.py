"""Mongo repositories of the preference centre: challenges (hashed one-time codes), sessions
(hashed ids) and rate-limit counters. Each document carries ``expires_at``; a TTL index removes
them where the store honours it and ``purge_expired`` where it does not (FerretDB 1.x)."""

from __future__ import annotations

from dataclasses import asdict
from datetime import datetime

from pymongo import ReturnDocument
from pymongo.database import Database

from services.common.store import Index, ensure_indexes
from services.consent.preferences.codes import Challenge
from services.consent.preferences.sessions import Session

CHALLENGES = "preference_challenges"
SESSIONS = "preference_sessions"
COUNTERS = "preference_rate_counters"
COLLECTIONS = (CHALLENGES, SESSIONS, COUNTERS)


def prepare(db: Database) -> None:
    ensure_indexes(db, [Index(name, [("expires_at", 1)], ttl_seconds=0) for name in COLLECTIONS])


def purge_expired(db: Database, now: datetime) -> None:
    for name in COLLECTIONS:
        db[name].delete_many({"expires_at": {"$lt": now}})


def _challenge(doc: dict | None) -> Challenge | None:
    if doc is None:
        return None
    doc = dict(doc)
    doc["id"] = doc.pop("_id")
    return Challenge(**doc)


class MongoChallenges:
    def __init__(self, db: Database):
        self.collection = db[CHALLENGES]

    def add(self, challenge: Challenge) -> None:
        doc = asdict(challenge)
        doc["_id"] = doc.pop("id")
        self.collection.insert_one(doc)

    def get(self, challenge_id: str) -> Challenge | None:
        return _challenge(self.collection.find_one({"_id": challenge_id}))

    def count_attempt(self, challenge_id: str, max_attempts: int) -> Challenge | None:
        return _challenge(self.collection.find_one_and_update(
            {"_id": challenge_id, "used": False, "attempts": {"$lt": max_attempts}},
            {"$inc": {"attempts": 1}}, return_document=ReturnDocument.AFTER))

    def use(self, challenge_id: str) -> bool:
        result = self.collection.update_one({"_id": challenge_id, "used": False},
                                            {"$set": {"used": True}})
        return result.modified_count == 1


class MongoSessions:
    def __init__(self, db: Database):
        self.collection = db[SESSIONS]

    def save(self, session: Session) -> None:
        doc = asdict(session)
        doc["_id"] = doc.pop("key")
        self.collection.replace_one({"_id": doc["_id"]}, doc, upsert=True)

    def get(self, key: str) -> Session | None:
        doc = self.collection.find_one({"_id": key})
        if doc is None:
            return None
        doc["key"] = doc.pop("_id")
        return Session(**doc)

    def delete(self, key: str) -> None:
        self.collection.delete_one({"_id": key})


class MongoCounters:
    def __init__(self, db: Database):
        self.collection = db[COUNTERS]

    def increment(self, key: str, expires_at: datetime) -> int:
        doc = self.collection.find_one_and_update(
            {"_id": key}, {"$inc": {"count": 1}, "$setOnInsert": {"expires_at": expires_at}},
            upsert=True, return_document=ReturnDocument.AFTER)
        return doc["count"]
