"""How runs and deletion notices end when the partner is the problem, with the run executor in
this process on the real store (each test in a database of its own, so the executor sees only
its runs and notices): a destination the HTTP client cannot use fails its own run or notice
and nothing else; a retired partner's runs are cancelled while its deletion notices still go
out."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from services.export.contracts import Destination, FieldRule, PartnerContract
from services.export.delivery import Deliverer, RetryPolicy
from services.export.export_store import ConsentDecision, ExportStore, now
from services.export.runs import RETIRED, RunExecutor
from services.export.sealing import SecretBox

SECRET = "partner-signing-secret-0123456789"
GRANTED_AT = datetime(2026, 1, 1, tzinfo=UTC)


@pytest.fixture
def store(mongo_client, settings, unique):
    name = f"muisti_export_endings_{unique}"
    yield ExportStore(mongo_client[name], SecretBox.from_settings(settings))
    mongo_client.drop_database(name)


def save_partner(store: ExportStore, partner_id: str, destination: Destination) -> None:
    # built directly, not parsed: a contract stored before its destination was checked
    store.save_partner(PartnerContract(
        partner_id=partner_id, name=partner_id, required_purposes=("marketing",),
        fields=(FieldRule(name="pid", source="profile_id"),), destination=destination))


def consented_profiles(store: ExportStore, profile_ids: list[str]) -> None:
    store.upsert_profiles([{"profile_id": pid, "identifiers": {}, "traits": {},
                            "computed": {}, "segments": []} for pid in profile_ids], now())
    store.set_consents([ConsentDecision(pid, "marketing", True, "granted", GRANTED_AT)
                        for pid in profile_ids])


def queue_run(store: ExportStore, partner_id: str, run_id: str) -> None:
    store.create_run({
        "_id": run_id, "partner_id": partner_id, "mode": "full", "status": "queued",
        "created_at": now(), "started_at": None, "finished_at": None, "changed_since": None,
        "next_batch": 0, "cursor": None, "lease_owner": None, "lease_until": None,
        "batch_digests": [], "progress": {"considered": 0, "excluded": {}, "exported": 0,
                                          "batches_sent": 0, "invalid_values": {}}})


def queue_notice(store: ExportStore, partner_id: str, profile_id: str) -> str:
    store.record_deliveries(partner_id, "earlier-run", {profile_id: {"pid": [profile_id]}})
    notice_id = f"withdrawn-{partner_id}-{profile_id}"
    store.queue_notice(notice_id, store.delivery(partner_id, profile_id),
                       "consent:marketing:withdrawn")
    return notice_id


def work_until_idle(executor: RunExecutor) -> None:
    for _ in range(20):
        if not executor.work_once():
            return
    raise AssertionError("the executor never ran out of work")


def executor_for(store: ExportStore, deliverer: Deliverer) -> RunExecutor:
    return RunExecutor(store, deliverer, owner="test-executor", batch_size=2,
                       lease_seconds=30, min_cell_size=2)


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
