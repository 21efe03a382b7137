"""Kafka entry point of the profile service: the profile projection.

Consumes cdp.events.resolved (apply the event to its profile) and cdp.identity.merges (merge,
split, release), and announces each change on cdp.profile.changes keyed by profile_id.
"""

from __future__ import annotations

from pymongo.database import Database

from services.common import topics
from services.common.bus import ConsumerLoop, InvalidMessage, Outgoing, Producer
from services.common.config import Settings
from services.common.envelope import Envelope, derived_message_id, new_envelope
from services.common.store import ProcessedLedger, ensure_indexes
from services.profile import projection
from services.profile.profile_store import INDEXES, ProfileStore, VersionConflict

SERVICE = "profile"
GROUP = "profile-projection"
MAX_CONFLICT_RETRIES = 20


def build_consumers(settings: Settings, producer: Producer, db: Database) -> list[ConsumerLoop]:
    ensure_indexes(db, INDEXES)
    ledger = ProcessedLedger(db, GROUP)
    ledger.prepare()
    return [ConsumerLoop(settings=settings, service=SERVICE, group=GROUP,
                         topics=[topics.EVENTS_RESOLVED, topics.IDENTITY_MERGES],
                         handler=make_handler(ProfileStore(db)), producer=producer,
                         ledger=ledger)]


def make_handler(store: ProfileStore):
    def handle(envelope: Envelope) -> list[Outgoing]:
        for _ in range(MAX_CONFLICT_RETRIES):
            try:
                if envelope.channel == "system" and envelope.type == "Profiles Merged":
                    return _merge(store, envelope)
                if envelope.channel == "system" and envelope.type in (
                        "Profile Split", "Identifier Released"):
                    return _split(store, envelope)
                if not envelope.profile_id:
                    raise InvalidMessage("a resolved event needs a profile_id")
                return _apply(store, envelope)
            except VersionConflict:
                continue
        raise VersionConflict(envelope.profile_id)

    return handle


def _apply(store: ProfileStore, envelope: Envelope) -> list[Outgoing]:
    current = store.load_current(envelope.profile_id)
    if current is None:
        current = projection.new_profile(envelope.profile_id)
    event = {**envelope.to_dict(), "profile_id": current["_id"],
             "occurred_at": envelope.occurred_at}
    updated = projection.apply_event(current, event)
    if updated["recent_message_ids"] != current["recent_message_ids"]:
        store.save(updated)
    # also on a re-delivery: the change may not have reached Kafka the first time
    store.index(updated["_id"], {t: [v] for t, v in envelope.identifiers.items()})
    return [_change(updated["_id"], envelope.message_id, "event_applied", envelope)]


def _merge(store: ProfileStore, envelope: Envelope) -> list[Outgoing]:
    survivor_id, merged_id = envelope.payload["survivor"], envelope.payload["merged"]
    merged = store.load(merged_id) or projection.new_profile(merged_id)
    if merged.get("merged_into") != survivor_id:
        # freeze the merged profile first: from now on its events go to the survivor, so the
        # state absorbed below is final
        merged["merged_into"] = survivor_id
        store.save(merged)
    # the survivor may itself have been merged on since (merges of one event travel on
    # different partitions): absorb into whichever profile holds it now
    survivor = store.load_current(survivor_id) or projection.new_profile(survivor_id)
    if merged_id not in survivor.get("absorbed", []):
        combined = projection.merge(survivor, merged)
        store.save(combined)
        store.index(combined["_id"], combined["identifiers"])
    return [_change(survivor["_id"], envelope.message_id, "merged", envelope)]


def _split(store: ProfileStore, envelope: Envelope) -> list[Outgoing]:
    profile = store.load_current(envelope.payload["profile_id"])
    if profile is None:
        return []
    new_id = envelope.payload.get("new_profile_id")
    moved = envelope.payload["identifiers"]
    for identifier in moved:
        values = profile["identifiers"].get(identifier["type"], [])
        if identifier["value"] in values:
            values.remove(identifier["value"])
        store.unindex(identifier["type"], identifier["value"], profile["_id"])
    store.save(profile)
    if new_id:
        fresh = store.load(new_id) or projection.new_profile(new_id)
        for identifier in moved:
            values = fresh["identifiers"].setdefault(identifier["type"], [])
            if identifier["value"] not in values:
                values.append(identifier["value"])
        store.save(fresh)
        store.index(new_id, fresh["identifiers"])
    return [_change(profile["_id"], envelope.message_id, "split", envelope)]


def _change(profile_id: str, cause: str, kind: str, envelope: Envelope) -> Outgoing:
    change = new_envelope(
        "Profile Changed", "system", message_id=derived_message_id(cause, "profile-change"),
        payload={"kind": kind, "cause_message_id": cause, "event_type": envelope.type,
                 "channel": envelope.channel})
    return Outgoing(topics.PROFILE_CHANGES, profile_id, change.resolved_to(profile_id))
