"""The profile service's consent states, a poll's worth stored together, against the real
store: the latest-collected state per subject and purpose wins, within a poll as across polls."""

from __future__ import annotations

from datetime import UTC, datetime

from services.profile.profile_store import ProfileStore


def state(allowed: bool, day: int, receipt: str) -> dict:
    return {"allowed": allowed, "state": "granted" if allowed else "withdrawn", "reason": "test",
            "receipt_id": receipt, "collected_at": datetime(2025, 1, day, tzinfo=UTC),
            "message_id": receipt}


def test_a_poll_of_consents_keeps_the_latest_collected_state_per_subject_and_purpose(
        db, unique):
    store = ProfileStore(db)
    profile, bare = f"p-{unique}", f"id:phone:+35840{int(unique, 16) % 10**7:07d}"
    kept = store.record_consents([
        (profile, "marketing_email", state(True, 1, f"r1-{unique}")),
        (profile, "marketing_email", state(False, 5, f"r2-{unique}")),
        (profile, "marketing_email", state(True, 3, f"r3-{unique}")),  # collected earlier: late
        (profile, "analytics", state(True, 2, f"r4-{unique}")),
        (bare, "marketing_sms", state(False, 4, f"r5-{unique}")),
    ])

    assert kept == [True, True, False, True, True]
    states = store.consent_states(profile)
    assert states["marketing_email"]["allowed"] is False
    assert states["marketing_email"]["receipt_id"] == f"r2-{unique}"
    assert states["analytics"]["allowed"] is True
    assert store.consent_states(bare)["marketing_sms"]["allowed"] is False
    # a later poll with an older state changes nothing; a newer one wins
    assert store.record_consents([
        (profile, "marketing_email", state(True, 4, f"r6-{unique}")),
        (profile, "analytics", state(False, 6, f"r7-{unique}"))]) == [False, True]
    states = store.consent_states(profile)
    assert states["marketing_email"]["receipt_id"] == f"r2-{unique}"
    assert states["analytics"]["allowed"] is False
