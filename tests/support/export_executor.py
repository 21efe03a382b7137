"""Helpers for tests that drive the export run executor in the test process on the real
store: contracts built directly, consented read-model rows, queued runs and notices."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime

from services.export.contracts import Destination, FieldRule, PartnerContract
from services.export.delivery import Deliverer
from services.export.export_store import RUNS, ConsentDecision, ExportStore, now
from services.export.runs import RunExecutor
from services.export.sealing import SecretBox

SECRET = "partner-signing-secret-0123456789"
GRANTED_AT = datetime(2026, 1, 1, tzinfo=UTC)


@contextmanager
def own_export_store(mongo_client, settings, name: str) -> Iterator[ExportStore]:
    """An export store in a database of its own (the executor reads every run and notice of
    its database), dropped afterwards."""
    yield ExportStore(mongo_client[name], SecretBox.from_settings(settings))
    mongo_client.drop_database(name)


def save_partner(store: ExportStore, partner_id: str, destination: Destination,
                 **contract) -> None:
    # built directly, not parsed: a contract stored before its destination was checked
    store.save_partner(PartnerContract(
        partner_id=partner_id, name=partner_id, required_purposes=("marketing",),
        fields=(FieldRule(name="pid", source="profile_id"),), destination=destination,
        **contract))


def consented_profiles(store: ExportStore, profile_ids: list[str]) -> None:
    store.upsert_profiles([{"profile_id": pid, "identifiers": {}, "traits": {},
                            "computed": {}, "segments": []} for pid in profile_ids], now())
    store.set_consents([ConsentDecision(pid, "marketing", True, "granted", GRANTED_AT)
                        for pid in profile_ids])


def queue_run(store: ExportStore, partner_id: str, run_id: str) -> None:
    # stored directly, past the partner's run slot: a test may queue two runs of one partner,
    # as a partner may hold from before runs took the slot
    store.db[RUNS].insert_one({
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


def executor_for(store: ExportStore, deliverer: Deliverer, **options) -> RunExecutor:
    return RunExecutor(store, deliverer, owner="test-executor", batch_size=2,
                       lease_seconds=30, min_cell_size=2, **options)
