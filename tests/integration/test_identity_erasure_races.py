"""An erasure in the identity graph while events resolve: nothing it should erase is left;
and an erasure handled again acks what its first handling deleted."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta

import pytest

from services.common import topics
from services.common.envelope import new_envelope
from services.common.hetu_protection import HetuProtector
from services.common.store import ensure_indexes
from services.identity.graph import (
    DEFAULT_LIMITS,
    Conflict,
    Identifier,
    Link,
    new_profile_id,
    resolve,
)
from services.identity.graph_store import INDEXES, MongoGraph
from services.identity.privacy_store import GraphEraser, SuppressionList
from services.identity.suggestions import RECORDS, SuggestionStore
from services.identity.worker import make_handlers, make_privacy_handler

AT = datetime(2026, 11, 1, tzinfo=UTC)
DIGEST_KEY = b"erasure-races-test-key"


def erasure_request(request_id: str, *identifiers: Identifier):
    return new_envelope("Erasure Requested", "system", payload={
        "request_id": request_id, "kind": "erasure", "profile_ids": [],
        "identifiers": [{"type": i.type, "value": i.value} for i in identifiers],
        "requested_by": "test"})


@pytest.fixture
def graph(db) -> MongoGraph:
    ensure_indexes(db, INDEXES)
    return MongoGraph(db)


def erasure_handler(graph, db, eraser: GraphEraser | None = None,
                    suppressions: SuppressionList | None = None):
    """The identity worker's handler of privacy requests."""
    return make_privacy_handler(graph, eraser or GraphEraser(db),
                                suppressions or SuppressionList(db, DIGEST_KEY))


def batch_handler(graph, db, settings, suppressions: SuppressionList):
    """The identity worker's handler of a poll of events."""
    return make_handlers(graph, SuggestionStore(db), DEFAULT_LIMITS, suppressions,
                         HetuProtector.from_settings(settings, db, "identity"))[1]


def test_an_erasure_waits_for_a_resolution_holding_the_profile_and_erases_what_it_linked(
        graph, db, unique):
    suppressions = SuppressionList(db, DIGEST_KEY)
    erase = erasure_handler(graph, db, suppressions=suppressions)
    email = Identifier("email", f"waits.{unique}@example.com")
    login = Identifier("user_id", f"W-{unique}")
    profile_id = resolve(graph, [email], message_id=f"reg-{unique}", at=AT).profile_id
    acks = []

    started = threading.Event()

    def erasure():
        started.set()
        acks.extend(erase(erasure_request(f"req-{unique}", email)))

    # a resolution holds the customer's profile while it links their login
    with graph.lock([profile_id]):
        eraser = threading.Thread(target=erasure)
        eraser.start()
        started.wait(10)
        eraser.join(timeout=1.0)
        assert eraser.is_alive(), "the erasure did not wait for the profile's lock"
        graph.add_links([Link(login, profile_id, True, f"login-{unique}", AT)])
    eraser.join(timeout=30)

    assert not eraser.is_alive()
    assert graph.links([email, login]) == {} and graph.profile(profile_id) is None
    suppressions.refresh()
    assert suppressions.any_suppressed([login])
    summary = acks[0].value.payload["summary"]
    assert (summary["profiles"], summary["links"], summary["suppressed"]) == (1, 2, 2)


@pytest.mark.parametrize("handled_again", ["redelivered", "retried by the dpo"])
def test_an_erasure_handled_again_acks_what_its_first_handling_deleted(
        graph, db, unique, handled_again):
    erase = erasure_handler(graph, db)
    email = Identifier("email", f"again.{unique}@example.com")
    resolve(graph, [email, Identifier("user_id", f"A-{unique}")], message_id=f"reg-{unique}",
            at=AT)
    request = erasure_request(f"req-{unique}", email)

    [first] = erase(request)
    [again] = erase(request if handled_again == "redelivered"
                    else erasure_request(f"req-{unique}", email))

    summary = first.value.payload["summary"]
    assert (summary["profiles"], summary["links"], summary["identifiers"]) == (1, 2, 2)
    assert again.value.payload["summary"] == summary


class ErasedWhileThePollResolves(MongoGraph):
    """The worker's graph: another worker finishes an erasure once the poll has read its
    suppression list and its snapshot of the graph."""

    def __init__(self, db, erase_next):
        super().__init__(db)
        self.erase_next = erase_next

    def caused_by_each(self, message_ids):
        if self.erase_next is not None:
            erase, self.erase_next = self.erase_next, None
            erase()
        return super().caused_by_each(message_ids)


def registration(unique: str, name: str, email: Identifier, cookie: str):
    return new_envelope("Identify", "web", message_id=f"{name}-{unique}",
                        identifiers={"email": email.value, "anonymous_id": cookie},
                        payload={"traits": {"first_name": name.capitalize()}})


def resolved_ids(messages) -> set[str]:
    return {m.value.message_id for m in messages if m.topic == topics.EVENTS_RESOLVED}


def test_an_event_resolved_against_a_list_read_before_an_erasure_is_dropped_and_unlinked(
        graph, db, settings, unique):
    email = Identifier("email", f"late.{unique}@example.com")
    other = Identifier("email", f"other.{unique}@example.com")
    resolve(graph, [email], message_id=f"reg-{unique}", at=AT)
    erase = erasure_handler(graph, db)
    worker_graph = ErasedWhileThePollResolves(
        db, lambda: erase(erasure_request(f"req-{unique}", email)))
    handle_batch = batch_handler(worker_graph, db, settings, SuppressionList(db, DIGEST_KEY))

    messages = handle_batch([registration(unique, "late", email, f"c1-{unique}"),
                             registration(unique, "other", other, f"c2-{unique}")])

    assert resolved_ids(messages) == {f"other-{unique}"}
    assert graph.links([email]) == {}
    assert graph.links([other])  # the rest of the poll went on as usual
    remembered = db[RECORDS].find({"email": {"$in": [email.value, other.value]}})
    assert [doc["email"] for doc in remembered] == [other.value]


def test_an_erased_identifier_an_attempt_cut_short_linked_is_unlinked_when_its_event_returns(
        graph, db, settings, unique):
    email = Identifier("email", f"again.{unique}@example.com")
    suppressions = SuppressionList(db, DIGEST_KEY)
    resolve(graph, [email], message_id=f"reg-{unique}", at=AT)
    erasure_handler(graph, db, suppressions=suppressions)(
        erasure_request(f"req-{unique}", email))
    event = registration(unique, "again", email, f"c-{unique}")
    # the first attempt read the list before the erasure, linked, and its worker died
    resolve(graph, [email], message_id=event.message_id, at=AT)
    handle_batch = batch_handler(graph, db, settings, suppressions)

    assert handle_batch([event]) == []
    assert graph.links([email]) == {}


class LinkedJustBeforeSuppressing(SuppressionList):
    """The erasure's list: another worker links an identifier of the request just before
    the erasure puts it on the list (after it read the subject)."""

    def __init__(self, db, link_first):
        super().__init__(db, DIGEST_KEY)
        self.link_first = link_first

    def add(self, identifiers, request_id, at):
        if self.link_first is not None:
            link, self.link_first = self.link_first, None
            link()
        return super().add(identifiers, request_id, at)


def test_a_profile_linked_to_a_requested_identifier_while_the_erasure_runs_is_erased_too(
        graph, db, unique):
    handle = Identifier("twitter_handle", f"late_{unique}"[:15])
    first_post = f"post-{unique}"
    erase = erasure_handler(graph, db, suppressions=LinkedJustBeforeSuppressing(
        db, lambda: resolve(graph, [handle], message_id=first_post, at=AT)))

    ack = erase(erasure_request(f"req-{unique}", handle))[0].value.payload

    assert graph.links([handle]) == {}
    assert graph.profile(new_profile_id(first_post)) is None
    assert (ack["summary"]["profiles"], ack["summary"]["links"],
            ack["summary"]["identifiers"]) == (1, 1, 1)


def test_a_person_record_written_after_the_erasure_deleted_its_profile_is_deleted_again(
        graph, db, unique):
    email = Identifier("email", f"record.{unique}@example.com")
    profile_id = resolve(graph, [email], message_id=f"reg-{unique}", at=AT).profile_id
    kept = resolve(graph, [Identifier("email", f"kept.{unique}@example.com")],
                   message_id=f"kept-{unique}", at=AT).profile_id
    erasure_handler(graph, db)(
        erasure_request(f"req-{unique}", email))

    # a known customer's event needs no lock: it may remember what they gave afterwards
    SuggestionStore(db).remember([(profile_id, {"given_name": "Late"}, AT),
                                  (kept, {"given_name": "Kept"}, AT)])

    assert db[RECORDS].find_one({"_id": profile_id}) is None
    assert db[RECORDS].find_one({"_id": kept})["given_name"] == "Kept"


def test_a_returning_erased_event_leaves_no_link_conflict_or_announced_identifier_behind(
        graph, db, settings, unique):
    suppressions = SuppressionList(db, DIGEST_KEY)
    login, email = Identifier("user_id", f"L-{unique}"), Identifier("email", f"c.{unique}@x.fi")
    erased_login = Identifier("user_id", f"X-{unique}")
    erased_cookie = Identifier("anonymous_id", f"x-{unique}")
    erasure_handler(graph, db, suppressions=suppressions)(
        erasure_request(f"req-{unique}", erased_login, erased_cookie))
    event = new_envelope("Identify", "web", message_id=f"late-{unique}", identifiers={
        "user_id": erased_login.value, "email": email.value, "anonymous_id": erased_cookie.value})
    # attempts that read the list before the erasure: the cookie started a profile, then the
    # event merged it into the (older) customer's through the cookie, the login held back
    cookie_profile = resolve(graph, [erased_cookie], message_id=f"visit-{unique}", at=AT)
    customer = resolve(graph, [login, email], message_id=f"reg-{unique}",
                       at=AT - timedelta(days=1))
    late = resolve(graph, [erased_login, email, erased_cookie], message_id=event.message_id,
                   at=AT)
    assert [c.identifier for c in late.conflicts] == [erased_login] and late.merges
    graph.record_conflicts(event.message_id, late.conflicts, AT)
    conflict_id = f"{event.message_id}:{erased_login.key}"
    assert db["identity_conflicts"].find_one({"_id": conflict_id}) is not None
    handle_batch = batch_handler(graph, db, settings, suppressions)

    messages = handle_batch([event])

    assert resolved_ids(messages) == set()
    merges = [m.value.payload for m in messages if m.topic == topics.IDENTITY_MERGES]
    assert [(m["survivor"], m["merged"], m["identifier"]) for m in merges] == [
        (customer.profile_id, cookie_profile.profile_id, None)]
    assert graph.links([erased_cookie, erased_login]) == {}
    assert graph.profile(customer.profile_id).identifiers == {login, email}
    assert graph.profile(cookie_profile.profile_id).identifiers == set()
    assert [entry["identifier"] for entry in graph.caused_by(event.message_id)] == [None]
    assert db["identity_conflicts"].find_one({"_id": conflict_id}) is None


class DiesBeforeTheTraces(GraphEraser):
    def __init__(self, db):
        super().__init__(db)
        self.die = True

    def erase_traces(self, profile_ids, identifiers):
        if self.die:
            self.die = False
            raise ConnectionError("the worker died here")
        return super().erase_traces(profile_ids, identifiers)


def test_an_erasure_cut_short_after_the_profiles_went_erases_their_traces_when_it_returns(
        graph, db, unique):
    email = Identifier("email", f"traces.{unique}@example.com")
    profile_id = resolve(graph, [email], message_id=f"reg-{unique}", at=AT).profile_id
    SuggestionStore(db).remember([(profile_id, {"given_name": "Traces"}, AT)])
    erase = erasure_handler(graph, db, DiesBeforeTheTraces(db))
    request = erasure_request(f"req-{unique}", email)
    try:
        erase(request)
    except ConnectionError:
        pass  # not acknowledged: the request is delivered again
    assert graph.profile(profile_id) is None and db[RECORDS].find_one({"_id": profile_id})

    ack = erase(request)[0].value.payload

    assert db[RECORDS].find_one({"_id": profile_id}) is None
    assert ack["summary"]["person_records"] == 1


def test_an_erased_identifier_held_back_on_another_customers_profile_leaves_no_conflict(
        graph, db, unique):
    login = Identifier("user_id", f"Q-{unique}")
    erased_login = Identifier("user_id", f"Y-{unique}")
    other = resolve(graph, [login], message_id=f"reg-{unique}", at=AT).profile_id
    graph.record_conflicts(f"shared-{unique}", [Conflict(erased_login, other, None, "limit")], AT)
    erasure_handler(graph, db)(
        erasure_request(f"req-{unique}", erased_login))
    assert db["identity_conflicts"].find_one(
        {"_id": f"shared-{unique}:{erased_login.key}"}) is None
    assert graph.profile(other).identifiers == {login}


def test_a_returning_erased_event_unlinks_a_link_its_cut_short_attempt_never_listed(
        graph, db, settings, unique):
    suppressions = SuppressionList(db, DIGEST_KEY)
    email = Identifier("email", f"unlisted.{unique}@example.com")
    cookie = Identifier("anonymous_id", f"u-{unique}")
    event = registration(unique, "unlisted", email, cookie.value)
    profile_id = resolve(graph, [email], message_id=f"reg-{unique}", at=AT).profile_id
    # the event's first attempt stored the cookie's link and died before listing it
    graph._insert_links([Link(cookie, profile_id, True, event.message_id, AT)])
    erasure_handler(graph, db, suppressions=suppressions)(
        erasure_request(f"req-{unique}", email))
    assert graph.links([cookie])  # not on the profile's list, so not part of the subject
    handle_batch = batch_handler(graph, db, settings, suppressions)

    assert handle_batch([event]) == []
    assert graph.links([cookie, email]) == {}
