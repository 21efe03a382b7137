"""The export read model's rows on the real store: packed except for what runs filter on, and
found by segment and change time all the same."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

import pytest

from services.common.envelope import new_envelope
from services.common.store import PACKED
from services.export import feed
from services.export.export_store import ExportStore
from services.export.sealing import SecretBox

T0 = datetime(2026, 11, 1, tzinfo=UTC)


def snapshot(profile_id: str, segments: list[str]) -> dict:
    return {"profile_id": profile_id, "identifiers": {"email": [f"{profile_id}@example.fi"]},
            "traits": {"first_name": "Aino", "language": "fi"},
            "computed": {"purchase_count": 2, "last_seen": T0}, "segments": segments}


def test_a_row_is_stored_packed_and_found_by_segment_and_change_time(db, settings, unique):
    store = ExportStore(db, SecretBox.from_settings(settings))
    vip, other = f"{unique}-vip", f"{unique}-other"
    store.upsert_profiles([snapshot(vip, [f"vip-{unique}"])], T0)
    store.upsert_profiles([snapshot(other, [])], T0 + timedelta(hours=1))

    assert set(db.export_profiles.find_one({"_id": vip})) == {
        "_id", "segments", "changed_at", PACKED}
    row = store.profiles([vip])[0]
    assert (row["profile_id"], row["traits"], row["computed"], row["identifiers"]) == (
        vip, {"first_name": "Aino", "language": "fi"}, {"purchase_count": 2, "last_seen": T0},
        {"email": [f"{vip}@example.fi"]})
    assert store.profile_ids(None, f"vip-{unique}") == [vip]
    changed_later = store.profile_ids(T0 + timedelta(minutes=1), None)
    assert other in changed_later and vip not in changed_later
    assert store.profiles_holding([("email", f"{vip}@example.fi")]) == [vip]


def test_a_row_stored_before_packing_still_reads_and_is_packed_when_replaced(
        db, settings, unique):
    store = ExportStore(db, SecretBox.from_settings(settings))
    old = f"{unique}-old"
    db.export_profiles.insert_one({
        "_id": old, "identifiers": {"email": [f"{old}@example.fi"]}, "traits": {"x": 1},
        "computed": {}, "segments": [], "changed_at": T0})

    assert store.profiles([old])[0]["traits"] == {"x": 1}
    store.upsert_profiles([snapshot(old, [])], T0 + timedelta(hours=1))
    assert PACKED in db.export_profiles.find_one({"_id": old})
    assert store.profiles([old])[0]["traits"] == {"first_name": "Aino", "language": "fi"}


def test_a_snapshot_arriving_after_its_profiles_erasure_is_not_stored(db, settings, unique):
    store = ExportStore(db, SecretBox.from_settings(settings))
    erased, kept = f"{unique}-erased", f"{unique}-kept"

    def changed(profile_id: str):
        return new_envelope("Profile Changed", "system", payload={
            "kind": "event_applied", "profile": {**snapshot(profile_id, []),
                                                 "computed": {}}}).resolved_to(profile_id)

    feed.handle_profile_changes(store, [changed(erased)])
    feed.erase(store, [erased], cause=f"erase-{unique}")
    # made while the profile was being erased, delivered after the erasure
    feed.handle_profile_changes(store, [changed(erased), changed(kept)])

    assert store.profiles([erased, kept]) == [store.profiles([kept])[0]]
    assert store.profiles_holding([("email", f"{erased}@example.fi")]) == []


def test_a_profile_given_consent_or_freed_from_a_restriction_is_in_the_next_incremental_run(
        db, settings, unique):
    store = ExportStore(db, SecretBox.from_settings(settings))
    consented, freed, regranted, untouched = ids = [f"{unique}-{name}" for name in (
        "consented", "freed", "regranted", "untouched")]
    store.upsert_profiles([snapshot(pid, []) for pid in ids], T0)

    def grant(profile_id: str, collected_at: str):
        return new_envelope("Consent Changed", "system", payload={
            "purpose": "marketing", "state": "granted", "allowed": True,
            "collected_at": collected_at, "source": "test"}).resolved_to(profile_id)

    def restriction(kind: str, type_: str):
        return new_envelope(type_, "system", payload={
            "request_id": f"{kind}-{unique}", "kind": kind, "profile_ids": [freed]})

    feed.handle_consent_changes(store, [grant(regranted, "2026-01-01T00:00:00Z")])
    feed.handle_privacy_request(store, restriction("restriction", "Restriction Requested"))
    # the last run starts after those changes, and what follows comes after its start
    last_run_started = max(doc["changed_at"] for doc in db.export_profiles.find(
        {"_id": {"$in": ids}}, {"changed_at": 1}))
    time.sleep(0.01)

    feed.handle_consent_changes(store, [grant(consented, "2026-02-01T00:00:00Z"),
                                        # allowed already: sent again, which does no harm
                                        grant(regranted, "2026-02-01T00:00:00Z")])
    feed.handle_privacy_request(store, restriction("restriction_lifted", "Restriction Lifted"))

    scope = set(store.profile_ids(last_run_started, None))
    assert {consented, freed, regranted} <= scope
    assert untouched not in scope


def test_a_consent_given_still_marks_the_profile_when_delivered_again_after_a_crash(
        db, settings, unique, monkeypatch):
    store = ExportStore(db, SecretBox.from_settings(settings))
    profile_id = f"crash-{unique}"
    store.upsert_profiles([snapshot(profile_id, [])], T0)
    before = db.export_profiles.find_one({"_id": profile_id})["changed_at"]
    grant = new_envelope("Consent Changed", "system", payload={
        "purpose": "marketing", "state": "granted", "allowed": True,
        "collected_at": "2026-02-01T00:00:00Z", "source": "test"}).resolved_to(profile_id)
    monkeypatch.setattr(store, "_mark_changed", lambda ids: exit("killed after the write"))
    with pytest.raises(SystemExit):
        feed.handle_consent_changes(store, [grant])
    monkeypatch.undo()

    feed.handle_consent_changes(store, [grant])  # delivered again

    assert db.export_profiles.find_one({"_id": profile_id})["changed_at"] > before
