"""Every profile read answered is in the access log, even when the API process is killed right
after answering: the API answers once the read's entry is in its local spool, the next API on
that spool ships what a killed one left, and the worker stores entries once each, never for a
profile already erased."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta

import requests

from services.common import topics
from services.common.envelope import new_envelope
from services.common.store import BULK_CHUNK
from services.profile import access_log, projection
from services.profile.profile_store import ACCESS_INDEX, ACCESS_LOG, ProfileStore
from services.profile.worker import Context, store_accesses
from tests.support.kafka import create_topic, read_all
from tests.support.processes import ServiceApi, wait_until

READS = 48


def stored_profile(db, unique: str) -> str:
    """A profile written as the projection writes one, found by its phone."""
    profile_id = f"p_{unique}"
    phone = f"+35840{abs(hash(unique)) % 10_000_000:07d}"
    event = new_envelope("Identify", "web", identifiers={"phone": phone},
                         payload={"traits": {"city": "Oulu"}},
                         message_id=f"{unique}-m1").resolved_to(profile_id)
    store = ProfileStore(db)
    store.save(projection.apply_event(None, event.to_dict()))
    store.index_entries({f"phone:{phone}": profile_id})
    return phone


def test_every_read_answered_before_a_kill_has_its_entry_on_the_access_topic(
        test_env, settings, api_keys, db, unique):
    phone = stored_profile(db, unique)
    create_topic(settings, topics.PROFILE_ACCESSES)  # the profile worker's start creates it
    api = ServiceApi("profile", test_env).start()
    headers = {"Authorization": f"Bearer {api_keys['agent']}", "X-Purpose": "customer_service"}

    def read(_: int) -> int:
        return requests.get(f"{api.url}/v1/profiles", headers=headers, timeout=30,
                            params={"type": "phone", "value": phone}).status_code

    try:
        with ThreadPoolExecutor(max_workers=12) as pool:
            statuses = list(pool.map(read, range(READS)))
    finally:
        api.kill()  # SIGKILL: nothing buffered in the process survives
    assert statuses == [200] * READS

    def entries() -> dict:
        # by message_id: a segment shipped just before the kill is shipped again
        return {m["message_id"]: m for m in read_all(settings, topics.PROFILE_ACCESSES)
                if m["profile_id"] == f"p_{unique}"}

    successor = ServiceApi("profile", test_env).start()  # ships what the killed one left
    try:
        wait_until(lambda: len(entries()) == READS, 60, what="every read's entry on the topic")
    finally:
        successor.stop()
    assert {(e["payload"]["purpose"], e["payload"]["endpoint"], tuple(e["payload"]["roles"]))
            for e in entries().values()} == {("customer_service", "/v1/profiles", ("agent",))}


def test_an_api_stopped_right_after_answering_ships_its_spool_before_it_exits(
        test_env, settings, api_keys, db, unique):
    phone = stored_profile(db, unique)
    create_topic(settings, topics.PROFILE_ACCESSES)
    api = ServiceApi("profile", test_env).start()
    headers = {"Authorization": f"Bearer {api_keys['agent']}", "X-Purpose": "customer_service"}
    try:
        for _ in range(3):
            assert requests.get(f"{api.url}/v1/profiles", headers=headers, timeout=30,
                                params={"type": "phone", "value": phone}).status_code == 200
    finally:
        assert api.stop() == 0  # SIGTERM at once, before the spool's next shipping round
    # no successor: the stopping process shipped them itself
    assert len({m["message_id"] for m in read_all(settings, topics.PROFILE_ACCESSES)
                if m["profile_id"] == f"p_{unique}"}) == 3


def read_entries(profile_id: str, readers: int) -> list:
    """One read by each of ``readers`` keys, a second apart."""
    start = datetime.now(UTC)
    return [access_log.entry_message(
        profile_id=profile_id, key_id=f"k{n}", roles=["agent"], purpose="customer_service",
        endpoint="/v1/profiles", at=start + timedelta(seconds=n)).value
        for n in range(readers)]


def test_worker_stores_each_entry_once_and_lists_it_for_erasure(settings, db, unique):
    context = Context.build(settings, db)
    entries = {f"p_{unique}_{n}": read_entries(f"p_{unique}_{n}", 3) for n in range(4)}
    batch = [entry for listed in entries.values() for entry in listed]
    store_accesses(context, batch)
    store_accesses(context, batch[:5])  # re-delivered after a crash before the commit
    for profile_id, listed in entries.items():
        ids = sorted(entry.message_id for entry in listed)
        assert sorted(e["_id"] for e in db[ACCESS_LOG].find({"profile_id": profile_id})) == ids
        assert sorted(db[ACCESS_INDEX].find_one({"_id": profile_id})["entries"]) == ids
        assert [e["key_id"] for e in context.store.accesses(profile_id, 2)] == ["k2", "k1"]


def test_a_poll_reading_more_profiles_than_one_store_command_holds_is_stored(settings, db,
                                                                              unique):
    """Lists of many profiles updated at once: one command of ~100 matching updates would hang
    FerretDB, so they go in commands of ``BULK_CHUNK``."""
    context = Context.build(settings, db)
    profile_ids = [f"p_{unique}_{n:03d}" for n in range(3 * BULK_CHUNK)]
    for _ in range(2):  # the second time every list exists: each update matches
        store_accesses(context, [entry for p in profile_ids for entry in read_entries(p, 1)])
    listed = {doc["_id"]: len(doc["entries"]) for doc in db[ACCESS_INDEX].find(
        {"_id": {"$in": profile_ids}})}
    assert listed == {profile_id: 2 for profile_id in profile_ids}


def test_entries_arriving_after_the_profiles_erasure_are_not_stored(settings, db, unique):
    context = Context.build(settings, db)
    erased, kept = f"p_{unique}_erased", f"p_{unique}_kept"
    context.store.mark_erased([erased], f"req-{unique}", datetime.now(UTC))
    store_accesses(context, read_entries(erased, 2) + read_entries(kept, 1))
    assert db[ACCESS_LOG].count_documents({"profile_id": erased}) == 0
    assert db[ACCESS_INDEX].find_one({"_id": erased}) is None
    assert db[ACCESS_LOG].count_documents({"profile_id": kept}) == 1


def test_entries_past_retention_are_deleted_and_unlisted_by_the_sweep(settings, db, unique):
    context = Context.build(settings, db)
    profile_id = f"p_{unique}"
    old, recent = read_entries(profile_id, 2), read_entries(profile_id, 1)
    store_accesses(context, old + recent)
    # far back, so that the sweep leaves the other tests' entries in the shared store alone
    cutoff = datetime(2001, 1, 1, tzinfo=UTC)
    db[ACCESS_LOG].update_many({"_id": {"$in": [e.message_id for e in old]}},
                               {"$set": {"at": cutoff - timedelta(days=800)}})
    assert context.store.expire_accesses(cutoff) == 2
    assert [e["_id"] for e in db[ACCESS_LOG].find({"profile_id": profile_id})] == [
        recent[0].message_id]
    assert db[ACCESS_INDEX].find_one({"_id": profile_id})["entries"] == [recent[0].message_id]
