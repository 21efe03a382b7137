"""Segment's alias in the identity worker against the real store: a previousId the graph holds
as a user_id renames that account (its profile takes the new userId, or merges with the new
one's), one that is an anonymous id is linked as before, at no cost of its own."""

from __future__ import annotations

from datetime import UTC, datetime

import pymongo
import pytest

from services.common import topics
from services.common.hetu_protection import HetuProtector
from services.common.store import database, ensure_indexes
from services.identity.channels import SegmentMessageSchema, from_segment
from services.identity.graph import DEFAULT_LIMITS, Identifier, release
from services.identity.graph_store import INDEXES, PROFILES, MongoGraph
from services.identity.privacy_store import SuppressionList
from services.identity.suggestions import SuggestionStore
from services.identity.worker import make_handlers
from tests.support.store_commands import CommandCounter

DIGEST_KEY = b"identity-aliases-test-key"


def segment(call: str, **message):
    """A Segment message as the identity API turns it into an envelope."""
    return from_segment(SegmentMessageSchema().load({"type": call, **message})).envelope


def handlers(db, settings, graph: MongoGraph | None = None):
    """The identity worker's (single event, whole poll) handlers."""
    return make_handlers(graph or MongoGraph(db), SuggestionStore(db), DEFAULT_LIMITS,
                         SuppressionList(db, DIGEST_KEY),
                         HetuProtector.from_settings(settings, db, "identity"))


@pytest.fixture
def graph(db) -> MongoGraph:
    ensure_indexes(db, INDEXES)
    return MongoGraph(db)


def resolved(messages, message_id: str) -> dict:
    return next(m.value for m in messages
                if m.topic == topics.EVENTS_RESOLVED and m.value.message_id == message_id)


def merges(messages) -> list[dict]:
    return [m.value.payload for m in messages if m.topic == topics.IDENTITY_MERGES]


def bystander(unique: str, n: int):
    """An unrelated visitor's page view, so a poll holds more than the event of interest."""
    return segment("page", anonymousId=f"by-{n}-{unique}", messageId=f"by-{n}-{unique}")


def test_an_alias_in_a_poll_gives_the_renamed_accounts_profile_its_new_user_id(
        graph, db, settings, unique):
    handle, handle_batch = handlers(db, settings)
    old, new = Identifier("user_id", f"old-{unique}"), Identifier("user_id", f"new-{unique}")
    handle(segment("identify", userId=old.value, messageId=f"reg-{unique}"))
    profile_id = graph.links([old])[old].profile_id

    messages = handle_batch([segment("alias", userId=new.value, previousId=old.value,
                                     messageId=f"rename-{unique}"), bystander(unique, 1)])

    assert resolved(messages, f"rename-{unique}").identifiers == {"user_id": new.value}
    assert {link.profile_id for link in graph.links([old, new]).values()} == {profile_id}
    assert graph.links([Identifier("anonymous_id", old.value)]) == {}
    assert db[PROFILES].find_one({"_id": profile_id})["renamed"] == [old.key]


def test_a_renamed_account_merges_as_one_account_ever_after(graph, db, settings, unique):
    handle, handle_batch = handlers(db, settings)
    old, new = f"old-{unique}", f"new-{unique}"
    email = f"news.{unique}@example.com"
    handle(segment("page", anonymousId=f"device-{unique}", messageId=f"visit-{unique}"))
    handle(segment("identify", userId=old, messageId=f"reg-old-{unique}"))
    handle(segment("identify", userId=new, messageId=f"reg-new-{unique}"))
    handle(segment("identify", anonymousId=f"news-{unique}", traits={"email": email},
                   messageId=f"subscribe-{unique}"))
    visitor, old_id, new_id, subscriber = (graph.links([key])[key].profile_id for key in (
        Identifier("anonymous_id", f"device-{unique}"), Identifier("user_id", old),
        Identifier("user_id", new), Identifier("email", email)))

    renamed = handle(segment("alias", userId=new, previousId=old,
                             messageId=f"rename-{unique}"))  # handled alone
    # the account logs in on the device, the older profile, which takes it over: two
    # user_ids, yet it counts as one account, and still does when it gives its email
    login = handle_batch([segment("identify", userId=new, anonymousId=f"device-{unique}",
                                  messageId=f"login-{unique}"), bystander(unique, 2)])
    claim = handle(segment("identify", userId=new, traits={"email": email},
                           messageId=f"claim-{unique}"))

    assert [(m["survivor"], m["merged"]) for m in merges(renamed)] == [(old_id, new_id)]
    assert [(m["survivor"], m["merged"]) for m in merges(login)] == [(visitor, old_id)]
    assert [(m["survivor"], m["merged"]) for m in merges(claim)] == [(visitor, subscriber)]
    assert db[PROFILES].find_one({"_id": visitor})["renamed"] == [f"user_id:{old}"]


def test_an_earlier_user_id_released_from_the_renamed_account_is_no_longer_listed_as_one(
        graph, db, settings, unique):
    handle, _ = handlers(db, settings)
    old, new = Identifier("user_id", f"old-{unique}"), Identifier("user_id", f"new-{unique}")
    handle(segment("identify", userId=old.value, messageId=f"reg-{unique}"))
    handle(segment("alias", userId=new.value, previousId=old.value,
                   messageId=f"rename-{unique}"))
    profile_id = graph.links([old])[old].profile_id
    assert graph.profile(profile_id).renamed == {old}

    release(graph, old, reason="the old account's id given to someone else",
            at=datetime.now(UTC), actor="test")

    assert graph.profile(profile_id).identifiers == {new}
    assert graph.profile(profile_id).renamed == frozenset()


def test_an_alias_from_an_erased_user_id_is_dropped_as_that_users_events_are(
        graph, db, settings, unique):
    handle, _ = handlers(db, settings)
    old = Identifier("user_id", f"gone-{unique}")
    SuppressionList(db, DIGEST_KEY).add([old], f"req-{unique}", datetime.now(UTC))

    messages = handle(segment("alias", userId=f"new-{unique}", previousId=old.value,
                              messageId=f"rename-{unique}"))

    assert [m for m in messages if m.topic == topics.EVENTS_RESOLVED] == []
    assert graph.links([Identifier("anonymous_id", old.value),
                        Identifier("user_id", f"new-{unique}")]) == {}


def test_an_alias_from_an_anonymous_id_costs_a_poll_what_an_identify_with_both_ids_does(
        graph, settings, unique):
    counter = CommandCounter()
    client = pymongo.MongoClient(settings.mongo_uri, tz_aware=True, event_listeners=[counter])
    counted = database(client, settings)
    handle, handle_batch = handlers(counted, settings)
    commands = {}
    try:
        for n, call in enumerate(("identify", "alias")):
            cookie, user = f"c{n}-{unique}", f"u{n}-{unique}"
            handle(segment("page", anonymousId=cookie, messageId=f"visit{n}-{unique}"))
            signup = {"userId": user, "messageId": f"signup{n}-{unique}",
                      **({"previousId": cookie} if call == "alias" else {"anonymousId": cookie})}
            before = counter.commands
            handle_batch([segment(call, **signup), bystander(unique, n)])
            commands[call] = counter.commands - before
            cookie_key, user_key = Identifier("anonymous_id", cookie), Identifier("user_id", user)
            assert len({link.profile_id for link in graph.links([cookie_key, user_key]).values()
                        }) == 1
            assert graph.links([Identifier("user_id", cookie)]) == {}
    finally:
        client.close()

    assert commands["alias"] == commands["identify"]
