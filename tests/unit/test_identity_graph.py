"""The identity graph's rules, driven through the in-memory repository."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from services.identity.graph import (
    DEFAULT_LIMITS,
    PRIORITY,
    Arrival,
    GraphSnapshot,
    Identifier,
    Link,
    Merge,
    link_straight,
    new_profile_id,
    priority_order,
    profiles_to_lock,
    resolve,
    straight_events,
)
from tests.support.identity_fakes import InMemoryGraph

T0 = datetime(2026, 11, 1, tzinfo=UTC)


def ident(key: str) -> Identifier:
    return Identifier.from_key(key)


def apply(graph, keys, n=[0], unverified=()):  # noqa: B006 - a counter for unique ids
    n[0] += 1
    return resolve(graph, [ident(k) for k in keys], message_id=f"m{n[0]}",
                   at=T0 + timedelta(seconds=n[0]), unverified=[ident(k) for k in unverified])


def test_unknown_identifiers_create_one_new_profile_holding_all_of_them():
    graph = InMemoryGraph()
    result = apply(graph, ["email:a@example.com", "anonymous_id:c1"])
    assert result.created
    both = frozenset({ident("email:a@example.com"), ident("anonymous_id:c1")})
    assert graph.partition() == {both}


def test_cookie_then_login_then_phone_end_in_one_profile():
    graph = InMemoryGraph()
    first = apply(graph, ["anonymous_id:c1"])
    apply(graph, ["anonymous_id:c1", "user_id:L1"])
    last = apply(graph, ["user_id:L1", "phone:+358401234567"])
    assert last.profile_id == first.profile_id
    assert len(graph.partition()) == 1


def test_event_linking_two_profiles_merges_them_into_the_older():
    graph = InMemoryGraph()
    older = apply(graph, ["email:a@example.com"])
    newer = apply(graph, ["phone:+358401234567"])
    result = apply(graph, ["email:a@example.com", "phone:+358401234567"])
    assert result.profile_id == older.profile_id
    assert [(m.survivor, m.merged) for m in result.merges] == [(older.profile_id, newer.profile_id)]
    assert len(graph.partition()) == 1


def test_second_user_id_never_merges_and_the_conflict_is_recorded():
    graph = InMemoryGraph()
    apply(graph, ["user_id:L1", "email:a@example.com"])
    other = apply(graph, ["user_id:L2"])
    result = apply(graph, ["user_id:L2", "email:a@example.com"])
    assert result.profile_id == other.profile_id
    assert not result.merges
    assert [c.identifier for c in result.conflicts] == [ident("email:a@example.com")]
    assert "user_id" in result.conflicts[0].reason
    assert len(graph.partition()) == 2


def test_sixth_email_is_not_linked_but_the_event_still_resolves():
    graph = InMemoryGraph()
    for i in range(5):
        profile = apply(graph, ["user_id:L1", f"email:e{i}@example.com"]).profile_id
    result = apply(graph, ["user_id:L1", "email:e5@example.com"])
    assert result.profile_id == profile
    assert result.conflicts and "limit" in result.conflicts[0].reason
    assert ident("email:e5@example.com") not in graph.link_table


def test_a_link_left_pointing_at_an_erased_profile_counts_as_no_link():
    graph = InMemoryGraph()
    erased = apply(graph, ["email:a@example.com", "anonymous_id:c1"])
    # erased while a crash had left the cookie's link off the profile's list
    graph.listed_on[erased.profile_id].discard(ident("anonymous_id:c1"))
    del graph.link_table[ident("email:a@example.com")]
    del graph.nodes[erased.profile_id], graph.listed_on[erased.profile_id]

    later = apply(graph, ["anonymous_id:c1", "user_id:L9"])

    assert later.created and later.profile_id != erased.profile_id
    assert {link.profile_id for link in graph.link_table.values()} == {later.profile_id}
    assert graph.profile(later.profile_id).identifiers == {ident("anonymous_id:c1"),
                                                           ident("user_id:L9")}


def test_a_callers_profile_left_listing_an_identifier_now_verified_elsewhere_still_joins():
    graph = InMemoryGraph()
    known = apply(graph, ["user_id:L1"])
    caller = apply(graph, ["phone:+358401234567", "anonymous_id:c1"],
                   unverified=["phone:+358401234567"])
    # the cookie was released, and a crash came between deleting its link and its listing
    del graph.link_table[ident("anonymous_id:c1")]
    apply(graph, ["anonymous_id:c1"])  # now another visitor's, verified
    customer = apply(graph, ["user_id:L1", "phone:+358401234567"])
    assert [(m.survivor, m.merged) for m in customer.merges] == [
        (known.profile_id, caller.profile_id)]
    assert not customer.conflicts


def test_a_release_cut_short_is_not_listed_again_once_the_profile_holds_another():
    graph = InMemoryGraph()
    customer = apply(graph, ["user_id:L1", "email:a@example.com"]).profile_id
    # L1 released: taken off the profile's list, and a crash came before its link went
    graph.listed_on[customer].discard(ident("user_id:L1"))
    apply(graph, ["email:a@example.com", "user_id:L2"])  # the customer's new login

    later = apply(graph, ["user_id:L1", "email:a@example.com"])

    assert later.profile_id == customer
    assert [(c.identifier, c.reason) for c in later.conflicts] == [
        (ident("user_id:L1"), "profile already has 1 user_id (limit)")]
    assert graph.profile(customer).identifiers == {ident("user_id:L2"),
                                                   ident("email:a@example.com")}
    assert ident("user_id:L1") not in graph.link_table


def test_a_link_listed_again_counts_toward_the_limit_of_the_event_that_lists_it():
    graph = InMemoryGraph()
    emails = [f"email:e{n}@example.com" for n in range(5)]
    customer = apply(graph, emails).profile_id
    graph.listed_on[customer].discard(ident(emails[4]))  # its listing cut short

    later = apply(graph, [emails[4], "email:e5@example.com"])

    assert later.profile_id == customer
    assert [c.identifier for c in later.conflicts] == [ident("email:e5@example.com")]
    assert graph.profile(customer).identifiers == {ident(e) for e in emails}


def test_caller_id_number_finds_the_profile_but_never_merges_two():
    graph = InMemoryGraph()
    web = apply(graph, ["user_id:L1", "phone:+358401234567"])
    assert apply(graph, ["phone:+358401234567"], unverified=["phone:+358401234567"]
                 ).profile_id == web.profile_id
    other = apply(graph, ["user_id:L2", "phone:+358409999999"], unverified=["phone:+358409999999"])
    result = apply(graph, ["user_id:L1", "phone:+358409999999"])
    assert not result.merges and result.conflicts
    assert result.profile_id == web.profile_id != other.profile_id


def test_unknown_callers_profile_joins_the_customer_who_later_verifies_the_number():
    graph = InMemoryGraph()
    known = apply(graph, ["user_id:L1"])
    caller = apply(graph, ["phone:+358401234567"], unverified=["phone:+358401234567"])
    customer = apply(graph, ["user_id:L1", "phone:+358401234567"])
    assert [(m.survivor, m.merged) for m in customer.merges] == [
        (known.profile_id, caller.profile_id)]
    assert not customer.conflicts
    assert len(graph.partition()) == 1


@given(st.permutations(["visit", "call", "verified", "login"]))
def test_visit_call_identity_check_and_login_end_in_one_profile_in_any_order(order):
    graph = InMemoryGraph()
    events = {"visit": (["anonymous_id:c1"], []),
              "verified": (["user_id:L1", "hetu:220478-123H"], []),
              "call": (["phone:+358401234567"], ["phone:+358401234567"]),
              "login": (["user_id:L1", "anonymous_id:c1", "phone:+358401234567"], [])}
    for name in order:
        keys, unverified = events[name]
        apply(graph, keys, unverified=unverified)
    assert len(graph.partition()) == 1


def test_replaying_an_event_changes_nothing():
    graph = InMemoryGraph()
    apply(graph, ["email:a@example.com"])
    apply(graph, ["phone:+358401234567"])
    keys = [ident("email:a@example.com"), ident("phone:+358401234567")]
    first = resolve(graph, keys, message_id="same", at=T0)
    before = graph.partition()
    again = resolve(graph, keys, message_id="same", at=T0)
    assert again.profile_id == first.profile_id and not again.merges
    assert graph.partition() == before


def test_priority_puts_user_id_first_and_cookies_last():
    ordered = priority_order([ident("anonymous_id:x"), ident("email:a@b.fi"), ident("user_id:1")])
    assert [i.type for i in ordered] == ["user_id", "email", "anonymous_id"]


# --- property: the graph equals an independent oracle ----------------------------------------

class Oracle:
    """Connected components under the limits, by union-find in event order: for each event,
    identifiers in priority order join the first one's component unless that would break a
    limit. Written independently of services.identity.graph."""

    def __init__(self, limits):
        self.limits = limits
        self.parent: dict[Identifier, Identifier] = {}

    def find(self, x):
        while self.parent[x] != x:
            self.parent[x] = self.parent[self.parent[x]]
            x = self.parent[x]
        return x

    def members(self, root):
        return [x for x in self.parent if self.find(x) == root]

    def counts(self, root):
        counts: dict[str, int] = {}
        for x in self.members(root):
            counts[x.type] = counts.get(x.type, 0) + 1
        return counts

    def apply(self, identifiers):
        ordered = priority_order(identifiers)
        known = [i for i in ordered if i in self.parent]
        anchor = known[0] if known else ordered[0]
        self.parent.setdefault(anchor, anchor)
        for identifier in ordered:
            root = self.find(anchor)
            if identifier not in self.parent:
                if self.counts(root).get(identifier.type, 0) < self.limits[identifier.type]:
                    self.parent[identifier] = root
                continue
            other = self.find(identifier)
            if other == root:
                continue
            a, b = self.counts(root), self.counts(other)
            if all(a.get(t, 0) + b.get(t, 0) <= self.limits[t] for t in set(a) | set(b)):
                self.parent[other] = root

    def partition(self):
        groups: dict[Identifier, set[Identifier]] = {}
        for x in self.parent:
            groups.setdefault(self.find(x), set()).add(x)
        return {frozenset(g) for g in groups.values()}


SMALL_LIMITS = {**DEFAULT_LIMITS, "email": 2, "phone": 2, "anonymous_id": 3}
identifiers = st.builds(
    Identifier,
    st.sampled_from(["user_id", "email", "phone", "anonymous_id"]),
    st.sampled_from(["1", "2", "3", "4", "5"]),
)
events = st.lists(st.lists(identifiers, min_size=1, max_size=4), min_size=1, max_size=40)


@settings(max_examples=300, deadline=None)
@given(events)
def test_graph_matches_the_connected_components_oracle_under_limits(event_list):
    graph, oracle = InMemoryGraph(), Oracle(SMALL_LIMITS)
    for index, event in enumerate(event_list):
        resolve(graph, event, message_id=f"m{index}", at=T0 + timedelta(seconds=index),
                limits=SMALL_LIMITS)
        oracle.apply(event)
    assert graph.partition() == oracle.partition()
    for group in graph.partition():
        for type_ in PRIORITY:
            assert sum(1 for i in group if i.type == type_) <= SMALL_LIMITS[type_]


def snapshot_of(graph, identifiers) -> GraphSnapshot:
    """What the worker reads when a batch begins."""
    links = graph.links(identifiers)
    nodes = {link.profile_id: graph.profile(link.profile_id) for link in links.values()}
    return GraphSnapshot(graph, identifiers, links, nodes)


@settings(max_examples=300, deadline=None)
@given(events, st.integers(min_value=1, max_value=12))
# two customers merge early in a batch; a later event of the batch names only the merged one
@example([[ident("email:1")], [ident("phone:1")], [ident("email:1"), ident("phone:1")],
          [ident("phone:1")]], 2)
def test_a_batch_resolved_from_a_snapshot_ends_as_one_event_at_a_time(event_list, batch_size):
    one_by_one, batched = InMemoryGraph(), InMemoryGraph()
    expected, got = [], []
    for index, event in enumerate(event_list):
        expected.append(resolve(one_by_one, event, message_id=f"m{index}",
                                at=T0 + timedelta(seconds=index), limits=SMALL_LIMITS))
    for start in range(0, len(event_list), batch_size):
        batch = event_list[start:start + batch_size]
        snapshot = snapshot_of(batched, {i for event in batch for i in event})
        for index, event in enumerate(batch, start):
            got.append(resolve(batched, event, message_id=f"m{index}",
                               at=T0 + timedelta(seconds=index), limits=SMALL_LIMITS,
                               first_look=snapshot))
    assert batched.partition() == one_by_one.partition()
    assert [r.profile_id for r in got] == [r.profile_id for r in expected]
    assert [r.merges for r in got] == [r.merges for r in expected]


@settings(max_examples=300, deadline=None)
@given(events, st.integers(min_value=1, max_value=12))
# a new customer's cookie seen again, with a login, later in the same batch
@example([[ident("anonymous_id:1")], [ident("email:1")],
          [ident("anonymous_id:1"), ident("user_id:1")]], 3)
# a known customer gains an email, then another event merges its profile away
@example([[ident("anonymous_id:1")], [ident("email:1")], [ident("user_id:1")],
          [ident("email:1"), ident("user_id:1")], [ident("anonymous_id:1"), ident("email:2")]], 2)
def test_a_batch_whose_plain_links_are_made_first_ends_as_one_event_at_a_time(
        event_list, batch_size):
    one_by_one, batched = InMemoryGraph(), InMemoryGraph()
    expected = [resolve(one_by_one, event, message_id=f"m{index}",
                        at=T0 + timedelta(seconds=index), limits=SMALL_LIMITS)
                for index, event in enumerate(event_list)]
    got = []
    for start in range(0, len(event_list), batch_size):
        batch = event_list[start:start + batch_size]
        snapshot = snapshot_of(batched, {i for event in batch for i in event})
        arrivals = [Arrival(f"m{index}", T0 + timedelta(seconds=index), tuple(event))
                    for index, event in enumerate(batch, start)]
        created = link_straight(
            batched, straight_events(snapshot, arrivals, SMALL_LIMITS), snapshot)
        for arrival, event in zip(arrivals, batch, strict=True):
            got.append(created.get(arrival.message_id)
                       or resolve(batched, event, message_id=arrival.message_id, at=arrival.at,
                                  limits=SMALL_LIMITS, first_look=snapshot))
    assert batched.partition() == one_by_one.partition()
    assert [r.profile_id for r in got] == [r.profile_id for r in expected]
    assert [r.merges for r in got] == [r.merges for r in expected]
    assert [r.created for r in got] == [r.created for r in expected]


def test_only_events_that_just_link_what_nothing_before_them_touches_are_straight():
    graph = InMemoryGraph()
    known = apply(graph, ["email:known@x.fi"]).profile_id
    apply(graph, ["email:other@x.fi"])
    arrivals = [Arrival("m1", T0, (ident("anonymous_id:c1"),)),
                Arrival("m2", T0, (ident("anonymous_id:c1"), ident("user_id:u1"))),
                Arrival("m3", T0, (ident("anonymous_id:c3"), ident("email:known@x.fi"))),
                Arrival("m4", T0, (ident("email:a@x.fi"), ident("email:b@x.fi"))),
                Arrival("m5", T0, (ident("email:known@x.fi"), ident("email:other@x.fi"))),
                Arrival("m6", T0, (ident("user_id:u6"), ident("email:other@x.fi"))),
                Arrival("m7", T0, (ident("email:other@x.fi"),)),
                Arrival("m8", T0, (ident("phone:+358401234567"), ident("anonymous_id:c8")))]

    found = straight_events(graph, arrivals, {**DEFAULT_LIMITS, "email": 1})

    # m2 names m1's cookie, m4 is over the email limit, m5 would merge, m6's profile was
    # touched by m5, m7 links nothing new
    assert [(s.event.message_id, s.profile and s.profile.profile_id) for s in found] == [
        ("m1", None), ("m3", known), ("m8", None)]


def test_a_profile_a_crash_left_half_written_is_resolved_as_usual_not_straight():
    graph = InMemoryGraph()
    unlisted = apply(graph, ["anonymous_id:c1"]).profile_id
    graph.listed_on[unlisted].clear()  # its link stored, its record's list not yet
    survivor = apply(graph, ["user_id:u2"]).profile_id
    merged = apply(graph, ["anonymous_id:c2"]).profile_id
    graph.merge(Merge("x", survivor, merged, None, "decision", T0))
    graph.link_table[ident("anonymous_id:c2")] = Link(ident("anonymous_id:c2"), merged, True,
                                                      "m", T0)  # a link the merge left behind
    arrivals = [Arrival("m1", T0, (ident("anonymous_id:c1"), ident("email:a@x.fi"))),
                Arrival("m2", T0, (ident("anonymous_id:c2"), ident("email:b@x.fi")))]

    assert straight_events(graph, arrivals) == []


def test_links_and_profiles_changed_before_the_locks_are_read_again_before_linking_together():
    graph = InMemoryGraph()
    erased = apply(graph, ["email:x@x.fi"]).profile_id
    kept = apply(graph, ["email:p@x.fi", "phone:+358401111111"]).profile_id
    apply(graph, ["email:q@x.fi"])
    arrivals = [Arrival("m1", T0, (ident("email:x@x.fi"), ident("phone:+358402222222"))),
                Arrival("m2", T0, (ident("email:q@x.fi"), ident("user_id:z"))),
                Arrival("m3", T0, (ident("email:p@x.fi"), ident("user_id:y")))]
    snapshot = snapshot_of(graph, {i for arrival in arrivals for i in arrival.identifiers})
    # before the chunk's locks: an erasure deletes one profile, another worker links z to
    # the profile m3 would extend (m2 would now merge it, so m3 must wait its turn)
    del graph.link_table[ident("email:x@x.fi")], graph.nodes[erased], graph.listed_on[erased]
    graph.add_links([Link(ident("user_id:z"), kept, True, "elsewhere", T0)])

    snapshot.reread([i for arrival in arrivals for i in arrival.identifiers], [erased, kept])
    found = straight_events(snapshot, arrivals)

    assert [(s.event.message_id, s.profile) for s in found] == [("m1", None)]


def test_a_straight_event_that_loses_an_identifier_to_another_worker_resolves_again():
    graph = InMemoryGraph()
    cookie, email = ident("anonymous_id:c-raced"), ident("email:raced@x.fi")
    arrival = Arrival("m-raced", T0 + timedelta(days=1), (cookie, email))
    snapshot = GraphSnapshot(graph, [cookie, email], {}, {})
    found = straight_events(snapshot, [arrival])
    other = apply(graph, ["email:raced@x.fi"]).profile_id  # meanwhile, another worker

    assert link_straight(graph, found, snapshot) == {}
    result = resolve(graph, [cookie, email], message_id="m-raced", at=arrival.at,
                     first_look=snapshot)

    assert result.profile_id == other
    assert {link.profile_id for link in graph.links([cookie, email]).values()} == {other}


def test_a_known_customer_resolved_from_a_snapshot_costs_no_read():
    graph = InMemoryGraph()
    first = apply(graph, ["anonymous_id:c1", "email:a@x.fi"])
    snapshot = snapshot_of(graph, [ident("anonymous_id:c1"), ident("email:a@x.fi")])
    graph.links = graph.profile = None  # any read past the snapshot would fail

    again = resolve(graph, [ident("email:a@x.fi"), ident("anonymous_id:c1")], message_id="m-again",
                    at=T0, first_look=snapshot)

    assert again.profile_id == first.profile_id and not again.linked


def test_an_event_that_loses_one_identifier_to_another_worker_ends_with_all_on_the_winner():
    # the snapshot says both are new; meanwhile another worker links the email. The cookie's
    # link, stored before the email's failed, must follow the merge into the winner's profile
    graph = InMemoryGraph()
    cookie, email = ident("anonymous_id:c-raced"), ident("email:raced@x.fi")
    stale = GraphSnapshot(graph, [cookie, email], {}, {})
    other = apply(graph, ["email:raced@x.fi"]).profile_id

    result = resolve(graph, [cookie, email], message_id="m-raced", at=T0 + timedelta(days=1),
                     first_look=stale)

    assert result.profile_id == other
    assert {link.profile_id for link in graph.links([cookie, email]).values()} == {other}
    assert graph.profile(other).identifiers >= {cookie, email}


class CountingGraph(InMemoryGraph):
    """Counts locks taken and reads made."""

    def __init__(self):
        super().__init__()
        self.locked, self.reads = [], 0

    def lock(self, profile_ids):
        self.locked.append(sorted(profile_ids))
        return super().lock(profile_ids)

    def links(self, identifiers):
        self.reads += 1
        return super().links(identifiers)

    def profile(self, profile_id):
        self.reads += 1
        return super().profile(profile_id)


def test_a_new_customers_profile_is_locked_until_its_record_lists_its_links():
    # another worker reaching the new profile through a link must not merge it before then
    graph = CountingGraph()
    created = apply(graph, ["anonymous_id:c1"])
    assert created.created and graph.locked == [[created.profile_id]]

    extended = apply(graph, ["anonymous_id:c1", "email:a@x.fi"])

    assert extended.profile_id == created.profile_id and extended.linked == [ident("email:a@x.fi")]
    assert graph.locked == [[created.profile_id], [created.profile_id]]


def test_a_customers_later_events_in_one_batch_read_nothing_after_the_first_changed_the_graph():
    graph = CountingGraph()
    batch = [["anonymous_id:c1"], ["anonymous_id:c1"], ["anonymous_id:c1", "email:a@x.fi"],
             ["email:a@x.fi"], ["anonymous_id:c1", "email:a@x.fi"]]
    snapshot = snapshot_of(graph, {i for event in batch for i in map(ident, event)})
    graph.reads = 0

    results = [resolve(graph, [ident(k) for k in event], message_id=f"b{n}", at=T0,
                       first_look=snapshot) for n, event in enumerate(batch)]

    assert len({r.profile_id for r in results}) == 1
    assert graph.reads == 2  # the links and the profile, re-read under the lock to extend it


def test_accepted_suggestion_merges_two_profiles_into_the_older():
    from services.identity.graph import merge_profiles

    graph = InMemoryGraph()
    older = apply(graph, ["email:a@example.com"]).profile_id
    newer = apply(graph, ["phone:+358401234567"]).profile_id
    merge = merge_profiles(graph, newer, older, decision_id="s1", at=T0)
    assert (merge.survivor, merge.merged, merge.identifier) == (older, newer, None)
    assert len(graph.partition()) == 1
    assert merge_profiles(graph, newer, older, decision_id="s1", at=T0) is None


def test_accepted_suggestion_still_respects_merge_protection():
    import pytest

    from services.identity.graph import MergeRefused, merge_profiles

    graph = InMemoryGraph()
    a = apply(graph, ["user_id:L1"]).profile_id
    b = apply(graph, ["user_id:L2"]).profile_id
    with pytest.raises(MergeRefused, match="user_id"):
        merge_profiles(graph, a, b, decision_id="s2", at=T0)


def test_the_profiles_an_event_will_lock_are_named_before_it_is_resolved():
    graph = InMemoryGraph()
    known = apply(graph, ["email:a@example.com", "anonymous_id:c1"]).profile_id
    other = apply(graph, ["phone:+358401234567"]).profile_id

    def locks(keys, message_id="m-next"):
        return profiles_to_lock(graph, [ident(k) for k in keys], message_id)

    assert locks(["email:a@example.com"]) == []  # a known customer again changes nothing
    assert locks(["email:b@example.com"], "m-new") == [new_profile_id("m-new")]
    assert locks(["email:a@example.com", "anonymous_id:c2"]) == [known]
    assert locks(["email:a@example.com", "phone:+358401234567"]) == sorted([known, other])
    assert locks([]) == []


# --- an account renamed: an event naming an earlier user_id of its own (Segment's alias) ---

def rename(graph, earlier, current, n=[0]):  # noqa: B006 - a counter for unique ids
    """An alias from ``earlier`` (a user_id the graph knows) to ``current``."""
    n[0] += 1
    return resolve(graph, [ident(earlier), ident(current)],
                   message_id=f"alias{n[0]}", at=T0 + timedelta(days=1, seconds=n[0]),
                   renamed=[ident(earlier)])


def test_an_alias_from_an_earlier_user_id_gives_its_profile_the_new_one():
    graph = InMemoryGraph()
    old = apply(graph, ["user_id:old", "email:a@x.fi"]).profile_id

    result = rename(graph, "user_id:old", "user_id:new")

    assert result.profile_id == old and result.linked == [ident("user_id:new")]
    assert not result.conflicts
    assert graph.partition() == {frozenset(map(ident, ["user_id:old", "user_id:new",
                                                       "email:a@x.fi"]))}
    assert graph.profile(old).renamed == {ident("user_id:old")}
    assert result.renamed == [ident("user_id:old")]


def test_an_alias_from_an_earlier_user_id_merges_the_new_ones_profile_into_the_older():
    graph = InMemoryGraph()
    old = apply(graph, ["user_id:old", "email:a@x.fi"]).profile_id
    new = apply(graph, ["user_id:new", "anonymous_id:c1"]).profile_id

    result = rename(graph, "user_id:old", "user_id:new")

    assert [(m.survivor, m.merged) for m in result.merges] == [(old, new)]
    assert len(graph.partition()) == 1
    assert graph.profile(old).renamed == {ident("user_id:old")}


def test_a_renamed_account_counts_as_one_user_id_toward_every_later_merge():
    graph = InMemoryGraph()
    old = apply(graph, ["user_id:z-old"]).profile_id
    rename(graph, "user_id:z-old", "user_id:a-new")  # the new name sorting first changes nothing
    visitor = apply(graph, ["anonymous_id:c9"]).profile_id
    someone = apply(graph, ["user_id:third", "email:b@x.fi"]).profile_id

    login = apply(graph, ["user_id:a-new", "anonymous_id:c9"])  # a new device, then the login
    claim = apply(graph, ["user_id:a-new", "email:b@x.fi"])  # another account's email

    assert login.profile_id == old and [m.merged for m in login.merges] == [visitor]
    assert not claim.merges and "user_id" in claim.conflicts[0].reason
    assert graph.profile(someone).merged_into is None


def test_an_alias_keeps_two_people_apart_by_every_other_limit():
    graph = InMemoryGraph()
    old = apply(graph, ["user_id:old", "hetu:hmac:1"]).profile_id
    new = apply(graph, ["user_id:new", "hetu:hmac:2"]).profile_id

    result = rename(graph, "user_id:old", "user_id:new")

    assert not result.merges and "hetu" in result.conflicts[0].reason
    assert graph.profile(old).renamed == graph.profile(new).renamed == frozenset()
    assert not result.renamed


def test_an_alias_whose_earlier_name_a_crash_left_unlisted_lists_it_when_delivered_again():
    graph = InMemoryGraph()
    old = apply(graph, ["user_id:old"]).profile_id
    note_renamed = graph.note_renamed

    def killed(*args):
        raise SystemExit("killed")

    graph.note_renamed = killed
    with pytest.raises(SystemExit):
        rename(graph, "user_id:old", "user_id:new")
    graph.note_renamed = note_renamed
    assert graph.profile(old).identifiers >= {ident("user_id:new")}
    assert graph.profile(old).renamed == frozenset()

    again = resolve(graph, [ident("user_id:old"), ident("user_id:new")], message_id="alias-x",
                    at=T0, renamed=[ident("user_id:old")])

    assert again.renamed == [ident("user_id:old")] and graph.profile(old).renamed


def test_a_renamed_user_id_split_off_again_counts_again():
    from services.identity.graph import split

    graph = InMemoryGraph()
    old = apply(graph, ["user_id:old", "email:a@x.fi"]).profile_id
    rename(graph, "user_id:old", "user_id:new")

    parted = split(graph, old, [ident("user_id:old")], reason="two people", at=T0, actor="a")

    assert graph.profile(old).renamed == frozenset()
    assert graph.profile(parted.new_profile_id).renamed == frozenset()
    assert "user_id" in apply(graph, ["user_id:old", "email:a@x.fi"]).conflicts[0].reason


def test_an_account_renamed_back_still_counts_as_one_user_id():
    graph = InMemoryGraph()
    old = apply(graph, ["user_id:a", "email:a@x.fi"]).profile_id
    rename(graph, "user_id:a", "user_id:b")
    rename(graph, "user_id:b", "user_id:a")  # both names listed as earlier ones now
    stranger = apply(graph, ["user_id:stranger", "email:s@x.fi"]).profile_id

    claim = apply(graph, ["user_id:stranger", "email:a@x.fi"])

    assert not claim.merges and "user_id" in claim.conflicts[0].reason
    assert graph.profile(old).merged_into is None is graph.profile(stranger).merged_into


def test_an_account_whose_new_name_was_split_off_still_counts_its_earlier_one():
    from services.identity.graph import split

    graph = InMemoryGraph()
    old = apply(graph, ["user_id:old", "email:a@x.fi"]).profile_id
    rename(graph, "user_id:old", "user_id:new")
    split(graph, old, [ident("user_id:new")], reason="two people", at=T0, actor="a")

    claim = apply(graph, ["user_id:x", "email:a@x.fi"])

    assert claim.profile_id == old and "user_id" in claim.conflicts[0].reason
    assert ident("user_id:x") not in graph.profile(old).identifiers


def test_an_account_renamed_twice_holds_its_three_names_as_one():
    graph = InMemoryGraph()
    old = apply(graph, ["user_id:a", "email:a@x.fi"]).profile_id
    rename(graph, "user_id:a", "user_id:b")

    again = rename(graph, "user_id:b", "user_id:c")

    assert again.profile_id == old and not again.conflicts
    assert graph.profile(old).renamed == {ident("user_id:a"), ident("user_id:b")}
    assert "user_id" in apply(graph, ["user_id:d", "email:a@x.fi"]).conflicts[0].reason


def test_an_event_that_may_rename_is_never_straight_but_keeps_later_ones_off_what_it_names():
    graph = InMemoryGraph()
    old = apply(graph, ["user_id:old"]).profile_id
    arrivals = [Arrival("m1", T0, (ident("user_id:old"), ident("user_id:new")),
                        renamed=frozenset({ident("user_id:old")})),
                Arrival("m2", T0, (ident("user_id:old"), ident("anonymous_id:c2"))),
                Arrival("m3", T0, (ident("anonymous_id:c3"),))]

    found = straight_events(graph, arrivals)

    assert [s.event.message_id for s in found] == ["m3"]
    assert profiles_to_lock(graph, arrivals[0].identifiers, "m1", arrivals[0].renamed) == [old]
