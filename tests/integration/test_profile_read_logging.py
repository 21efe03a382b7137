"""Every profile read answered is in the access log, even when the API process is killed right
after answering: the API answers once the read's entry is in its local spool, the next API on
that spool ships what a killed one left, and the worker stores entries once each, never for a
profile already erased."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta

import requests

from services.common import topics
from services.common.bus import Outgoing
from services.common.envelope import decode, new_envelope
from services.profile import access_log, projection
from services.profile.profile_store import ACCESS_LOG, LISTED_ACCESSES, ProfileStore
from services.profile.worker import Context, Housekeeping, store_accesses
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
        return {m["message_id"]: m for m in shipped_reads(settings)
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
    assert len({m["message_id"] for m in shipped_reads(settings)
                if m["profile_id"] == f"p_{unique}"}) == 3


def shipped_reads(settings) -> list[dict]:
    """Every read on the access topic, out of the bundles the API ships them in."""
    return [read for message in read_all(settings, topics.PROFILE_ACCESSES)
            for read in (message["payload"]["reads"]
                         if message["type"] == access_log.BUNDLE_TYPE else [message])]


def read_entries(profile_id: str, readers: int) -> list:
    """One read by each of ``readers`` keys, a second apart."""
    start = datetime.now(UTC)
    return [access_log.entry_message(
        profile_id=profile_id, key_id=f"k{n}", roles=["agent"], purpose="customer_service",
        endpoint="/v1/profiles", at=start + timedelta(seconds=n)).value
        for n in range(readers)]


def test_worker_stores_each_entry_once_under_its_profile(settings, db, unique):
    context = Context.build(settings, db)
    entries = {f"p_{unique}_{n}": read_entries(f"p_{unique}_{n}", 3) for n in range(4)}
    batch = [entry for listed in entries.values() for entry in listed]
    store_accesses(context, batch)
    store_accesses(context, batch[:5])  # re-delivered after a crash before the commit
    for profile_id, listed in entries.items():
        ids = sorted(f"{profile_id}|{entry.message_id}" for entry in listed)
        assert sorted(e["_id"] for e in db[ACCESS_LOG].find({"profile_id": profile_id})) == ids
        assert [e["key_id"] for e in context.store.accesses(profile_id, 2)] == ["k2", "k1"]
    # a profile whose id starts with another's: the entries of each stay apart
    assert context.store.accesses(f"p_{unique}", 10) == []


def test_a_bundle_of_reads_is_stored_as_one_entry_per_read(settings, db, unique):
    context = Context.build(settings, db)
    reads = [Outgoing(topics.PROFILE_ACCESSES, "", envelope.to_dict())
             for n in range(3) for envelope in read_entries(f"p_{unique}_{n}", 2)]
    [bundle] = access_log.bundled(reads)
    store_accesses(context, [decode(bundle.value.to_bytes())])
    for n in range(3):
        assert [e["key_id"] for e in context.store.accesses(f"p_{unique}_{n}", 10)] == [
            "k1", "k0"]


def test_entries_arriving_after_the_profiles_erasure_are_not_stored(settings, db, unique):
    context = Context.build(settings, db)
    erased, kept = f"p_{unique}_erased", f"p_{unique}_kept"
    context.store.mark_erased([erased], f"req-{unique}", datetime.now(UTC))
    store_accesses(context, read_entries(erased, 2) + read_entries(kept, 1))
    assert db[ACCESS_LOG].count_documents({"profile_id": erased}) == 0
    assert db[ACCESS_LOG].count_documents({"profile_id": kept}) == 1


def test_an_erasure_deletes_the_profiles_entries_and_no_others(settings, db, unique):
    context = Context.build(settings, db)
    erased, kept = f"p_{unique}_1", f"p_{unique}_10"
    store_accesses(context, read_entries(erased, 3) + read_entries(kept, 2))
    assert context.store.delete_accesses([erased]) == 3
    assert context.store.accesses(erased, 10) == []
    assert len(context.store.accesses(kept, 10)) == 2


def test_entries_past_retention_are_deleted_by_the_sweep(settings, db, unique):
    context = Context.build(settings, db)
    profile_id = f"p_{unique}"
    old, recent = read_entries(profile_id, 2), read_entries(profile_id, 1)
    store_accesses(context, old + recent)
    # far back, so that the sweep leaves the other tests' entries in the shared store alone
    cutoff = datetime(2001, 1, 1, tzinfo=UTC)
    db[ACCESS_LOG].update_many(
        {"_id": {"$in": [f"{profile_id}|{e.message_id}" for e in old]}},
        {"$set": {"at": cutoff - timedelta(days=800)}})
    assert context.store.expire_accesses(cutoff) == 2
    assert [e["_id"] for e in db[ACCESS_LOG].find({"profile_id": profile_id})] == [
        f"{profile_id}|{recent[0].message_id}"]


def listed_by_an_earlier_version(database, profile_id: str, count: int) -> None:
    """Entries as versions before keying by profile stored them: each under its message id,
    listed in its profile's document in LISTED_ACCESSES."""
    at = datetime(2026, 5, 1, tzinfo=UTC)
    database[ACCESS_LOG].insert_many([
        {"_id": f"{profile_id}-m{n}", "profile_id": profile_id, "key_id": f"k{n}",
         "roles": ["agent"], "purpose": "customer_service", "endpoint": "/v1/profiles",
         "at": at + timedelta(minutes=n)} for n in range(count)])
    database[LISTED_ACCESSES].insert_one(
        {"_id": profile_id, "entries": [f"{profile_id}-m{n}" for n in range(count)]})


def test_the_housekeeping_rekeys_entries_an_earlier_version_listed_but_an_erased_profiles_goes(
        settings, db, unique):
    database = db.client[f"muisti_adopt_{unique}"]  # re-keying takes every listed entry
    kept, erased = f"p_{unique}_kept", f"p_{unique}_erased"
    listed_by_an_earlier_version(database, kept, 3)
    listed_by_an_earlier_version(database, erased, 2)
    context = Context.build(settings, database)
    store = context.store
    store.mark_erased([erased], f"req-{unique}", datetime.now(UTC))

    swept = Housekeeping(context, producer=None, sweep_history=False).sweep()

    assert swept["access_log_rekeyed"] == 3

    assert LISTED_ACCESSES not in database.list_collection_names()
    assert sorted(e["_id"] for e in database[ACCESS_LOG].find()) == [
        f"{kept}|{kept}-m0", f"{kept}|{kept}-m1", f"{kept}|{kept}-m2"]
    assert [e["key_id"] for e in store.accesses(kept, 10)] == ["k2", "k1", "k0"]
    assert store.adopt_listed_accesses() == 0  # the next sweep finds nothing to do
    db.client.drop_database(database.name)


def test_entries_listed_by_an_earlier_version_are_read_and_erased_before_rekeying(
        settings, db, unique):
    """Between the upgrade and the housekeeping's re-keying, a profile's entries are both
    listed and keyed: the data-protection officer sees all of them, an erasure deletes all."""
    database = db.client[f"muisti_mixed_{unique}"]
    profile_id = f"p_{unique}"
    listed_by_an_earlier_version(database, profile_id, 2)
    context = Context.build(settings, database)
    store_accesses(context, read_entries(profile_id, 1))

    assert sorted(e["key_id"] for e in context.store.accesses(profile_id, 10)) == [
        "k0", "k0", "k1"]
    assert context.store.delete_accesses([profile_id]) == 3
    assert database[ACCESS_LOG].count_documents({}) == 0
    assert database[LISTED_ACCESSES].count_documents({}) == 0
    db.client.drop_database(database.name)
