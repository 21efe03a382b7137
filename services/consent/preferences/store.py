"""Mongo repositories of the preference centre: challenges (hashed one-time codes), sessions
(hashed ids) and rate-limit counters. Each document carries ``expires_at``; a TTL index removes
them where the store honours it and ``purge_expired`` where it does not (FerretDB 1.x).

``erase_subject`` is the preference centre's part of an erasure request: challenges are keyed
by the identifier's keyed digest and the profile id, sessions hold the profile id and the
sign-in identifier in plain, so both are found by the request's profile ids and identifiers."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict
from datetime import datetime

from pymongo import ReturnDocument
from pymongo.database import Database

from services.common.shredding import identifier_digest
from services.common.store import Index, ensure_indexes
from services.consent.preferences.codes import Challenge
from services.consent.preferences.sessions import Session
from services.consent.privacy import Identifier

CHALLENGES = "preference_challenges"
SESSIONS = "preference_sessions"
COUNTERS = "preference_rate_counters"
COLLECTIONS = (CHALLENGES, SESSIONS, COUNTERS)


def prepare(db: Database) -> None:
    ensure_indexes(db, [Index(name, [("expires_at", 1)], ttl_seconds=0) for name in COLLECTIONS])


def purge_expired(db: Database, now: datetime) -> None:
    for name in COLLECTIONS:
        db[name].delete_many({"expires_at": {"$lt": now}})


def erase_subject(db: Database, digest_key: bytes, *, request_id: str,
                  profile_ids: Sequence[str], identifiers: Sequence[Identifier]) -> dict[str, int]:
    """Delete the subject's sign-in challenges and sessions (idempotent); counts by kind.

    The one session that filed this erasure is kept, stripped of its identifier, so the
    customer's page can show the erasure's progress until it completes; the session then
    expires with its idle lifetime."""
    digests = [identifier_digest(digest_key, i.type, i.value) for i in identifiers]
    challenges = db[CHALLENGES].delete_many({"$or": [
        {"profile_id": {"$in": list(profile_ids)}}, {"identifier_digest": {"$in": digests}}]})
    subject = [{"profile_id": {"$in": list(profile_ids)}}] + [
        {"identifier_type": i.type, "identifier_value": i.value} for i in identifiers]
    deleted = stripped = 0
    for doc in db[SESSIONS].find({"$or": subject}, {"pending": 1}):
        if (doc.get("pending") or {}).get("erasure") == request_id:
            db[SESSIONS].update_one({"_id": doc["_id"]}, {"$set": {
                "identifier_type": None, "identifier_value": None, "challenge_id": None}})
            stripped += 1
        else:
            deleted += db[SESSIONS].delete_one({"_id": doc["_id"]}).deleted_count
    return {"preference_challenges_deleted": challenges.deleted_count,
            "preference_sessions_deleted": deleted,
            "preference_sessions_kept_for_erasure_status": stripped}


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
