"""Retention of a streaming partner's settled changes, on the real store (each test in a
database of its own), with the stream executor in this process sending to a directory: the
changes settled longer ago than the retention are deleted, in chunks, with their ids in the
profiles' index entries, while pending ones and the rest of each entry stay; changes waiting
for a partner that streams no more are settled, so they go too; the export worker runs the
sweep with the retention it is given."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest

from services.common.config import Settings
from services.export import export_store, worker
from services.export.contracts import Destination
from services.export.delivery import Deliverer, RetryPolicy
from services.export.export_store import STREAM_CHANGES, SUBJECT_INDEX, ExportStore, now
from services.export.housekeeping import SettledChangesSweep
from services.export.streaming import StreamExecutor
from tests.support.export_executor import consented_profiles, own_export_store, save_partner

RETENTION = {"stream_changes": timedelta(days=30)}


@pytest.fixture
def store(mongo_client, settings, unique):
    with own_export_store(mongo_client, settings, f"muisti_export_retention_{unique}") as store:
        save_partner(store, "ads", Destination(kind="directory", path="ads"), mode="streaming")
        yield store


def stream_all(store: ExportStore, tmp_path: Path) -> None:
    streams = StreamExecutor(store, Deliverer(RetryPolicy(), tmp_path), owner="test-streams",
                             batch_size=50, lease_seconds=30)
    for _ in range(10):
        if not streams.work_once():
            return
    raise AssertionError("the stream never ran out of changes")


def settled_days_ago(store: ExportStore, days: int, *change_ids: str) -> None:
    store.db[STREAM_CHANGES].update_many({"_id": {"$in": list(change_ids)}},
                                         {"$set": {"settled_at": now() - timedelta(days=days)}})


def index_entry(store: ExportStore, profile_id: str) -> dict | None:
    return store.db[SUBJECT_INDEX].find_one({"_id": f"profile:{profile_id}"}, {"_id": 0})


@pytest.fixture
def settled_and_pending(store, tmp_path):
    """p1-p3 consented, p4 not: c1-c3 sent, c4 not sent, c5 (p3) cancelled, all 31 days ago
    but c3, settled now; c6 (p1) pending for 60 days."""
    consented_profiles(store, ["p1", "p2", "p3"])
    store.upsert_profiles([{"profile_id": "p4", "identifiers": {}, "traits": {},
                            "computed": {}, "segments": []}], now())
    for number, profile_id in enumerate(["p1", "p2", "p3", "p4"], start=1):
        store.queue_stream_change(f"c{number}", "ads", profile_id, f"m{number}")
    stream_all(store, tmp_path)
    store.queue_stream_change("c5", "ads", "p3", "m5")
    assert store.cancel_stream_changes(["p3"], "consent:marketing:withdrawn", "ads") == 1
    store.queue_stream_change("c6", "ads", "p1", "m6")
    store.db[STREAM_CHANGES].update_one({"_id": "c6"},
                                        {"$set": {"queued_at": now() - timedelta(days=60)}})
    settled_days_ago(store, 31, "c1", "c2", "c4", "c5")
    assert store.stream_change_counts("ads") == {"pending": 1, "sent": 3, "not_sent": 1,
                                                 "cancelled": 1}
    return store


def test_settled_stream_changes_past_retention_are_deleted_and_pending_or_recent_ones_kept(
        settled_and_pending):
    store = settled_and_pending

    deleted = SettledChangesSweep(store, RETENTION).sweep()

    assert deleted == 4
    assert sorted(doc["_id"] for doc in store.db[STREAM_CHANGES].find()) == ["c3", "c6"]
    # the stream's counts are of the changes still kept
    assert store.stream_change_counts("ads") == {"pending": 1, "sent": 1}
    assert SettledChangesSweep(store, RETENTION).sweep() == 0


def test_the_sweep_takes_deleted_changes_out_of_the_index_and_keeps_a_profiles_other_lists(
        settled_and_pending):
    store = settled_and_pending

    SettledChangesSweep(store, RETENTION).sweep()

    assert index_entry(store, "p1") == {"consent_purposes": ["marketing"],
                                        "stream_changes": ["c6"]}
    assert index_entry(store, "p2") == {"consent_purposes": ["marketing"], "stream_changes": []}
    assert index_entry(store, "p3") == {"consent_purposes": ["marketing"],
                                        "stream_changes": ["c3"]}
    assert index_entry(store, "p4") is None  # it held those changes alone
    # what the entries are for still works: a withdrawal finds the pending change, an
    # erasure the consent states
    assert store.cancel_stream_changes(["p1"], "consent:marketing:withdrawn") == 1
    assert store.delete_consents(["p2"]) == 1


def test_the_sweep_deletes_a_chunk_at_a_time_and_one_told_to_stop_is_finished_by_the_next(
        store, monkeypatch):
    monkeypatch.setattr(export_store, "SETTLED_CHANGES_CHUNK", 2)
    change_ids = [f"c{number}" for number in range(5)]
    for change_id in change_ids:
        store.queue_stream_change(change_id, "ads", f"p-{change_id}", change_id)
    assert store.cancel_stream_changes([f"p-{c}" for c in change_ids], "erasure") == 5
    settled_days_ago(store, 31, *change_ids)
    pauses: list[float] = []

    def stop_after_the_first_chunk(took: float) -> bool:
        pauses.append(took)
        return True

    cutoff = now() - RETENTION["stream_changes"]
    assert store.expire_settled_stream_changes(cutoff, stop_after_the_first_chunk) == 2
    assert len(pauses) == 1 and store.db[STREAM_CHANGES].count_documents({}) == 3
    assert store.expire_settled_stream_changes(cutoff, lambda took: False) == 3
    assert store.db[STREAM_CHANGES].count_documents({}) == 0
    assert store.db[SUBJECT_INDEX].count_documents({}) == 0


def test_the_export_worker_runs_the_sweep_beside_its_consumers_with_the_set_retention(
        store, test_env):
    settings = Settings.from_env({**test_env, "CDP_RETENTION_DAYS": "stream_changes=7"})
    loops = worker.build_consumers(settings, producer=None, db=store.db)
    [sweep] = [loop for loop in loops if isinstance(loop, SettledChangesSweep)]
    assert sweep.keep_for == timedelta(days=7) and sweep.store.db.name == store.db.name


def test_changes_waiting_for_a_partner_that_streams_no_more_are_settled_and_then_swept(store):
    store.queue_stream_change("w1", "ads", "p1", "m1")
    save_partner(store, "crm", Destination(kind="directory", path="crm"), mode="streaming")
    store.queue_stream_change("w2", "crm", "p1", "m2")

    store.delete_partner("ads")
    save_partner(store, "crm", Destination(kind="directory", path="crm"))  # now full runs

    changes = {doc["_id"]: doc for doc in store.db[STREAM_CHANGES].find()}
    assert {change_id: (doc["status"], doc["reason"]) for change_id, doc in changes.items()} == {
        "w1": ("cancelled", "the partner was retired"),
        "w2": ("cancelled", "the contract no longer streams")}
    settled_days_ago(store, 31, "w1", "w2")
    assert store.expire_settled_stream_changes(now() - RETENTION["stream_changes"]) == 2
