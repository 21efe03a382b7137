"""The full history's store on the real store: idempotent recording, paging, merges,
erasure, retention, and the move of earlier versions' month pages into the timeline."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from services.profile import history as history_module
from services.profile.history import MONTH_PAGES, HistoryStore
from services.profile.projection import timeline_entry


def event(profile_id, n, at, channel="web"):
    return {"message_id": f"{profile_id}-{n}", "type": "Page Viewed", "channel": channel,
            "occurred_at": at, "payload": {"name": f"page {n}"}, "identifiers": {}}


def recorded(history, profile_id, n, at, now, channel="web"):
    happened = event(profile_id, n, at, channel)
    return history.record(profile_id, happened, timeline_entry(happened), now)


def ids(entries):
    return [e["message_id"].rsplit("-", 1)[1] for e in entries]


@pytest.fixture
def own_db(db, unique):
    """A database of the test's own: the move of month pages takes every page there is."""
    database = db.client[f"muisti_history_{unique}"]
    yield database
    db.client.drop_database(database.name)


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
        assert db.profile_timeline.count_documents({"profile_id": profile_id}) == 1
        history.sweep(now + timedelta(days=2))
        assert db.profile_events.count_documents({"profile_id": profile_id}) == 0
        assert db.profile_timeline.count_documents({"profile_id": profile_id}) == 0


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

    # two timeline entries, then told to stop: no event is deleted
    history.sweep(then + timedelta(days=2), stop_at_the_second_pause)
    assert len(pauses) == 2 and all(took >= 0 for took in pauses)
    assert db.profile_timeline.count_documents({"profile_id": profile_id}) == 1
    assert db.profile_events.count_documents({"profile_id": profile_id}) == 3
    assert history.sweep(then + timedelta(days=2)) == 3
    assert db.profile_events.count_documents({"profile_id": profile_id}) == 0
    assert db.profile_timeline.count_documents({"profile_id": profile_id}) == 0


def test_a_timeline_pages_newest_first_across_months_by_channel_with_a_cursor(db, unique):
    history = HistoryStore(db, timedelta(days=400))
    history.prepare()
    now = datetime(2026, 3, 10, 12, tzinfo=UTC)
    profile_id = f"p-pages-{unique}"
    moments = {1: datetime(2026, 1, 31, 23, 59, 59, 999999, tzinfo=UTC),
               2: datetime(2026, 2, 1, tzinfo=UTC),
               3: datetime(2026, 2, 1, tzinfo=UTC),  # the same moment: by message id
               4: datetime(2026, 3, 9, tzinfo=UTC),
               5: datetime(2025, 12, 24, tzinfo=UTC)}
    for n, at in moments.items():
        recorded(history, profile_id, n, at, now, channel="phone" if n == 2 else "web")
    recorded(history, f"{profile_id}x", 9, moments[4], now)  # another profile, a longer id
    months = ["2026-03", "2026-02", "2026-01", "2025-12"]

    first, cursor = history.page(profile_id, months, now, limit=2)
    assert ids(first) == ["4", "3"]
    second, cursor = history.page(profile_id, months, now, before=cursor, limit=2)
    assert ids(second) == ["2", "1"]
    last, cursor = history.page(profile_id, months, now, before=cursor, limit=2)
    assert ids(last) == ["5"] and cursor is None
    assert ids(history.page(profile_id, months, now, channel="phone")[0]) == ["2"]
    assert history.count(profile_id, months, now) == 5
    assert history.count(profile_id, ["2026-02"], now) == 2


def test_a_merge_copies_the_timeline_and_an_erasure_of_both_deletes_every_event(db, unique):
    history = HistoryStore(db, timedelta(days=30))
    history.prepare()
    now = datetime.now(UTC)
    survivor, merged = f"p-surv-{unique}", f"p-merged-{unique}"
    recorded(history, survivor, 1, now - timedelta(hours=2), now)
    recorded(history, merged, 2, now - timedelta(hours=1), now)
    months = [(now - timedelta(hours=h)).strftime("%Y-%m") for h in (1, 2)]

    history.copy(merged, survivor, months)
    history.copy(merged, survivor, months)  # a replayed merge adds nothing

    assert ids(history.page(survivor, months, now)[0]) == ["2", "1"]
    assert db.profile_timeline.count_documents({"profile_id": survivor}) == 2
    # the merged profile's event is kept under its own id, found through the survivor's entry
    assert history.erase({survivor: months, merged: months}) == 2
    for collection in ("profile_events", "profile_timeline"):
        assert db[collection].count_documents(
            {"profile_id": {"$in": [survivor, merged]}}) == 0, collection


def test_an_events_own_keys_forget_it(db, unique):
    history = HistoryStore(db, timedelta(days=30))
    history.prepare()
    now = datetime.now(UTC)
    profile_id = f"p-forget-{unique}"
    recorded(history, profile_id, 1, now - timedelta(hours=1), now)
    recorded(history, profile_id, 2, now - timedelta(hours=1), now)

    history.forget([(profile_id, f"{profile_id}-1", now - timedelta(hours=1))])

    assert ids(history.page(profile_id, [now.strftime("%Y-%m")], now)[0]) == ["2"]
    assert [e["message_id"] for e in db.profile_events.find({"profile_id": profile_id})] == [
        f"{profile_id}-2"]


def month_page(database, profile_id, month, entries):
    """A page as earlier versions kept it: a profile's month of timeline entries."""
    database[MONTH_PAGES].insert_one({
        "_id": f"{profile_id}|{month}", "profile_id": profile_id, "month": month,
        "entries": entries, "expires_at": max(e["at"] for e in entries) + timedelta(days=30)})


def entries_of(profile_id, moments):
    return [timeline_entry(event(profile_id, n, at)) for n, at in moments.items()]


def test_month_pages_of_earlier_versions_are_read_until_moved_into_the_timeline(own_db,
                                                                                unique):
    history = HistoryStore(own_db, timedelta(days=30))
    history.prepare()
    now = datetime.now(UTC).replace(microsecond=0)
    month = now.strftime("%Y-%m")
    kept, erased, merged = f"p-kept-{unique}", f"p-erased-{unique}", f"p-into-{unique}"
    old = {1: now - timedelta(minutes=3), 2: now - timedelta(minutes=2)}
    month_page(own_db, kept, month, entries_of(kept, old))
    month_page(own_db, erased, month, entries_of(erased, old))
    month_page(own_db, merged, month, entries_of(merged, {5: now - timedelta(minutes=5)}))
    recorded(history, kept, 3, now - timedelta(minutes=1), now)  # after the upgrade

    # before the move: a page reads both, a merge copies both, a count counts both
    assert ids(history.page(kept, [month], now)[0]) == ["3", "2", "1"]
    assert history.count(kept, [month], now) == 3
    history.copy(merged, kept, [month])
    assert ids(history.page(kept, [month], now)[0]) == ["3", "2", "1", "5"]

    # the erasure marks its profile before it reads; this one is erased while the move runs
    marks = []

    def erased_among(profile_ids):
        marks.append(sorted(profile_ids))
        return {erased} & set(profile_ids) if len(marks) > 1 else set()

    moved = history.migrate_month_pages(erased_among, now)

    assert moved == 3
    assert MONTH_PAGES not in own_db.list_collection_names()
    assert ids(history.page(kept, [month], now)[0]) == ["3", "2", "1", "5"]
    assert own_db.profile_timeline.count_documents({"profile_id": erased}) == 0
    assert history.migrate_month_pages(lambda profile_ids: set(), now) == 0


def test_the_move_deletes_an_erased_profiles_page_with_its_events_and_keeps_a_page_grown_meanwhile(
        own_db, unique, monkeypatch):
    history = HistoryStore(own_db, timedelta(days=30))
    history.prepare()
    now = datetime.now(UTC).replace(microsecond=0)
    month = now.strftime("%Y-%m")
    erased, growing = f"p-erased-{unique}", f"p-growing-{unique}"
    # an erased profile's page an earlier version wrote after the erasure, and its event
    month_page(own_db, erased, month, entries_of(erased, {1: now - timedelta(minutes=1)}))
    own_db.profile_events.insert_one({"_id": f"{erased}|{erased}-1", "profile_id": erased})
    month_page(own_db, growing, month, entries_of(growing, {1: now - timedelta(minutes=2)}))
    insert_new = history_module.insert_new

    def while_an_earlier_version_adds_to_the_page(collection, docs, *args):
        own_db[MONTH_PAGES].update_one({"_id": f"{growing}|{month}"}, {"$push": {
            "entries": timeline_entry(event(growing, 2, now - timedelta(minutes=1)))}})
        return insert_new(collection, docs, *args)

    monkeypatch.setattr(history_module, "insert_new", while_an_earlier_version_adds_to_the_page)
    assert history.migrate_month_pages(lambda profile_ids: {erased} & set(profile_ids), now) == 1
    monkeypatch.setattr(history_module, "insert_new", insert_new)

    for collection in (MONTH_PAGES, "profile_timeline", "profile_events"):
        assert own_db[collection].count_documents({"profile_id": erased}) == 0, collection
    assert own_db[MONTH_PAGES].count_documents({"profile_id": growing}) == 1  # kept to move
    assert history.migrate_month_pages(lambda profile_ids: set(), now) == 2
    assert ids(history.page(growing, [month], now)[0]) == ["2", "1"]
    assert MONTH_PAGES not in own_db.list_collection_names()


def test_an_erasure_before_the_move_deletes_the_month_pages_and_their_events(own_db, unique):
    history = HistoryStore(own_db, timedelta(days=30))
    history.prepare()
    now = datetime.now(UTC)
    month = now.strftime("%Y-%m")
    profile_id = f"p-gone-{unique}"
    moments = {1: now - timedelta(minutes=2)}
    own_db.profile_events.insert_one({"_id": f"{profile_id}|{profile_id}-1",
                                      "profile_id": profile_id})
    month_page(own_db, profile_id, month, entries_of(profile_id, moments))
    recorded(history, profile_id, 2, now - timedelta(minutes=1), now)

    assert history.erase({profile_id: [month]}) == 2

    for collection in (MONTH_PAGES, "profile_timeline", "profile_events"):
        assert own_db[collection].count_documents({"profile_id": profile_id}) == 0, collection


def test_a_move_cut_short_after_its_insert_is_settled_by_the_next_one(own_db, unique):
    history = HistoryStore(own_db, timedelta(days=30))
    history.prepare()
    now = datetime.now(UTC).replace(microsecond=0)
    month = now.strftime("%Y-%m")
    profile_id = f"p-cut-{unique}"
    month_page(own_db, profile_id, month, entries_of(profile_id, {1: now - timedelta(minutes=1)}))
    checks = []

    def erased_while_moving(profile_ids):
        checks.append(profile_ids)
        if len(checks) == 1:
            return set()
        # the erasure marked the profile, read its timeline before the insert and deleted the
        # page; then the move lost the store before its second check
        own_db[MONTH_PAGES].delete_one({"_id": f"{profile_id}|{month}"})
        raise ConnectionError("the store went away")

    with pytest.raises(ConnectionError):
        history.migrate_month_pages(erased_while_moving, now)
    assert own_db.profile_timeline.count_documents({"profile_id": profile_id}) == 1

    assert history.migrate_month_pages(lambda profile_ids: {profile_id} & set(profile_ids),
                                       now) == 0
    assert own_db.profile_timeline.count_documents({"profile_id": profile_id}) == 0
    assert not {MONTH_PAGES, "profile_event_months_moving"} & set(
        own_db.list_collection_names())


def page_through(history, profile_id, months, now, **options):
    pages, cursor = [], None
    while True:
        entries, cursor = history.page(profile_id, months, now, before=cursor, limit=7,
                                       **options)
        pages.append(ids(entries))
        if cursor is None:
            return pages


def test_pages_read_a_day_at_a_time_are_the_pages_read_a_month_at_a_time(db, unique):
    history = HistoryStore(db, timedelta(days=400))
    now = datetime(2026, 3, 15, 12, tzinfo=UTC)
    profile_id = f"p-windows-{unique}"
    moments = {n: datetime(2026, 3, 14, 23, tzinfo=UTC) - timedelta(minutes=20 * n * n)
               for n in range(1, 60)}  # ever sparser back to January
    moments[60] = moments[61] = moments[5]  # one millisecond: by message id
    moments[62] = datetime(2026, 3, 20, tzinfo=UTC)  # dated ahead of the clock
    moments[63] = datetime(2026, 3, 1, tzinfo=UTC)  # a month's first moment
    for n, at in moments.items():
        recorded(history, profile_id, n, at, now, channel="phone" if n % 3 == 0 else "web")
    recorded(history, f"{profile_id}x", 99, moments[2], now)  # another profile, a longer id
    months = sorted({at.strftime("%Y-%m") for at in moments.values()}, reverse=True)
    newest = sorted(moments, key=lambda n: (moments[n], f"{profile_id}-{n}"), reverse=True)
    expected = [[str(n) for n in newest[start:start + 7]] for start in range(0, 63, 7)]

    assert ids(history.page(profile_id, months, now, limit=7)[0]) == expected[0]
    for window in (None, timedelta(0), timedelta(hours=2), timedelta(days=3),
                   timedelta(days=5)):
        reach = (moments[62], window) if window is not None else None
        assert page_through(history, profile_id, months, now, reach=reach) == expected
        phone = [str(n) for n in newest if n % 3 == 0]
        assert page_through(history, profile_id, months, now, reach=reach,
                            channel="phone") == [phone[:7], phone[7:14], phone[14:]]


def test_a_page_shows_entries_the_profile_as_read_did_not_have_yet(db, unique):
    # an event applied, or a merge copying entries, after the profile was read: dated up to
    # now, or in a month after the newest the profile knew
    history = HistoryStore(db, timedelta(days=400))
    now = datetime(2026, 3, 15, 12, tzinfo=UTC)
    profile_id = f"p-stale-{unique}"
    moments = {1: datetime(2026, 2, 10, tzinfo=UTC),
               **{n: datetime(2026, 3, 10, 6 + n, tzinfo=UTC) for n in range(2, 6)},
               6: datetime(2026, 3, 14, 9, tzinfo=UTC), 7: datetime(2026, 3, 15, 8, tzinfo=UTC),
               8: datetime(2026, 4, 2, tzinfo=UTC)}
    for n, at in moments.items():
        recorded(history, profile_id, n, at, now)
    known = (moments[5], timedelta(hours=3))  # the profile as read knew up to March 10th

    entries, _ = history.page(profile_id, ["2026-04", "2026-03", "2026-02"], now, limit=3,
                              reach=known)

    assert ids(entries) == ["8", "7", "6"]


class CountingReads:
    """A collection that counts the documents its finds return."""

    def __init__(self, collection):
        self.collection, self.read = collection, 0

    def find(self, *args, **kwargs):
        found = list(self.collection.find(*args, **kwargs))
        self.read += len(found)
        return found


def test_a_page_of_a_busy_month_reads_the_days_it_reaches_not_the_month(db, unique):
    history = HistoryStore(db, timedelta(days=400))
    now = datetime(2026, 3, 31, 12, tzinfo=UTC)
    profile_id = f"p-busy-{unique}"
    for n in range(300):  # ten a day
        recorded(history, profile_id, n, now - timedelta(hours=2.4 * n + 1), now)
    history.timeline = CountingReads(history.timeline)

    first, _ = history.page(profile_id, ["2026-03"], now,
                            reach=(now - timedelta(hours=1), timedelta(days=3)))
    assert ids(first) == [str(n) for n in range(20)]
    assert history.timeline.read <= 40

    history.timeline.read = 0
    history.page(profile_id, ["2026-03"], now)
    assert history.timeline.read == 300
