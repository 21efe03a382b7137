"""A run's pages: the ids in scope listed once, each page read by id after the cursor."""

from __future__ import annotations

from services.export.runs import ProfilePages


class ReadModel:
    """The two ExportStore reads ProfilePages makes, over a dict; counts the listings."""

    def __init__(self, ids):
        self.snapshots = {i: {"profile_id": i} for i in ids}
        self.listings = 0

    def profile_ids(self, changed_since, segment):
        self.listings += 1
        return sorted(self.snapshots)

    def profiles(self, profile_ids):
        return [self.snapshots[i] for i in profile_ids if i in self.snapshots]


def ids_of(page):
    return [snapshot["profile_id"] for snapshot in page]


def test_pages_follow_the_cursor_in_id_order_from_one_listing():
    model = ReadModel(["p3", "p1", "p5", "p2", "p4"])
    pages = ProfilePages(model, None, None)
    assert ids_of(pages.after(None, 2)) == ["p1", "p2"]
    assert ids_of(pages.after("p2", 2)) == ["p3", "p4"]
    assert ids_of(pages.after("p4", 2)) == ["p5"]
    assert pages.after("p5", 2) == []
    assert model.listings == 1


def test_profiles_erased_after_the_listing_are_skipped_without_ending_the_run_early():
    model = ReadModel([f"p{i}" for i in range(1, 8)])
    pages = ProfilePages(model, None, None)
    assert ids_of(pages.after(None, 2)) == ["p1", "p2"]
    for erased in ("p3", "p4", "p5"):
        del model.snapshots[erased]
    rest, cursor = [], "p2"
    while page := pages.after(cursor, 2):
        rest += ids_of(page)
        cursor = rest[-1]
    assert rest == ["p6", "p7"]


def test_a_resumed_run_starts_after_a_cursor_that_was_erased_meanwhile():
    model = ReadModel(["p1", "p3", "p4"])  # the run's cursor "p2" no longer exists
    assert ids_of(ProfilePages(model, None, None).after("p2", 10)) == ["p3", "p4"]
