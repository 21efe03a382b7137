"""The identity graph in the real store: what erasure asks of it without scanning."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from services.common.store import ensure_indexes
from services.identity.graph import (
    Arrival,
    GraphSnapshot,
    Identifier,
    link_straight,
    new_profile_id,
    resolve,
    straight_events,
)
from services.identity.graph_store import INDEXES, PROFILES, MongoGraph
from services.identity.housekeeping import OrphanLinkSweep
from services.identity.privacy import PrivacyRequest, expand_subject
from services.identity.privacy_store import GraphEraser


def test_profiles_merged_into_a_subject_are_found_through_the_survivor(db, unique):
    ensure_indexes(db, INDEXES)
    graph = MongoGraph(db)
    at = datetime(2026, 11, 1, tzinfo=UTC)
    cookie, login, phone = (Identifier("anonymous_id", f"c-{unique}"),
                            Identifier("user_id", f"U-{unique}"),
                            Identifier("phone", f"+35840{int(unique[:6], 16) % 10**7:07d}"))
    visitor = resolve(graph, [cookie], message_id=f"visit-{unique}", at=at).profile_id
    member = resolve(graph, [login], message_id=f"login-{unique}",
                     at=at + timedelta(seconds=1)).profile_id
    caller = resolve(graph, [phone], message_id=f"call-{unique}",
                     at=at + timedelta(seconds=2)).profile_id
    resolve(graph, [cookie, login], message_id=f"link-{unique}", at=at + timedelta(seconds=3))
    resolve(graph, [login, phone], message_id=f"link2-{unique}", at=at + timedelta(seconds=4))

    assert graph.merged_into([visitor]) == sorted([member, caller])
    subject = expand_subject(graph, PrivacyRequest(f"r-{unique}", "erasure", (visitor,), ()),
                             graph.merged_into)
    assert subject.profile_ids == {visitor, member, caller}
    assert subject.identifiers == {cookie, login, phone}


def test_a_new_customer_raced_by_another_worker_ends_with_every_link_on_the_survivor(db, unique):
    # the poll's snapshot, read before another worker linked the email, says both identifiers
    # are new: the event creates a profile, links the cookie, finds the email taken, and on its
    # next attempt merges into the other worker's profile, which must then hold the cookie too
    ensure_indexes(db, INDEXES)
    graph = MongoGraph(db)
    at = datetime(2026, 11, 1, tzinfo=UTC)
    cookie = Identifier("anonymous_id", f"c-{unique}")
    email = Identifier("email", f"raced.{unique}@example.com")
    stale = GraphSnapshot(graph, [cookie, email], {}, {})
    other = resolve(graph, [email], message_id=f"other-{unique}", at=at).profile_id

    result = resolve(graph, [cookie, email], message_id=f"raced-{unique}",
                     at=at + timedelta(seconds=1), first_look=stale)

    assert result.profile_id == other
    links = graph.links([cookie, email])
    assert {links[cookie].profile_id, links[email].profile_id} == {other}
    assert graph.profile(other).identifiers >= {cookie, email}


def test_plain_links_made_together_are_stored_as_one_at_a_time_and_a_raced_one_resolves_again(
        db, unique):
    ensure_indexes(db, INDEXES)
    graph = MongoGraph(db)
    at = datetime(2026, 11, 1, tzinfo=UTC)
    cookies = [Identifier("anonymous_id", f"c{n}-{unique}") for n in range(4)]
    email = Identifier("email", f"raced.{unique}@example.com")
    login = Identifier("user_id", f"U3-{unique}")
    known = resolve(graph, [cookies[3]], message_id=f"known-{unique}", at=at).profile_id
    arrivals = [Arrival(f"m0-{unique}", at, (cookies[0],)),
                Arrival(f"m1-{unique}", at, (cookies[1], Identifier("user_id", f"U-{unique}"))),
                Arrival(f"m2-{unique}", at, (cookies[2], email)),
                Arrival(f"m3-{unique}", at, (cookies[3], login))]
    snapshot = graph.snapshot([*cookies, email, login])
    found = straight_events(snapshot, arrivals)
    # another worker takes the email meanwhile (a minute earlier, so its profile is the older)
    other = resolve(graph, [email], message_id=f"other-{unique}",
                    at=at - timedelta(minutes=1)).profile_id

    linked = link_straight(graph, found, snapshot)

    assert sorted(linked) == [f"m0-{unique}", f"m1-{unique}", f"m3-{unique}"]
    assert linked[f"m3-{unique}"].profile_id == known and not linked[f"m3-{unique}"].created
    assert graph.profile(known).identifiers == {cookies[3], login}
    for arrival in arrivals[:2]:
        profile = graph.profile(new_profile_id(arrival.message_id))
        assert profile.created_at == at and profile.merged_into is None
        assert profile.identifiers == set(arrival.identifiers)
    for arrival in [*arrivals[:2], arrivals[3]]:
        profile_id = linked[arrival.message_id].profile_id
        assert {link.profile_id for link in graph.links(arrival.identifiers).values()} == {
            profile_id}
    # the third lost its email: its cookie stayed linked to its new profile, and resolved as
    # usual in its turn, that profile merges into the older one holding the email
    raced = resolve(graph, [cookies[2], email], message_id=f"m2-{unique}", at=at,
                    first_look=snapshot)
    assert raced.profile_id == other
    assert [merge.merged for merge in raced.merges] == [new_profile_id(f"m2-{unique}")]
    assert graph.profile(other).identifiers >= {cookies[2], email}


def test_the_daily_sweep_removes_links_left_to_an_erased_profile_and_no_other(db, unique):
    own = db.client[f"orphans_{unique}"]  # the sweep reads every link of its database
    try:
        ensure_indexes(own, INDEXES)
        graph = MongoGraph(own)
        at = datetime(2026, 11, 1, tzinfo=UTC)
        login, card = Identifier("user_id", f"U-{unique}"), Identifier("loyalty_id", f"L{unique}")
        other = Identifier("email", f"other.{unique}@example.fi")
        erased = resolve(graph, [login, card], message_id=f"join-{unique}", at=at).profile_id
        kept = resolve(graph, [other], message_id=f"other-{unique}", at=at).profile_id
        # a release cut short: off the profile's list, its link not yet deleted
        own[PROFILES].update_one({"_id": erased}, {"$pull": {"identifiers.loyalty_id": card.value}})
        GraphEraser(own).erase_graph([erased], graph.listed(erased))
        assert set(graph.links([login, card, other])) == {card, other}

        assert OrphanLinkSweep(graph).sweep() == 1

        assert {i: link.profile_id for i, link in graph.links([login, card, other]).items()} == {
            other: kept}
    finally:
        db.client.drop_database(own.name)


def test_a_release_cut_short_stays_released_once_the_profile_holds_another(db, unique):
    graph = MongoGraph(db)
    at = datetime(2026, 11, 1, tzinfo=UTC)
    old_login = Identifier("user_id", f"U1-{unique}")
    new_login = Identifier("user_id", f"U2-{unique}")
    email = Identifier("email", f"release.{unique}@example.fi")
    customer = resolve(graph, [old_login, email], message_id=f"join-{unique}", at=at).profile_id
    # the release took the old login off the profile's list; a crash came before its link went
    db[PROFILES].update_one({"_id": customer}, {"$pull": {"identifiers.user_id": old_login.value}})
    resolve(graph, [new_login, email], message_id=f"new-{unique}", at=at)

    later = resolve(graph, [old_login, email], message_id=f"old-{unique}", at=at)

    assert later.profile_id == customer and [c.identifier for c in later.conflicts] == [old_login]
    assert graph.listed(customer) == {new_login, email}
    assert set(graph.links([old_login, new_login, email])) == {new_login, email}
