"""How runs and deletion notices start and end, with the run executor in this process on the
real store (each test in a database of its own, so the executor sees only its runs and
notices): one run of a partner at a time, even when two requests start one at once; a
destination the HTTP client cannot use fails its own run or notice and nothing else; a
retired partner's runs are cancelled while its deletion notices still go out."""

from __future__ import annotations

import threading
from datetime import timedelta
from pathlib import Path

import pytest

from services.export.contracts import Destination
from services.export.delivery import Deliverer, RetryPolicy
from services.export.export_store import RUN_SLOTS, ExportStore, RunInProgress, now
from services.export.runs import RETIRED
from tests.support.export_executor import (
    SECRET,
    consented_profiles,
    executor_for,
    own_export_store,
    queue_notice,
    queue_run,
    save_partner,
    work_until_idle,
)


@pytest.fixture
def store(mongo_client, settings, unique):
    with own_export_store(mongo_client, settings, f"muisti_export_endings_{unique}") as store:
        yield store


def new_run(partner_id: str, run_id: str) -> dict:
    return {"_id": run_id, "partner_id": partner_id, "mode": "full", "status": "queued",
            "created_at": now(), "next_batch": 0, "lease_until": None}


def test_two_requests_at_once_start_one_run_of_a_partner(store):
    outcomes: dict[str, list[str]] = {}

    def start(partner_id: str, run_id: str, barrier: threading.Barrier) -> None:
        barrier.wait()
        try:
            store.create_run(new_run(partner_id, run_id))
            outcomes[partner_id].append(run_id)
        except RunInProgress:
            pass

    for round_ in range(10):
        partner_id, barrier = f"partner-{round_}", threading.Barrier(2)
        outcomes[partner_id] = []
        threads = [threading.Thread(target=start, args=(partner_id, f"{partner_id}-{n}", barrier))
                   for n in (1, 2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert all(len(started) == 1 for started in outcomes.values()), outcomes
    assert store.db.export_runs.count_documents({}) == 10


def test_a_partners_next_run_starts_once_the_last_ended_or_its_request_died(store):
    store.create_run(new_run("ads", "run-1"))
    assert store.create_run(new_run("ads", "run-1"))[1] is False  # the same request again
    with pytest.raises(RunInProgress):
        store.create_run(new_run("ads", "run-2"))
    store.db.export_runs.update_one({"_id": "run-1"}, {"$set": {"status": "succeeded"}})
    assert store.create_run(new_run("ads", "run-2"))[1] is True

    # a request that took the slot and died before storing its run holds it a minute
    store.db[RUN_SLOTS].insert_one({"_id": "crm", "run_id": "never-stored", "taken_at": now()})
    with pytest.raises(RunInProgress):
        store.create_run(new_run("crm", "run-3"))
    store.db[RUN_SLOTS].update_one({"_id": "crm"},
                                   {"$set": {"taken_at": now() - timedelta(minutes=2)}})
    assert store.create_run(new_run("crm", "run-3"))[1] is True


def test_a_destination_the_http_client_cannot_use_fails_its_own_run_and_notice_only(
        store, tmp_path):
    save_partner(store, "broken", Destination(kind="https", url="https://exa mple.com/in",
                                              signing_secret=SECRET))
    save_partner(store, "working", Destination(kind="directory", path="working"))
    consented_profiles(store, ["p1", "p2", "p3"])
    broken_notice = queue_notice(store, "broken", "p1")
    working_notice = queue_notice(store, "working", "p1")
    queue_run(store, "broken", "run-broken")  # claimed first: the older one
    queue_run(store, "working", "run-working")

    work_until_idle(executor_for(store, Deliverer(RetryPolicy(), tmp_path)))

    broken = store.run("run-broken")
    assert broken["status"] == "failed" and "destination.url" in broken["error"]
    working = store.run("run-working")
    assert working["status"] == "succeeded" and working["progress"]["exported"] == 3
    notices = {doc["_id"]: doc for doc in store.db.export_notices.find()}
    assert notices[broken_notice]["status"] == "failed"
    assert "destination.url" in notices[broken_notice]["last_error"]
    assert notices[working_notice]["status"] == "sent"
    assert len(list((tmp_path / "working").glob("run-working-*.csv"))) == 2

    # the contract fixed, the notice that failed for good goes out when asked for
    save_partner(store, "broken", Destination(kind="directory", path="fixed"))
    assert store.requeue_failed_notices("broken") == 1
    work_until_idle(executor_for(store, Deliverer(RetryPolicy(), tmp_path)))
    assert store.db.export_notices.find_one({"_id": broken_notice})["status"] == "sent"
    assert (tmp_path / "fixed" / f"deletion-{broken_notice}.json").exists()
    assert store.requeue_failed_notices("broken") == 0


def test_a_notice_another_worker_is_sending_is_left_to_it(store, tmp_path, monkeypatch):
    save_partner(store, "partner", Destination(kind="directory", path="partner"))
    notice_id = queue_notice(store, "partner", "p1")
    [due] = store.due_notices()
    # both workers found it due; the other one claimed it first
    assert store.claim_notice(due, 30)
    monkeypatch.setattr(store, "due_notices", lambda: [due])

    executor_for(store, Deliverer(RetryPolicy(), tmp_path)).send_due_notices()
    assert store.db.export_notices.find_one({"_id": notice_id})["attempts"] == 0
    assert not (tmp_path / "partner").exists()


class RetiringAfterFirstBatch(Deliverer):
    """Delivers, and retires the partner once its first batch is through: an admin's
    DELETE /v1/partners/{id} while the run is in progress."""

    def __init__(self, store: ExportStore, partner_id: str, root: Path):
        super().__init__(RetryPolicy(), root)
        self.store, self.partner_id = store, partner_id

    def deliver(self, destination, parcel, keep_going=lambda: True, attempts=None):
        outcome = super().deliver(destination, parcel, keep_going, attempts)
        if parcel.kind == "batch":
            self.store.delete_partner(self.partner_id)
        return outcome


def test_retiring_a_partner_cancels_its_runs_at_the_next_batch_but_notices_still_go_out(
        store, tmp_path):
    save_partner(store, "leaving", Destination(kind="directory", path="leaving"))
    consented_profiles(store, ["p1", "p2", "p3", "p4", "p5"])
    queue_run(store, "leaving", "run-running")
    queue_run(store, "leaving", "run-queued")  # queued before the partner was retired

    work_until_idle(executor_for(store, RetiringAfterFirstBatch(store, "leaving", tmp_path)))

    running = store.run("run-running")
    assert (running["status"], running["error"]) == ("cancelled", RETIRED)
    assert running["progress"]["exported"] == 2  # the batch sent before the retirement
    queued = store.run("run-queued")
    assert (queued["status"], queued["error"]) == ("cancelled", RETIRED)
    assert queued["progress"]["considered"] == 0
    assert [path.name for path in (tmp_path / "leaving").glob("run-*")] == [
        "run-running-000000.csv"]

    # the partner must still be told to delete what it holds
    notice_id = queue_notice(store, "leaving", "p1")
    work_until_idle(executor_for(store, Deliverer(RetryPolicy(), tmp_path)))
    assert store.db.export_notices.find_one({"_id": notice_id})["status"] == "sent"
    assert (tmp_path / "leaving" / f"deletion-{notice_id}.json").exists()
