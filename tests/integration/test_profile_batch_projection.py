"""The profile projection of a whole poll at once (the worker's batch handler) against the
real store: the same profiles as event by event, replays change nothing, merges between events
keep their order."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta

import pytest

from services.common import topics
from services.common.envelope import new_envelope
from services.common.store import ensure_indexes
from services.profile import projection, worker
from services.profile.profile_store import INDEXES, pack
from services.profile.segments_store import SEGMENT_INDEXES

T0 = datetime.now(UTC).replace(microsecond=0) - timedelta(days=2)


@pytest.fixture(scope="module")
def context(settings, db):
    ensure_indexes(db, INDEXES + SEGMENT_INDEXES)
    context = worker.Context.build(settings, db)
    context.history.prepare()
    return context


def shop_events(profile_id: str, tag: str) -> list:
    """Registration with a name, a view and a purchase, each with its identifiers."""
    def event(n, type_, identifiers, **payload):
        return new_envelope(type_, "web", identifiers=identifiers, payload=payload,
                            occurred_at=T0 + timedelta(minutes=n),
                            message_id=f"{tag}-{profile_id}-{n}").resolved_to(profile_id)

    return [
        event(1, "Identify", {"anonymous_id": f"a-{profile_id}", "email": f"{profile_id}@x.fi"},
              traits={"firstName": "Batchilda", "lastName": f"Poll{profile_id[-6:]}"}),
        event(2, "Product Viewed", {"anonymous_id": f"a-{profile_id}"},
              properties={"sku": "S-1", "category": "kahvi"}),
        event(3, "Order Completed", {"user_id": f"u-{profile_id}"},
              properties={"order_id": f"o-{profile_id}", "total": 12.5, "currency": "EUR"}),
    ]


def stored(context, profile_id):
    doc = context.store.load(profile_id)
    return {"traits": {k: v["value"] for k, v in doc["traits"].items()},
            "identifiers": {k: sorted(v) for k, v in doc["identifiers"].items()},
            "purchases": doc["computed"]["purchase_count"], "timeline": len(doc["timeline"]),
            "months": doc["history_months"]}


def test_a_poll_gives_the_profiles_event_by_event_would_and_a_replay_changes_nothing(
        context, unique):
    batched, single = f"pb_{unique}", f"ps_{unique}"
    other = f"po_{unique}"
    poll = [e for pair in zip(shop_events(batched, "b"), shop_events(other, "b"), strict=True)
            for e in pair]
    first = worker.make_batch_handler(context)(poll)
    handle = worker.make_handler(context)
    for envelope in shop_events(single, "s"):
        handle(envelope)

    expected = stored(context, single)
    for profile_id in (batched, other):
        got = stored(context, profile_id)
        assert got["purchases"] == expected["purchases"] == 1
        assert got["timeline"] == expected["timeline"] == 3
        assert got["months"] == expected["months"]
        assert got["traits"]["first_name"] == "Batchilda"
        assert sorted(got["identifiers"]) == sorted(expected["identifiers"])
    for key in (f"user_id:u-{batched}", f"email:{batched}@x.fi", f"anonymous_id:a-{batched}"):
        assert context.store.identifiers.find_one({"_id": key})["profile_id"] == batched
    found, _ = context.store.search_names(f"batchilda poll{batched[-6:]}", 10)
    assert batched in found
    months = context.store.load(batched)["history_months"]
    assert context.history.count(batched, months, datetime.now(UTC)) == 3

    version = context.store.load(batched)["version"]
    replay = worker.make_batch_handler(context)(poll)
    assert [m.value.message_id for m in replay] == [m.value.message_id for m in first]
    assert context.store.load(batched)["version"] == version
    assert stored(context, batched)["purchases"] == 1
    assert context.history.count(batched, months, datetime.now(UTC)) == 3


def test_a_merge_inside_a_poll_takes_effect_between_the_events_around_it(context, unique):
    survivor, absorbed = f"pm1_{unique}", f"pm2_{unique}"
    before = shop_events(absorbed, "m")[:2]
    merge = merging(survivor, absorbed, unique)
    after = shop_events(absorbed, "m")[2:]
    worker.make_batch_handler(context)([*before, merge, *after])

    assert context.store.load(absorbed)["merged_into"] == survivor
    merged = stored(context, survivor)
    assert merged["purchases"] == 1  # the purchase came after the merge: the survivor's
    assert merged["timeline"] == 3
    assert stored(context, absorbed)["purchases"] == 0


def erasure(profile_id: str, tag: str, by_email: bool = False):
    """The erasure of a profile, named by its id or (``by_email``) by its email alone."""
    subject = ({"profile_ids": [], "identifiers": [{"type": "email",
                                                    "value": f"{profile_id}@x.fi"}]}
               if by_email else {"profile_ids": [profile_id], "identifiers": []})
    return new_envelope("Erasure Requested", "system", message_id=f"erase-{tag}", payload={
        "request_id": f"req-{tag}", "kind": "erasure", "requested_by": "dpo-key", **subject})


def merging(survivor: str, merged: str, tag: str):
    return new_envelope("Profiles Merged", "system", message_id=f"merge-{tag}",
                        payload={"survivor": survivor, "merged": merged, "identifier": None,
                                 "cause_message_id": "x"}).resolved_to(survivor)


def erased_after_the_next_save_then_killed(context, monkeypatch, profile_id: str, tag: str):
    """The next run: the profile is erased between its save and its name entries (the
    erasure reads the saved profile, not what the run writes next), and the run is killed
    before it can take anything back."""
    index_names = context.store.index_names

    def erased_after_the_save(changes):
        monkeypatch.setattr(context.store, "index_names", index_names)
        worker.make_privacy_handler(context)(erasure(profile_id, tag))
        index_names(changes)

    monkeypatch.setattr(context.store, "index_names", erased_after_the_save)
    monkeypatch.setattr(worker._EventRun, "_take_back_erased", lambda run: set())


def traces(context, profile_id: str) -> dict:
    """What the store keeps of the profile, by what its id and its events' identifiers name."""
    db = context.store.profiles.database
    return {name: count for name, count in {
        "profile": db.profiles.count_documents({"_id": profile_id}),
        "names": db.profile_names.count_documents({"profile_id": profile_id}),
        "identifiers": db.profile_identifiers.count_documents({"profile_id": profile_id}),
        "history": db.profile_events.count_documents({"profile_id": profile_id}),
        "timeline": db.profile_timeline.count_documents({"profile_id": profile_id}),
    }.items() if count}


def test_events_stored_after_their_profile_was_marked_erased_are_taken_back(context, unique):
    # the erasure marks the profile, reads it and deletes what it read; this run read the
    # profile before the mark and stores after the erasure's read
    profile_id = f"pe_{unique}"
    project = worker.make_batch_handler(context)
    project(shop_events(profile_id, "first")[:1])
    erased_among = context.store.erased_among
    checks = []

    def marked_right_after_the_runs_check(profile_ids):
        erased = erased_among(profile_ids)
        if not checks:
            context.store.mark_erased([profile_id], f"req-{unique}", datetime.now(UTC))
        checks.append(erased)
        return erased

    context.store.erased_among = marked_right_after_the_runs_check
    try:
        outgoing = project(shop_events(profile_id, "late")[1:])
    finally:
        context.store.erased_among = erased_among

    assert [m for m in outgoing if m.key == profile_id] == []
    assert traces(context, profile_id) == {}


def test_an_erasure_deletes_events_stored_after_it_found_the_profile(context, unique):
    profile_id = f"pf_{unique}"
    project = worker.make_batch_handler(context)
    project(shop_events(profile_id, "first")[:1])
    mark_erased = context.store.mark_erased

    def events_stored_before_the_mark(*args):
        project(shop_events(profile_id, "late")[1:])
        mark_erased(*args)

    context.store.mark_erased = events_stored_before_the_mark
    try:
        worker.make_privacy_handler(context)(erasure(profile_id, unique))
    finally:
        context.store.mark_erased = mark_erased

    assert traces(context, profile_id) == {}


@pytest.mark.parametrize("erased_side", ["survivor", "merged"])
def test_a_merge_of_a_profile_erased_meanwhile_erases_the_other_as_well(
        context, unique, erased_side):
    survivor, merged = f"pms_{unique}", f"pmm_{unique}"
    project = worker.make_batch_handler(context)
    project([*shop_events(survivor, "s"), *shop_events(merged, "m")])
    gone = survivor if erased_side == "survivor" else merged
    worker.make_privacy_handler(context)(erasure(gone, unique))
    merge = merging(survivor, merged, unique)

    outgoing = project([merge])

    # the identity graph had found them one person: that person's erasure takes both
    assert traces(context, survivor) == {} and traces(context, merged) == {}
    assert context.store.erased_among([survivor, merged]) == {survivor, merged}
    # the first erasure's tombstone now names the profile the merge erased with it too
    both = {survivor, merged}
    assert context.store.erased_together([survivor, merged]) == {survivor: both, merged: both}
    assert {m.key for m in outgoing} == {survivor, merged}
    assert {m.value.payload["kind"] for m in outgoing} == {"erased"}


def test_a_run_takes_back_its_history_written_after_the_erasure_read_the_timeline(
        context, unique):
    profile_id = f"ph_{unique}"
    project = worker.make_batch_handler(context)
    project(shop_events(profile_id, "first")[:1])
    record_many = context.history.record_many

    def erased_while_recording(items, now):
        recorded = record_many(items, now)
        # the erasure marked the profile and read its timeline before this run added to it;
        # now it deletes the events it found there, and those entries
        context.store.mark_erased([profile_id], f"req-{unique}", datetime.now(UTC))
        context.history.events.delete_one({"_id": f"{profile_id}|first-{profile_id}-1"})
        context.history.timeline.delete_many(
            {"profile_id": profile_id, "message_id": f"first-{profile_id}-1"})
        return recorded

    context.history.record_many = erased_while_recording
    try:
        project(shop_events(profile_id, "late")[1:])
    finally:
        context.history.record_many = record_many

    assert traces(context, profile_id) == {}


def test_a_run_interrupted_after_storing_for_a_profile_erased_meanwhile_leaves_nothing(
        context, unique):
    profile_id = f"pi_{unique}"
    project = worker.make_batch_handler(context)
    project(shop_events(profile_id, "first")[:1])
    late = shop_events(profile_id, "late")[1:]
    index_entries = context.store.index_entries

    def erased_then_the_store_fails(entries):
        index_entries(entries)
        context.store.mark_erased([profile_id], f"req-{unique}", datetime.now(UTC))
        raise ConnectionError("the store went away")

    context.store.index_entries = erased_then_the_store_fails
    try:
        with pytest.raises(ConnectionError):
            project(late)
    finally:
        context.store.index_entries = index_entries
    project(late)  # delivered again

    assert traces(context, profile_id) == {}


def test_a_run_cut_short_under_the_survivor_leaves_nothing_once_both_are_erased(
        context, unique, monkeypatch):
    survivor, merged = f"pks_{unique}", f"pkm_{unique}"
    project = worker.make_batch_handler(context)
    merge = merging(survivor, merged, unique)
    project([shop_events(survivor, "s")[1], shop_events(merged, "m")[1], merge])
    late = shop_events(merged, "late")  # the merged profile's: stored under the survivor
    erased_after_the_next_save_then_killed(context, monkeypatch, survivor, unique)
    project(late)
    assert traces(context, survivor)  # what the erasure could not have seen
    monkeypatch.undo()

    project(late)  # delivered again: the merged profile is erased

    assert traces(context, survivor) == {} and traces(context, merged) == {}


def test_a_profile_an_earlier_version_stored_takes_a_redelivered_event_once(context, unique):
    profile_id = f"pv_{unique}"
    project = worker.make_batch_handler(context)
    events = shop_events(profile_id, "v")
    project(events[:2])
    earlier = context.store.load(profile_id)  # as an earlier version kept it: the ids
    earlier.pop("applied_digests")
    earlier["recent_message_ids"] = [e.message_id for e in events[:2]]
    context.store.profiles.replace_one({"_id": profile_id}, pack(earlier))

    project(events[1:2])  # delivered again
    assert context.store.load(profile_id)["version"] == earlier["version"]
    project(events[2:])

    stored = context.store.load(profile_id)
    assert stored["computed"]["purchase_count"] == 1
    assert stored["recent_message_ids"] == []
    assert all(projection.applied(stored, e.message_id) for e in events)


def test_a_name_the_event_only_completed_leaves_the_index_at_the_daily_sweep(
        settings, db, unique, monkeypatch):
    database = db.client[f"muisti_completed_{unique}"]  # the sweep reads every entry there
    ensure_indexes(database, INDEXES + SEGMENT_INDEXES)
    context = worker.Context.build(settings, database)
    context.history.prepare()
    survivor, merged, bystander = "pcs", "pcm", "pcb"
    project = worker.make_batch_handler(context)

    def identify(profile_id, n, **traits):
        return new_envelope("Identify", "web", identifiers={"email": f"{profile_id}{n}@x.fi"},
                            payload={"traits": traits}, message_id=f"{profile_id}-{n}",
                            occurred_at=T0 + timedelta(minutes=n)).resolved_to(profile_id)

    merge = merging(survivor, merged, unique)
    project([identify(survivor, 1, lastName="Täydennetty"), identify(merged, 2),
             identify(bystander, 3, firstName="Sivu", lastName="Kulkija"), merge])
    late = [identify(merged, 4, firstName="Vasta")]  # completes the survivor's name
    erased_after_the_next_save_then_killed(context, monkeypatch, survivor, unique)
    project(late)
    monkeypatch.undo()
    project(late)  # delivered again: it knows the first name alone
    assert traces(context, survivor) == {"names": 2}

    swept = worker.Housekeeping(context, producer=None, sweep_history=False).sweep()

    assert traces(context, survivor) == {} and traces(context, merged) == {}
    assert swept["erased_names_unindexed"] == 2
    assert context.store.search_names("kulkija", 5)[0] == {bystander: "Sivu Kulkija"}
    assert context.store.find_by_identifier("email", f"{bystander}3@x.fi")["_id"] == bystander


def test_an_erasure_by_identifier_cut_short_after_deleting_the_profile_finishes_when_retried(
        context, unique, monkeypatch):
    profile_id = f"pr_{unique}"
    worker.make_batch_handler(context)(shop_events(profile_id, "r"))
    request = erasure(profile_id, f"id-{unique}", by_email=True)

    delete_profiles = context.store.delete_profiles

    def deleted_then_the_worker_dies(profile_ids):
        delete_profiles(profile_ids)
        raise SystemExit("killed")

    monkeypatch.setattr(context.store, "delete_profiles", deleted_then_the_worker_dies)
    with pytest.raises(SystemExit):
        worker.make_privacy_handler(context)(request)
    assert traces(context, profile_id) == {"identifiers": 1}  # the one it is found by
    monkeypatch.undo()

    worker.make_privacy_handler(context)(request)  # delivered again

    assert traces(context, profile_id) == {}


def test_an_erasure_cut_short_between_a_survivor_and_its_merged_profile_takes_both_when_retried(
        context, unique, monkeypatch):
    survivor, merged = f"pms_{unique}", f"pmm_{unique}"
    merge = merging(survivor, merged, f"r-{unique}")
    worker.make_batch_handler(context)([*shop_events(survivor, "s"),
                                        *shop_events(merged, "m"), merge])
    request = erasure(survivor, f"m-{unique}", by_email=True)
    delete_profiles = context.store.delete_profiles

    def the_survivor_deleted_then_the_worker_dies(profile_ids):
        delete_profiles([survivor])
        raise SystemExit("killed")

    monkeypatch.setattr(context.store, "delete_profiles",
                        the_survivor_deleted_then_the_worker_dies)
    with pytest.raises(SystemExit):
        worker.make_privacy_handler(context)(request)
    monkeypatch.undo()
    assert traces(context, merged) == {"profile": 1}  # listed by no profile stored

    worker.make_privacy_handler(context)(request)  # delivered again

    assert traces(context, survivor) == {} and traces(context, merged) == {}


def acked_summary(outgoing) -> dict:
    """The summary of the privacy ack among a handler's messages."""
    acks = [m.value.payload for m in outgoing if m.topic == topics.PRIVACY_ACKS]
    assert len(acks) == 1
    return acks[0]["summary"]


def retried_by_the_dpo(request):
    """The request sent again by ``POST /v1/privacy/requests/{id}/retry``: a message of its
    own (services had recorded the first as handled)."""
    return new_envelope(request.type, "system", message_id=f"{request.message_id}-retry-1",
                        payload={**request.payload, "retry": {"attempt": 1,
                                                             "services": ["profile"]}})


@pytest.mark.parametrize("again", ["delivered again", "retried by the dpo"])
def test_an_erasure_handled_again_acks_what_its_first_handling_deleted(context, unique, again):
    profile_id = f"pa_{unique}"
    worker.make_batch_handler(context)(shop_events(profile_id, "a"))
    request = erasure(profile_id, f"a-{unique}")
    first = acked_summary(worker.make_privacy_handler(context)(request))
    # the first ack lost (a crash before it was produced), or the dpo retried the request
    second = acked_summary(worker.make_privacy_handler(context)(
        request if again == "delivered again" else retried_by_the_dpo(request)))

    assert first["profiles"] == 1 and first["history_events"] == 3
    assert second == first
    assert traces(context, profile_id) == {}


def test_an_erasure_cut_short_midway_acks_on_its_retry_what_both_handlings_deleted(
        context, unique, monkeypatch):
    profile_id = f"pc_{unique}"
    worker.make_batch_handler(context)(shop_events(profile_id, "c"))
    request = erasure(profile_id, f"c-{unique}")
    remove_profiles = context.segments.remove_profiles

    def history_deleted_then_the_worker_dies(profile_ids):
        raise SystemExit("killed")

    monkeypatch.setattr(context.segments, "remove_profiles", history_deleted_then_the_worker_dies)
    with pytest.raises(SystemExit):
        worker.make_privacy_handler(context)(request)
    monkeypatch.setattr(context.segments, "remove_profiles", remove_profiles)
    assert "history" not in traces(context, profile_id)

    summary = acked_summary(worker.make_privacy_handler(context)(request))  # delivered again

    assert summary["history_events"] == 3  # deleted by the handling cut short
    assert summary["profiles"] == 1  # deleted by this one


def test_an_erasures_counts_hold_no_personal_data_and_go_with_closed_requests_retention(
        context, unique):
    keep = context.policy["privacy_requests"]
    handled = {}
    for age, tag in ((keep + timedelta(days=1), "old"), (keep - timedelta(days=1), "kept")):
        profile_id = f"p{tag}_{unique}"
        worker.make_batch_handler(context)(shop_events(profile_id, tag))
        then = dataclasses.replace(context, clock=lambda age=age: datetime.now(UTC) - age)
        worker.make_privacy_handler(then)(erasure(profile_id, f"{tag}-{unique}"))
        handled[tag] = f"req-{tag}-{unique}"
    record = context.store.erasure_counts.collection.find_one({"_id": handled["kept"]})
    assert set(record) == {"_id", "deleted", "handled_at"}
    assert all(isinstance(count, int) for count in record["deleted"].values())

    worker.Housekeeping(context, producer=None, sweep_history=False).sweep()

    assert context.store.erasure_counts.collection.find_one({"_id": handled["old"]}) is None
    assert context.store.erasure_counts.collection.find_one({"_id": handled["kept"]}) is not None


def test_a_profile_a_run_stored_after_its_erasure_goes_when_the_run_is_delivered_again(
        context, unique, monkeypatch):
    profile_id = f"pz_{unique}"
    save_many = context.store.save_many

    def erased_just_before_the_save(docs):
        monkeypatch.setattr(context.store, "save_many", save_many)
        worker.make_privacy_handler(context)(erasure(profile_id, unique))  # nothing stored yet
        save_many(docs)

    monkeypatch.setattr(context.store, "save_many", erased_just_before_the_save)
    monkeypatch.setattr(worker._EventRun, "_take_back_erased", lambda run: set())  # killed
    worker.make_batch_handler(context)(shop_events(profile_id, "z"))
    assert traces(context, profile_id)["profile"] == 1
    monkeypatch.undo()

    worker.make_batch_handler(context)(shop_events(profile_id, "z"))  # delivered again

    assert traces(context, profile_id) == {}


def test_an_event_arriving_while_an_erasure_waits_for_its_retry_leaves_nothing_of_the_profile(
        context, unique, monkeypatch):
    profile_id = f"pw_{unique}"
    project = worker.make_batch_handler(context)
    project(shop_events(profile_id, "w")[:2])
    consents = context.store.consents
    consents.insert_many([{"_id": profile_id, "states": {}},
                          {"_id": f"id:anonymous_id:a-{profile_id}", "states": {}}])
    request = erasure(profile_id, f"w-{unique}", by_email=True)

    def the_worker_dies(*args):
        raise SystemExit("killed")

    # killed right after marking the profile erased, before deleting anything
    monkeypatch.setattr(worker, "_deleting", the_worker_dies)
    with pytest.raises(SystemExit):
        worker.make_privacy_handler(context)(request)
    monkeypatch.undo()
    project(shop_events(profile_id, "w")[2:])  # the customer's next event, before the retry
    worker.make_privacy_handler(context)(request)  # delivered again

    assert traces(context, profile_id) == {}
    assert consents.count_documents({"_id": {"$in": [
        profile_id, f"id:anonymous_id:a-{profile_id}"]}}) == 0


def splitting(profile_id: str, new_id: str, tag: str):
    return new_envelope("Profile Split", "system", message_id=f"split-{tag}", payload={
        "kind": "unmerge", "profile_id": profile_id, "new_profile_id": new_id,
        "identifiers": [{"type": "user_id", "value": f"u-{profile_id}"}],
        "reason": "two people", "actor": "agent"}).resolved_to(profile_id)


@pytest.mark.parametrize("erased", ["before the split", "while the split writes it"])
def test_a_split_off_profile_erased_before_its_split_arrives_is_not_created(
        context, unique, monkeypatch, erased):
    profile_id, new_id = f"psp_{unique}", f"psn_{unique}"
    worker.make_batch_handler(context)(shop_events(profile_id, "sp"))
    if erased == "before the split":
        worker.make_privacy_handler(context)(erasure(new_id, unique))
    else:
        index = context.store.index

        def erased_after_its_read(profile_id_, identifiers):
            index(profile_id_, identifiers)
            if profile_id_ == new_id:  # the erasure read nothing stored under it yet
                context.store.mark_erased([new_id], f"req-{unique}", datetime.now(UTC))

        monkeypatch.setattr(context.store, "index", erased_after_its_read)

    outgoing = worker.make_batch_handler(context)([splitting(profile_id, new_id, unique)])

    assert traces(context, new_id) == {}
    assert {m.key for m in outgoing} == {profile_id}  # nothing announced for the erased one
    assert context.store.load(profile_id)["identifiers"].get("user_id") in (None, [])
