"""The full history's store on the real store: idempotent recording, paging, retention."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from services.profile import history as history_module
from services.profile.history import HistoryStore
from services.profile.projection import timeline_entry


def recorded(history, profile_id, n, at, now):
    event = {"message_id": f"{profile_id}-{n}", "type": "Page Viewed", "channel": "web",
             "occurred_at": at, "payload": {"name": f"page {n}"}, "identifiers": {}}
    return history.record(profile_id, event, timeline_entry(event), now)


def test_history_past_retention_is_hidden_and_swept_where_the_store_has_no_ttl(db, unique):
    history = HistoryStore(db, timedelta(days=1))
    expires_by_itself = history.prepare()
    now = datetime.now(UTC).replace(microsecond=0)
    profile_id = f"p-retain-{unique}"
    assert recorded(history, profile_id, 1, now - timedelta(hours=23), now)
    assert recorded(history, profile_id, 2, now - timedelta(hours=1), now)
    assert recorded(history, profile_id, 2, now - timedelta(hours=1), now)  # a replay
    assert not recorded(history, profile_id, 3, now - timedelta(days=2), now)
    months = sorted({(now - timedelta(hours=h)).strftime("%Y-%m") for h in (1, 23)})
    assert history.count(profile_id, months, now) == 2

    later = now + timedelta(hours=2)
    entries, cursor = history.page(profile_id, months, later)
    assert [e["message_id"] for e in entries] == [f"{profile_id}-2"] and cursor is None
    if not expires_by_itself:
        history.sweep(later)
        assert db.profile_events.count_documents({"profile_id": profile_id}) == 1
        history.sweep(now + timedelta(days=2))
        assert db.profile_events.count_documents({"profile_id": profile_id}) == 0
        assert db.profile_event_months.count_documents({"profile_id": profile_id}) == 0


def test_a_sweep_told_to_stop_leaves_the_rest_for_the_next_one(db, unique, monkeypatch):
    monkeypatch.setattr(history_module, "SWEEP_CHUNK", 1)
    history = HistoryStore(db, timedelta(days=1))
    history.prepare()
    # long ago, so that the sweep leaves the other tests' history in the shared store alone
    then = datetime(2001, 1, 1, tzinfo=UTC)
    profile_id = f"p-paced-{unique}"
    for n in range(3):
        assert recorded(history, profile_id, n, then - timedelta(hours=n + 1), then)
    pauses = []

    def stop_at_the_second_pause(took: float) -> bool:
        pauses.append(took)
        return len(pauses) == 2

    # the month page first, then one event, then told to stop
    history.sweep(then + timedelta(days=2), stop_at_the_second_pause)
    assert len(pauses) == 2 and all(took >= 0 for took in pauses)
    assert db.profile_event_months.count_documents({"profile_id": profile_id}) == 0
    assert db.profile_events.count_documents({"profile_id": profile_id}) == 2
    assert history.sweep(then + timedelta(days=2)) == 2
    assert db.profile_events.count_documents({"profile_id": profile_id}) == 0
