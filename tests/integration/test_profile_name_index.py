"""Name search on the real store: a profile is listed under its name in both orders, found by
any prefix of either, only as long as it goes by that name; earlier versions' prefix buckets
are replaced by the housekeeping and consulted (and cleaned) until then."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from services.common.envelope import new_envelope
from services.profile import projection
from services.profile.profile_store import LEGACY_NAMES, NAMES, ProfileStore
from services.profile.worker import Context, Housekeeping


@pytest.fixture
def database(db, unique):
    """A database of the test's own: the housekeeping reads every profile and entry there."""
    own = db.client[f"muisti_names_{unique}"]
    yield own
    db.client.drop_database(own.name)


def named(store: ProfileStore, profile_id: str, first: str, last: str, **fields) -> dict:
    event = new_envelope("Identify", "web", message_id=f"{profile_id}-m1",
                         payload={"traits": {"firstName": first, "lastName": last}}
                         ).resolved_to(profile_id)
    profile = {**projection.apply_event(None, event.to_dict()), **fields}
    store.save(profile)
    return profile


def test_a_name_is_found_by_a_prefix_of_either_name_in_name_order_ignoring_case_and_accents(
        db, unique):
    store = ProfileStore(db)
    last = f"Hämä{unique}"
    store.index_names([(f"p_{unique}_b", None, ("Äijä", last)),
                       (f"p_{unique}_a", None, ("Aada", last)),
                       (f"p_{unique}_c", None, ("Zoe", f"Other{unique}"))])

    found, more = store.search_names(f"hama{unique}", 10)
    assert list(found.items()) == [(f"p_{unique}_a", f"Aada {last}"),
                                   (f"p_{unique}_b", f"Äijä {last}")]
    assert more is False
    assert list(store.search_names(f"AIJA HAMA{unique}", 10)[0]) == [f"p_{unique}_b"]
    assert list(store.search_names(f"hama{unique} aa", 10)[0]) == [f"p_{unique}_a"]
    assert store.search_names("$$", 10) == ({}, False)


def test_names_beyond_ascii_are_found_by_their_prefixes_and_odd_queries_find_nothing(
        db, unique):
    store = ProfileStore(db)
    store.index_names([(f"p_{unique}", None, ("Bjørn", f"Søren{unique}")),
                       (f"p_{unique}_x", None, ("Zoë", f"Łukasz{unique}"))])

    assert list(store.search_names(f"søren{unique} bj", 5)[0]) == [f"p_{unique}"]
    assert list(store.search_names(f"bjørn søren{unique}", 5)[0]) == [f"p_{unique}"]
    assert list(store.search_names(f"łukasz{unique}", 5)[0]) == [f"p_{unique}_x"]
    for query in ("\U0010ffff\U0010ffff", "a\ud7ff", "|%+"):
        assert store.search_names(query, 5)[0] == {}


def test_a_search_stops_at_its_limit_and_says_more_match(db, unique):
    store = ProfileStore(db)
    store.index_names([(f"p_{unique}_{n:02d}", None, (f"Same{unique}", f"Surname{n:02d}"))
                       for n in range(7)])

    found, more = store.search_names(f"same{unique}", 3)
    assert list(found) == [f"p_{unique}_00", f"p_{unique}_01", f"p_{unique}_02"] and more
    assert len(store.search_names(f"same{unique}", 7)[0]) == 7
    assert store.search_names(f"same{unique}", 7)[1] is False


def test_a_renamed_or_unlisted_profile_is_found_by_its_old_name_no_more(db, unique):
    store = ProfileStore(db)
    pid = f"p_{unique}"
    store.index_names([(pid, None, ("Old", f"Name{unique}"))])
    store.index_names([(pid, ("Old", f"Name{unique}"), ("New", f"Name{unique}"))])
    assert store.search_names(f"name{unique}", 5)[0] == {pid: f"New Name{unique}"}
    assert store.search_names(f"old name{unique}", 5)[0] == {}

    store.index_names([(pid, ("New", f"Name{unique}"), None)])
    assert store.search_names(f"name{unique}", 5)[0] == {}
    assert db[NAMES].count_documents({"profile_id": pid}) == 0


def test_the_housekeeping_builds_the_index_from_the_profiles_and_drops_the_old_buckets(
        settings, database):
    context = Context.build(settings, database)
    store = context.store
    named(store, "p_kept", "Kaisa", "Korhonen")
    named(store, "p_restricted", "Kalle", "Korhonen", restricted={"request_id": "r", "at": None})
    named(store, "p_merged", "Kari", "Korhonen", merged_into="p_kept")
    named(store, "p_erased", "Kerttu", "Korhonen")
    store.mark_erased(["p_erased"], "req", datetime.now(UTC))
    # the buckets of earlier versions: a prefix -> {profile id: name}
    database[LEGACY_NAMES].insert_many([
        {"_id": "ko", "entries": {"p_kept": ["Kaisa", "Korhonen"],
                                  "p_old": ["Kosti", "Korhonen"]}},
        {"_id": "korhonen", "entries": {"p_kept": ["Kaisa", "Korhonen"],
                                        "p_old": ["Kosti", "Korhonen"]}}])

    # until rebuilt, a search reads the buckets too, and a profile leaving the index leaves them
    assert store.search_names("ko", 10)[0] == {"p_kept": "Kaisa Korhonen",
                                               "p_old": "Kosti Korhonen"}
    store.index_names([("p_old", ("Kosti", "Korhonen"), None)])
    assert store.search_names("ko", 10)[0] == {"p_kept": "Kaisa Korhonen"}
    assert database[LEGACY_NAMES].find_one({"_id": "ko"})["entries"] == {
        "p_kept": ["Kaisa", "Korhonen"]}

    swept = Housekeeping(context, producer=None, sweep_history=False).sweep()

    assert swept["names_indexed"] == 1
    assert LEGACY_NAMES not in database.list_collection_names()
    assert sorted(e["_id"] for e in database[NAMES].find()) == [
        "kaisa+korhonen|p_kept", "korhonen+kaisa|p_kept"]
    assert store.search_names("korhonen", 10) == ({"p_kept": "Kaisa Korhonen"}, False)
    assert Housekeeping(context, producer=None, sweep_history=False).sweep()[
        "names_indexed"] == 0


def test_a_rebuild_leaves_no_entry_of_a_name_changed_while_it_ran(settings, database):
    store = Context.build(settings, database).store
    database[LEGACY_NAMES].insert_one({"_id": "zz", "entries": {}})
    renamed = named(store, "p_renamed", "Ilona", "Before")
    named(store, "p_erased", "Iiris", "Gone")

    index_names = store.index_names
    calls = []

    def listed_name(profile: dict):
        # as if the projection renamed a profile right after the rebuild read it: saved
        # first, then its index entries moved
        if profile["_id"] == "p_renamed" and not calls:
            store.save({**renamed, "traits": {**renamed["traits"], "last_name": {
                **renamed["traits"]["last_name"], "value": "After"}}})
            index_names([("p_renamed", ("Ilona", "Before"), ("Ilona", "After"))])
        return projection.name_of(profile)

    def index_names_then_erase(changes):
        # and erasure took the other right after the rebuild wrote its entries
        index_names(changes)
        calls.append(changes)
        if len(calls) == 1:
            store.mark_erased(["p_erased"], "req", datetime.now(UTC))
            index_names([("p_erased", ("Iiris", "Gone"), None)])

    store.index_names = index_names_then_erase
    store.rebuild_name_index(listed_name)

    assert sorted(e["_id"] for e in database[NAMES].find()) == [
        "after+ilona|p_renamed", "ilona+after|p_renamed"]


def test_the_erased_sweep_keeps_an_identifier_that_moved_on_while_it_read(database):
    store = ProfileStore(database)
    store.index_entries({"email:gone@x.fi": "p_gone", "email:moving@x.fi": "p_gone",
                         "email:kept@x.fi": "p_kept"})
    store.index_names([("p_gone", None, ("Mennyt", "Pois")), ("p_kept", None, ("Pysyy", "Tässä"))])
    store.mark_erased(["p_gone"], "req", datetime.now(UTC))
    now = datetime.now(UTC)
    # an erasure that marked its profile and has yet to delete it: a retry finds it by these
    named(store, "p_erasing", "Kesken", "Jäänyt")
    store.index_names([("p_erasing", None, ("Kesken", "Jäänyt"))])
    store.index_entries({"email:erasing@x.fi": "p_erasing"})
    store.mark_erased(["p_erasing"], "req-2", now)
    # one marked two days ago and still stored: no erasure is coming back to it, the sweep
    # hands it to be erased
    named(store, "p_stuck", "Jumissa", "Yhä")
    store.index_names([("p_stuck", None, ("Jumissa", "Yhä"))])
    store.index_entries({"email:stuck@x.fi": "p_stuck"})
    store.mark_erased(["p_stuck"], "req-3", now - timedelta(days=2))
    left = []
    # told to stop after the names' first page: the identifiers wait for the next sweep
    assert store.unindex_erased(now, left.append, lambda took: True) == {
        "names": 2, "identifiers": 0}
    assert left == [["p_stuck"]]
    store.index_names([("p_gone", None, ("Mennyt", "Pois"))])
    erased_at = store.erased_at
    reads = []

    def the_identifier_moves_meanwhile(profile_ids):
        erased = erased_at(profile_ids)
        reads.append(erased)
        if len(reads) == 2:  # the identifiers' page is read: one of them moves on now
            store.index_entries({"email:moving@x.fi": "p_kept"})
        return erased

    store.erased_at = the_identifier_moves_meanwhile
    assert store.unindex_erased(now, left.append) == {"names": 2, "identifiers": 1}

    assert left == [["p_stuck"]] * 3
    assert {e["_id"]: e["profile_id"] for e in database["profile_identifiers"].find()} == {
        "email:moving@x.fi": "p_kept", "email:kept@x.fi": "p_kept",
        "email:erasing@x.fi": "p_erasing", "email:stuck@x.fi": "p_stuck"}
    assert sorted(e["_id"] for e in database[NAMES].find()) == [
        "jaanyt+kesken|p_erasing", "jumissa+yha|p_stuck", "kesken+jaanyt|p_erasing",
        "pysyy+tassa|p_kept", "tassa+pysyy|p_kept", "yha+jumissa|p_stuck"]


def test_the_housekeeping_erases_a_profile_its_erasure_left_stored_for_a_day(
        settings, database):
    context = Context.build(settings, database)
    store = context.store
    named(store, "p_left", "Jäänyt", "Kesken")
    store.index_names([("p_left", None, ("Jäänyt", "Kesken"))])
    store.index_entries({"email:left@x.fi": "p_left"})
    store.consents.insert_one({"_id": "p_left", "states": {}})
    store.mark_erased(["p_left"], "req", datetime.now(UTC) - timedelta(days=2))

    Housekeeping(context, producer=None, sweep_history=False).sweep()

    assert store.stored(["p_left"]) == []
    assert database[NAMES].count_documents({}) == 0
    assert database["profile_identifiers"].count_documents({}) == 0
    assert store.consents.count_documents({}) == 0
