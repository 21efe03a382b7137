"""The export read model's consent states, a poll's worth stored together, against the real
store: the same states and effects as one message at a time, in a few round trips."""

from __future__ import annotations

from datetime import UTC, datetime

import pymongo

from services.common import store as store_module
from services.common.envelope import new_envelope
from services.export import feed
from services.export.export_store import ConsentDecision, ExportStore
from services.export.sealing import SecretBox
from tests.support.store_commands import CommandCounter


def consent(profile_id: str, purpose: str, allowed: bool, collected_at: str):
    return new_envelope("Consent Changed", "system", payload={
        "purpose": purpose, "state": "granted" if allowed else "withdrawn", "allowed": allowed,
        "collected_at": collected_at, "source": "test"}).resolved_to(profile_id)


def stored_states(db, keys: list[str]) -> dict[str, tuple[bool, str]]:
    return {doc["_id"]: (doc["allowed"], doc["state"])
            for doc in db.export_consents.find({"_id": {"$in": keys}})}


def test_a_poll_of_consent_changes_keeps_the_latest_decision_per_purpose(db, settings, unique):
    store = ExportStore(db, SecretBox.from_settings(settings))
    first, second = f"{unique}-a", f"{unique}-b"
    changes = [consent(first, "marketing", True, "2025-01-01T00:00:00Z"),
               consent(first, "marketing", False, "2025-06-01T00:00:00Z"),
               # older than the withdrawal above: arrives late, changes nothing
               consent(first, "marketing", True, "2024-12-01T00:00:00Z"),
               consent(first, "profiling", True, "2025-02-01T00:00:00Z"),
               consent(second, "marketing", True, "2025-03-01T00:00:00Z"),
               # a bare-identifier subject concerns no export
               new_envelope("Consent Changed", "system", identifiers={"phone": "+358401234567"},
                            payload={"purpose": "marketing", "allowed": True})]

    assert feed.handle_consent_changes(store, changes) == []

    keys = [f"{first}|marketing", f"{first}|profiling", f"{second}|marketing"]
    assert stored_states(db, keys) == {f"{first}|marketing": (False, "withdrawn"),
                                       f"{first}|profiling": (True, "granted"),
                                       f"{second}|marketing": (True, "granted")}
    index = db.export_subject_index.find_one({"_id": f"profile:{first}"})
    assert sorted(index["consent_purposes"]) == ["marketing", "profiling"]
    # delivered again (a worker killed before its commit): nothing changes
    assert store.set_consents([ConsentDecision(first, "marketing", True, "granted",
                                               datetime(2024, 12, 1, tzinfo=UTC))]) == [False]
    assert feed.handle_consent_changes(store, changes) == []
    assert stored_states(db, keys)[f"{first}|marketing"] == (False, "withdrawn")
    index = db.export_subject_index.find_one({"_id": f"profile:{first}"})
    assert sorted(index["consent_purposes"]) == ["marketing", "profiling"]


def test_a_poll_of_consent_grants_costs_a_few_round_trips_not_a_few_per_message(
        settings, unique):
    counter = CommandCounter()
    client = pymongo.MongoClient(settings.mongo_uri, tz_aware=True, event_listeners=[counter])
    try:
        db = store_module.database(client, settings)
        store = ExportStore(db, SecretBox.from_settings(settings))
        grants = [consent(f"{unique}-{n}", "partner_sharing", True, "2025-01-01T00:00:00Z")
                  for n in range(120)]
        before = counter.commands
        feed.handle_consent_changes(store, grants)
        commands = counter.commands - before

        stored = stored_states(db, [f"{unique}-{n}|partner_sharing" for n in range(120)])
        assert len(stored) == 120 and all(state == (True, "granted") for state in stored.values())
        # read the states, index the purposes and replace, in commands of at most 50 writes,
        # mark the newly allowed profiles changed, plus one read of the streaming partners
        assert commands <= 1 + 3 + 3 + 1 + 1, commands
    finally:
        client.close()
