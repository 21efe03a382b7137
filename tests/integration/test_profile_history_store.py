"""The full history's store on the real store: idempotent recording, paging, retention."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

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
