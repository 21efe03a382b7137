"""Probabilistic match suggestions: profiles that share no identifier but probably are one
person (a loyalty sign-up and a phone order with a typo in the name), offered to a supervisor
with the per-field evidence, merged only when a person accepts.

The worker keeps one person record per profile from the traits customers give
(``person_record``); a run scores live profiles with ``services.identity.matching`` and stores
each pair at or above the possible-match threshold once, until someone decides it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any

from pymongo import UpdateOne
from pymongo.database import Database

from services.common import store
from services.identity.matching import (
    DEFAULT_THRESHOLD_MATCH,
    DEFAULT_THRESHOLD_POSSIBLE,
    find_matches,
)

RECORDS = "identity_person_records"
SUGGESTIONS = "identity_suggestions"
PROFILES = "identity_profiles"

_TRAIT_FIELDS = {
    "given_name": ("firstName", "first_name", "given_name"),
    "family_name": ("lastName", "last_name", "family_name"),
    "birth_date": ("birthday", "birth_date", "birthDate"),
}
_ADDRESS_FIELDS = {"street": ("street",), "postcode": ("postalCode", "postal_code", "zip"),
                   "city": ("city",)}


def person_record(traits: Mapping[str, Any], identifiers: Mapping[str, str]) -> dict[str, str]:
    """The matching fields found in a customer's traits and identifiers (empty if none)."""
    record: dict[str, str] = {}
    for field, names in _TRAIT_FIELDS.items():
        value = next((traits[n] for n in names if isinstance(traits.get(n), str)), None)
        if value:
            record[field] = value[:10] if field == "birth_date" else value
    if "given_name" not in record and isinstance(traits.get("name"), str):
        parts = traits["name"].split()
        if len(parts) >= 2:
            record["given_name"], record["family_name"] = parts[0], parts[-1]
    address = traits.get("address")
    if isinstance(address, Mapping):
        for field, names in _ADDRESS_FIELDS.items():
            value = next((address[n] for n in names if isinstance(address.get(n), str)), None)
            if value:
                record[field] = value
    for field, type_ in (("phone", "phone"), ("email", "email"), ("id_number", "hetu")):
        if identifiers.get(type_):
            record[field] = identifiers[type_]
    return record


def suggestion_id(a: str, b: str) -> str:
    low, high = sorted((a, b))
    return "s_" + hashlib.sha256(f"{low}|{high}".encode()).hexdigest()[:24]


class SuggestionStore:
    def __init__(self, db: Database):
        self.records = db[RECORDS]
        self.suggestions = db[SUGGESTIONS]
        self.profiles = db[PROFILES]

    def remember(self, given: Iterable[tuple[str, dict[str, str], datetime]]) -> None:
        """Keep the latest value of each field customers gave: ``given`` holds (profile id,
        fields, when) in the order the events came, several of one profile folded into one
        write."""
        latest: dict[str, dict[str, Any]] = {}
        for profile_id, fields, at in given:
            if fields:
                latest.setdefault(profile_id, {}).update(fields, updated_at=at)
        if not latest:
            return
        store.raise_write_errors(store.bulk_write(self.records, [
            UpdateOne({"_id": profile_id}, {"$set": fields}, upsert=True)
            for profile_id, fields in latest.items()]))
        # an erasure deletes the profile, then its record: a record written after that is
        # deleted here (the profile is found gone), one written before, by the erasure
        alive = {doc["_id"] for doc in store.find_by_ids(self.profiles, list(latest),
                                                         projection={"_id": 1})}
        store.delete_by_ids(self.records, sorted(set(latest) - alive))

    def live_records(self) -> list[dict]:
        merged = {doc["_id"] for doc in self.profiles.find(
            {"merged_into": {"$ne": None}}, {"_id": 1})}
        return [{"record_id": doc["_id"], **{k: v for k, v in doc.items()
                                              if k not in ("_id", "updated_at")}}
                for doc in self.records.find() if doc["_id"] not in merged]

    def run(self, at: datetime, *, threshold_match: float = DEFAULT_THRESHOLD_MATCH,
            threshold_possible: float = DEFAULT_THRESHOLD_POSSIBLE) -> dict[str, int]:
        """Score every live profile pair worth scoring; store new open suggestions. Pairs
        already accepted or rejected are not offered again."""
        records = self.live_records()
        pairs = find_matches(records, threshold_match, threshold_possible)
        created = 0
        for pair in pairs:
            result = self.suggestions.update_one(
                {"_id": suggestion_id(pair.a, pair.b)},
                {"$setOnInsert": {"a": pair.a, "b": pair.b, "status": "open", "created_at": at},
                 "$set": {"score": pair.score, "decision": pair.decision,
                          "contributions": [c.to_dict() for c in pair.contributions],
                          "scored_at": at}},
                upsert=True)
            created += result.upserted_id is not None
        return {"records": len(records), "pairs": len(pairs), "new": created}

    def open_at_or_above(self, score: float) -> list[dict]:
        return list(self.suggestions.find({"status": "open", "score": {"$gte": score}}))

    def page(self, status: str, limit: int, offset: int) -> list[dict]:
        cursor = self.suggestions.find({"status": status}).sort("score", -1)
        return list(cursor.skip(offset).limit(limit))

    def get(self, suggestion_id_: str) -> dict | None:
        return self.suggestions.find_one({"_id": suggestion_id_})

    def decide(self, suggestion_id_: str, status: str, actor: str, at: datetime) -> bool:
        """Close an open suggestion; False if it was not open."""
        result = self.suggestions.update_one(
            {"_id": suggestion_id_, "status": "open"},
            {"$set": {"status": status, "decided_by": actor, "decided_at": at}})
        return result.modified_count == 1
