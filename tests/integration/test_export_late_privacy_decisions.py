"""Privacy decisions that come after a subject's data was rendered or sent, with the run
executor and the feed's handlers in this process on the real store (each test in a database of
its own): a resumed run never sends a stored batch's subjects erased or restricted since
without a way back, a run's end leaves no rendered rows behind, a merged-away profile's
partners hear of the survivor's withdrawal, a notice names every identifier sent since the
last one (an address since changed too), notices do not wait for a run to end, and an
erasure's ack names its partners however often it is handled."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from services.common.envelope import new_envelope
from services.export import feed
from services.export.contracts import Destination
from services.export.delivery import Deliverer, RetryPolicy
from services.export.export_store import ExportStore
from tests.support.export_executor import (
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
    with own_export_store(mongo_client, settings, f"muisti_export_late_{unique}") as store:
        yield store


def batch_stored_before_a_crash(store: ExportStore, run_id: str, profile_ids: list[str],
                                tmp_path: Path) -> dict:
    """Batch 0 of ``run_id`` rendered and stored by a worker that then died."""
    dead = executor_for(store, Deliverer(RetryPolicy(), tmp_path))
    return dead.render_profiles(store.partner("ads"), run_id, 0, store.profiles(profile_ids))


def sent_profile_ids(tmp_path: Path) -> list[str]:
    return sorted(line for path in (tmp_path / "ads").glob("run-*.csv")
                  for line in path.read_text().splitlines()[1:])


def erasure_request(request_id: str, profile_ids: list[str]):
    return new_envelope("Erasure Requested", "system", payload={
        "request_id": request_id, "kind": "erasure", "profile_ids": profile_ids,
        "identifiers": [], "requested_by": "test"})


def withdrawal(profile_id: str):
    """A marketing consent withdrawn after ``consented_profiles`` granted it."""
    return new_envelope("Consent Changed", "system", payload={
        "purpose": "marketing", "state": "withdrawn", "allowed": False, "reason": "test",
        "receipt_id": "r", "notice_version": None, "collected_at": "2026-06-01T00:00:00Z",
        "source": "test"}).resolved_to(profile_id)


def notices_by_profile(store: ExportStore) -> dict[str, dict]:
    return {doc["profile_id"]: doc for doc in store.db.export_notices.find()}


def test_a_resumed_run_renders_an_unattempted_batch_again_without_those_refused_since(
        store, tmp_path):
    save_partner(store, "ads", Destination(kind="directory", path="ads"))
    consented_profiles(store, ["p1", "p2", "p3", "p4"])
    queue_run(store, "ads", "run-1")
    batch_stored_before_a_crash(store, "run-1", ["p1", "p2"], tmp_path)
    store.set_restricted(["p1"], True)
    feed.handle_consent_changes(store, [withdrawal("p2")])  # (an erasure discards the batch)

    work_until_idle(executor_for(store, Deliverer(RetryPolicy(), tmp_path)))

    assert store.run("run-1")["status"] == "succeeded"
    assert sent_profile_ids(tmp_path) == ["p3", "p4"]
    assert notices_by_profile(store) == {}


def test_a_resumed_run_resends_an_attempted_batch_as_it_was_then_notifies_the_late_refusals(
        store, tmp_path):
    save_partner(store, "ads", Destination(kind="directory", path="ads"))
    consented_profiles(store, ["p1", "p2", "p3"])
    queue_run(store, "ads", "run-1")
    stored = batch_stored_before_a_crash(store, "run-1", ["p1", "p2"], tmp_path)
    store.batch_attempted(stored["_id"])  # the partner may hold these bytes already
    store.set_restricted(["p1"], True)
    feed.erase(store, ["p2"], cause="erasure-p2")

    work_until_idle(executor_for(store, Deliverer(RetryPolicy(), tmp_path)))

    assert (tmp_path / "ads" / "run-1-000000.csv").read_bytes() == stored["body"]
    notices = notices_by_profile(store)
    assert {pid: (n["reason"], n["status"]) for pid, n in notices.items()} == {
        "p1": ("restricted", "sent"), "p2": ("erasure", "sent")}


def test_a_finished_run_keeps_its_batches_proof_but_not_their_rendered_rows(store, tmp_path):
    save_partner(store, "ads", Destination(kind="https", url="https://exa mple.com/in",
                                           signing_secret="partner-signing-secret-0123456789"))
    consented_profiles(store, ["p1", "p2"])
    queue_run(store, "ads", "run-1")

    work_until_idle(executor_for(store, Deliverer(RetryPolicy(), tmp_path)))

    assert store.run("run-1")["status"] == "failed"
    batch = store.batch("run-1", 0)
    assert (batch["body"], batch["sent"]) == (None, [])
    assert batch["sha256"] and batch["counts"]["exported"] == 2


def test_an_erasure_discards_the_unsent_batch_in_hand_that_holds_the_subject(store, tmp_path):
    save_partner(store, "ads", Destination(kind="directory", path="ads"))
    consented_profiles(store, ["p1", "p2"])
    queue_run(store, "ads", "run-1")
    batch_stored_before_a_crash(store, "run-1", ["p1", "p2"], tmp_path)

    [ack] = feed.handle_privacy_request(store, erasure_request("req-1", ["p2"]))

    assert ack.value.payload["summary"]["unsent_batches_discarded"] == 1
    assert store.batch("run-1", 0) is None


@pytest.mark.parametrize("merge_first", [True, False], ids=["merge-first", "withdrawal-first"])
def test_a_withdrawal_after_a_merge_reaches_the_partner_holding_the_merged_away_profile(
        store, merge_first):
    save_partner(store, "ads", Destination(kind="directory", path="ads"))
    consented_profiles(store, ["A", "B"])
    store.record_deliveries("ads", "earlier-run", {"B": {"pid": ["B"]}})
    merged_away = new_envelope("Profile Changed", "system", payload={
        "kind": "merged_away", "merged_into": "A", "profile": None,
        "cause_message_id": "m"}).resolved_to("B")
    withdrawn = withdrawal("A")
    for envelope in ([merged_away, withdrawn] if merge_first else [withdrawn, merged_away]):
        if envelope is merged_away:
            feed.handle_profile_changes(store, [envelope])
        else:
            feed.handle_consent_changes(store, [envelope])

    notices = notices_by_profile(store)
    assert notices["B"]["reason"] == "consent:marketing:withdrawn"
    assert notices["B"]["identifiers"] == {"pid": ["B"]}


def test_a_withdrawal_reaches_a_profile_merged_away_two_merges_ago_noted_in_either_order(
        store):
    save_partner(store, "ads", Destination(kind="directory", path="ads"))
    consented_profiles(store, ["A", "B", "C"])
    store.record_deliveries("ads", "earlier-run", {"A": {"pid": ["A"]}})

    def merged_away(profile_id, survivor):
        return new_envelope("Profile Changed", "system", payload={
            "kind": "merged_away", "merged_into": survivor, "profile": None,
            "cause_message_id": f"m-{profile_id}"}).resolved_to(profile_id)

    # A went into B, then B into C; their messages came on different partitions
    feed.handle_profile_changes(store, [merged_away("B", "C")])
    feed.handle_profile_changes(store, [merged_away("A", "B")])
    feed.handle_consent_changes(store, [withdrawal("C")])

    assert notices_by_profile(store)["A"]["reason"] == "consent:marketing:withdrawn"


def test_an_erasure_of_the_survivor_reaches_the_partner_holding_the_merged_away_profile(store):
    save_partner(store, "ads", Destination(kind="directory", path="ads"))
    consented_profiles(store, ["A", "B"])
    store.record_deliveries("ads", "earlier-run", {"B": {"pid": ["B"]}})
    feed.handle_profile_changes(store, [new_envelope("Profile Changed", "system", payload={
        "kind": "merged_away", "merged_into": "A", "profile": None,
        "cause_message_id": "m"}).resolved_to("B")])

    summary = feed.erase(store, ["A"], cause="erasure-a")

    assert summary["partners_notified"] == ["ads"]
    assert notices_by_profile(store)["B"]["reason"] == "erasure"


def test_a_notice_names_every_identifier_the_partner_was_sent_since_the_last_one(store):
    save_partner(store, "ads", Destination(kind="directory", path="ads"))
    store.record_deliveries("ads", "run-1", {"A": {"em": ["old-address"], "pid": ["A"]}})
    store.record_deliveries("ads", "run-2", {"A": {"em": ["new-address"], "pid": ["A"]}})
    store.queue_notice("notice-1", store.delivery("ads", "A"), "erasure")
    assert notices_by_profile(store)["A"]["identifiers"] == {
        "em": ["old-address", "new-address"], "pid": ["A"]}

    store.record_deliveries("ads", "run-3", {"A": {"em": ["newest-address"]}})
    store.queue_notice("notice-2", store.delivery("ads", "A"), "erasure")
    second = store.db.export_notices.find_one({"_id": "notice-2"})
    assert second["identifiers"] == {"em": ["newest-address"]}  # told about the rest already


def test_what_a_run_records_while_a_notice_is_queued_waits_for_the_next_notice(store):
    save_partner(store, "ads", Destination(kind="directory", path="ads"))
    store.record_deliveries("ads", "run-1", {"A": {"em": ["first-address"]}})
    read_by_the_feed = store.delivery("ads", "A")
    store.record_deliveries("ads", "run-2", {"A": {"em": ["second-address"]}})  # meanwhile

    store.queue_notice("notice-1", read_by_the_feed, "consent:marketing:withdrawn")

    left = store.delivery("ads", "A")
    assert left["identifiers"] == {"em": ["second-address"]} and left["awaiting_notice"]
    store.queue_notice("notice-2", left, "consent:marketing:withdrawn")
    notices = {doc["_id"]: doc["identifiers"] for doc in store.db.export_notices.find()}
    assert notices == {"notice-1": {"em": ["first-address"]},
                       "notice-2": {"em": ["second-address"]}}
    assert not store.delivery("ads", "A")["awaiting_notice"]


class QueueingANoticeDuringTheFirstBatch(Deliverer):
    """Delivers and notes each parcel's kind; a withdrawal's notice is queued while the run's
    first batch is on its way."""

    def __init__(self, store: ExportStore, root: Path):
        super().__init__(RetryPolicy(), root)
        self.store, self.kinds = store, []

    def deliver(self, destination, parcel, keep_going=lambda: True, attempts=None):
        if parcel.kind == "batch" and not self.kinds:
            queue_notice(self.store, "ads", "earlier")
        self.kinds.append(parcel.kind)
        return super().deliver(destination, parcel, keep_going, attempts)


def test_a_deletion_notice_goes_out_between_a_runs_batches_not_after_the_run(store, tmp_path):
    save_partner(store, "ads", Destination(kind="directory", path="ads"))
    consented_profiles(store, ["p1", "p2", "p3", "p4", "p5"])
    queue_run(store, "ads", "run-1")
    deliverer = QueueingANoticeDuringTheFirstBatch(store, tmp_path)

    work_until_idle(executor_for(store, deliverer, notice_check_seconds=0))

    assert deliverer.kinds == ["batch", "deletion", "batch", "batch"]


def test_notices_sent_between_batches_stop_when_their_time_is_up(store, tmp_path):
    save_partner(store, "ads", Destination(kind="directory", path="ads"))
    queued = [queue_notice(store, "ads", profile_id) for profile_id in ("p1", "p2")]
    executor = executor_for(store, Deliverer(RetryPolicy(), tmp_path))

    assert executor.send_due_notices(until=time.monotonic()) == 0  # the run's lease first
    assert executor.send_due_notices() == len(queued)


@pytest.mark.parametrize("handled_again", ["redelivered", "retried by the dpo"])
def test_an_erasure_handled_again_acks_the_partners_its_first_handling_notified(
        store, handled_again):
    save_partner(store, "ads", Destination(kind="directory", path="ads"))
    consented_profiles(store, ["p1"])
    store.record_deliveries("ads", "earlier-run", {"p1": {"pid": ["p1"]}})
    request = erasure_request("req-1", ["p1"])

    [first] = feed.handle_privacy_request(store, request)
    # the ack lost in a crash, or the request sent again (a message of its own)
    again_request = request if handled_again == "redelivered" else erasure_request(
        "req-1", ["p1"])
    [again] = feed.handle_privacy_request(store, again_request)

    assert first.value.payload["summary"]["partners_notified"] == ["ads"]
    assert again.value.payload["summary"]["partners_notified"] == ["ads"]
    assert again.value.payload["summary"]["deletion_notices_queued"] == 0
