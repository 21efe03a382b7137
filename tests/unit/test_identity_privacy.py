"""How the identity service reads a data-subject request and finds everything about its
subject in the graph."""

from __future__ import annotations

from contextlib import contextmanager
from datetime import UTC, datetime, timedelta

import pytest

from services.common.identifiers import normalise
from services.identity.graph import Identifier, resolve, split
from services.identity.privacy import (
    InvalidRequest,
    expand_subject,
    locked_subject,
    parse_request,
    unlink_erased,
)
from tests.support.identity_fakes import InMemoryGraph

T0 = datetime(2026, 11, 1, tzinfo=UTC)
HANDLE = Identifier("twitter_handle", normalise("twitter_handle", "@Maija"))


def merged_into(graph: InMemoryGraph):
    return lambda ids: [n.profile_id for n in graph.nodes.values() if n.merged_into in ids]


def test_request_identifiers_are_normalised_as_on_ingestion():
    request = parse_request({"request_id": "r1", "kind": "erasure",
                             "identifiers": [{"type": "phone", "value": "040 123 4567"}]})
    assert request.identifiers == (Identifier("phone", "+358401234567"),)


@pytest.mark.parametrize("payload, reason", [
    ({"kind": "erasure", "profile_ids": ["p"]}, "request_id"),
    ({"request_id": "r", "kind": "forget", "profile_ids": ["p"]}, "kind must be one of"),
    ({"request_id": "r", "kind": "erasure"}, "names no profile"),
    ({"request_id": "r", "kind": "erasure", "identifiers": [{"type": "shoe", "value": "x"}]},
     "not an identifier"),
    ({"request_id": "r", "kind": "erasure", "identifiers": [{"type": "email", "value": "no"}]},
     "invalid email"),
    ({"request_id": "r", "kind": "access", "profile_ids": "p1"}, "profile_ids must be a list"),
])
def test_a_request_the_service_cannot_act_on_says_why(payload, reason):
    with pytest.raises(InvalidRequest, match=reason):
        parse_request(payload)


def test_one_identifier_leads_to_the_merged_profiles_and_all_their_identifiers():
    graph = InMemoryGraph()
    web = resolve(graph, [Identifier("anonymous_id", "c1")], message_id="m1", at=T0)
    social = resolve(graph, [HANDLE], message_id="m2", at=T0)
    resolve(graph, [Identifier("anonymous_id", "c1"), HANDLE],
            message_id="m3", at=T0)  # links the two: one is merged into the other
    request = parse_request({"request_id": "r", "kind": "erasure",
                             "identifiers": [{"type": "twitter_handle", "value": "@maija"}]})

    subject = expand_subject(graph, request, merged_into(graph))

    assert subject.profile_ids == {web.profile_id, social.profile_id}
    assert subject.identifiers == {Identifier("anonymous_id", "c1"),
                                   HANDLE}


def test_an_identifier_split_off_a_merged_profile_is_not_part_of_the_subject_any_more():
    cookie = Identifier("anonymous_id", "c1")
    graph = InMemoryGraph()
    resolve(graph, [cookie], message_id="m1", at=T0 + timedelta(minutes=1))
    customer = resolve(graph, [HANDLE], message_id="m2", at=T0)
    resolve(graph, [cookie, HANDLE], message_id="m3", at=T0)  # the cookie's profile merged in
    # a wrong merge, undone: the cookie is another visitor's (the merged profile still lists it)
    split(graph, customer.profile_id, [cookie], reason="not hers", at=T0, actor="agent")
    request = parse_request({"request_id": "r", "kind": "erasure",
                             "identifiers": [{"type": "twitter_handle", "value": "@maija"}]})

    subject = expand_subject(graph, request, merged_into(graph))

    assert subject.identifiers == {HANDLE}


def test_an_unknown_subject_is_just_the_identifiers_the_request_names():
    request = parse_request({"request_id": "r", "kind": "erasure", "profile_ids": ["nobody"],
                             "identifiers": [{"type": "email", "value": "a@example.com"}]})
    subject = expand_subject(InMemoryGraph(), request, lambda ids: [])
    assert subject.profile_ids == frozenset()
    assert subject.identifiers == {Identifier("email", "a@example.com")}


class MergingOnFirstLock(InMemoryGraph):
    """A graph where another customer's event merges into the subject just as the erasure
    reaches for its first lock."""

    def __init__(self):
        super().__init__()
        self.merge_first, self.locked = None, []

    @contextmanager
    def lock(self, profile_ids):
        if self.merge_first is not None:
            merge, self.merge_first = self.merge_first, None
            merge(self)
        self.locked.append(sorted(profile_ids))
        yield


def test_an_erasure_locks_every_profile_a_merge_added_to_the_subject_before_it_erases():
    cookie = Identifier("anonymous_id", "c1")
    graph = MergingOnFirstLock()
    web = resolve(graph, [cookie], message_id="m1", at=T0)
    social = resolve(graph, [HANDLE], message_id="m2", at=T0)
    graph.merge_first = lambda g: resolve(g, [cookie, HANDLE], message_id="m3", at=T0)
    request = parse_request({"request_id": "r", "kind": "erasure",
                             "identifiers": [{"type": "twitter_handle", "value": "@maija"}]})

    with locked_subject(graph, request, merged_into(graph)) as subject:
        assert subject.profile_ids == {web.profile_id, social.profile_id}
        assert subject.identifiers == {cookie, HANDLE}

    assert graph.locked[-1] == sorted(subject.profile_ids)


def test_erased_identifiers_are_unlinked_even_when_a_merge_moves_one_before_its_lock():
    cookie, login = Identifier("anonymous_id", "c1"), Identifier("user_id", "L1")
    graph = MergingOnFirstLock()
    member = resolve(graph, [login], message_id="m1", at=T0)
    resolve(graph, [cookie], message_id="m2", at=T0 + timedelta(minutes=1))
    # merged just as the unlinking reaches for the cookie's (newer) profile: the cookie
    # moves to the member's
    graph.merge_first = lambda g: resolve(g, [login, cookie], message_id="m3", at=T0)

    assert unlink_erased(graph, [cookie, HANDLE], merged_into(graph)) == 1

    assert graph.links([cookie]) == {}
    assert graph.profile(member.profile_id).identifiers == {login}


def test_an_unlinked_erased_identifier_is_left_on_no_list_of_a_profile_merged_away():
    cookie, login = Identifier("anonymous_id", "c1"), Identifier("user_id", "L1")
    graph = InMemoryGraph()
    member = resolve(graph, [login], message_id="m1", at=T0)
    visitor = resolve(graph, [cookie], message_id="m2", at=T0 + timedelta(minutes=1))
    resolve(graph, [login, cookie], message_id="m3", at=T0)  # the visitor's merged in
    assert cookie in graph.listed_on[visitor.profile_id]

    unlink_erased(graph, [cookie], merged_into(graph))

    assert graph.links([cookie]) == {}
    assert [p for p, listed in graph.listed_on.items() if cookie in listed] == []
    assert graph.profile(member.profile_id).identifiers == {login}
