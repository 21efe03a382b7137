"""A bare identifier's consent subject meeting its profile, in the real store: a link the API
makes waits in the outbox until announced, so the relay announces it if the API could not; an
identifier on the do-not-contact list denies direct marketing to the profile it turns up on,
once."""

from __future__ import annotations

import base64
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace

import pytest

from services.common.envelope import new_envelope
from services.consent import ledger
from services.consent.catalogue import load_catalogue
from services.consent.consent_store import OUTBOX, ConsentStore, UnannouncedChanges
from services.consent.consents_worker import make_handlers
from services.consent.decisions import DecisionRequest, decision_change
from services.consent.linking import link_identifier
from services.consent.privacy import Identifier
from services.consent.privacy_handlers import DoNotContactList
from services.consent.receipts import ReceiptSigner

SIGNER = ReceiptSigner.from_setting(base64.b64encode(bytes(range(32))).decode())


def test_a_link_the_api_could_not_announce_is_announced_by_the_relay(db, unique):
    store = ConsentStore(db)
    number = ledger.identifier_subject("phone", f"+35840{int(unique, 16) % 10**7:07d}")
    a_minute_ago = datetime.now(UTC) - timedelta(minutes=1)
    objection = decision_change(
        load_catalogue(), DecisionRequest(subject=number, channel="phone", source="test",
                                          collected_at=a_minute_ago, purpose=None, state=None),
        cause_id=f"o-{unique}", subject_state=None, signer=SIGNER, now=a_minute_ago,
        objection=True)
    store.finish(store.commit(objection, announce_later=False))

    # the API links the number to its customer's profile; then Kafka is away
    link, _ = link_identifier(store, SIGNER, number.key, f"p-{unique}", at=a_minute_ago,
                              by=f"o-{unique}", announce_later=True)
    assert db[OUTBOX].find_one({"_id": link.id}) is not None

    relay = UnannouncedChanges(store)
    announced = [m for m in relay.pending() if m.key == f"p-{unique}"]
    relay.sent(announced)

    assert {m.value.payload["purpose"] for m in announced} >= {"marketing_email",
                                                                 "marketing_phone"}
    assert {m.value.payload["reason"] for m in announced} == {"objection"}
    assert db[OUTBOX].find_one({"_id": link.id}) is None


def grant_now(subject: ledger.Subject, cause: str, state=None):
    """A grant of email marketing collected now: a decision made after the listing."""
    return decision_change(
        load_catalogue(), DecisionRequest(subject=subject, channel="web", source="test",
                                          collected_at=datetime.now(UTC),
                                          purpose="marketing_email", state="granted"),
        cause_id=cause, subject_state=state, signer=SIGNER, now=datetime.now(UTC))


@pytest.fixture
def returning(db, settings, unique):
    """A number whose owner objected and was erased a month ago (their profile
    ``erased-<unique>``): the store, the consent worker's handlers, and events carrying the
    number resolved to a given profile."""
    store = ConsentStore(db)
    do_not_contact = DoNotContactList(db, settings.privacy_digest_key.encode())
    number = f"+35841{int(unique, 16) % 10**7:07d}"
    do_not_contact.add([Identifier("phone", number)], f"req-{unique}",
                       datetime.now(UTC) - timedelta(days=30), [f"erased-{unique}"])

    def event(profile_id):
        return new_envelope("Identify", "web", identifiers={"phone": number}).resolved_to(
            profile_id)

    return SimpleNamespace(store=store, number=ledger.identifier_subject("phone", number),
                           handlers=make_handlers(store, SIGNER, do_not_contact,
                                                  load_catalogue()), event=event)


def test_a_returning_objectors_event_delivered_again_records_once_and_a_later_grant_stands(
        returning, unique):
    store, event, (handle, handle_batch) = returning.store, returning.event, returning.handlers
    profile = f"p-{unique}"
    # an event of the erased person still on its way: not someone returning
    assert handle(event(f"erased-{unique}")) == [] and store.state(f"erased-{unique}") is None

    signed_up = event(profile)
    first = handle_batch([signed_up, event(profile)])
    again = handle(signed_up)  # delivered again after a crash before the offsets

    assert {m.value.payload["purpose"] for m in first} == set(load_catalogue().direct_marketing)
    assert {(m.key, m.value.payload["reason"], m.value.payload["allowed"]) for m in first} == {
        (profile, "objection", False)}
    assert [m.value.message_id for m in again] == [m.value.message_id for m in first]
    assert len(store.state(profile).applied) == len(first)

    # the person allows email marketing again: their decision, later than the listing, wins
    grant = grant_now(ledger.profile_subject(profile), f"g-{unique}", store.state(profile))
    store.finish(store.commit(grant, announce_later=False))
    assert handle(event(profile)) == []
    state = store.state(profile)
    assert ledger.check(load_catalogue(), state, "marketing_email").allowed
    assert ledger.check(load_catalogue(), state, "marketing_phone").reason == "objection"


def test_a_grant_on_the_listed_number_since_its_listing_reaches_the_returning_profile(
        returning, unique):
    store, (handle, _) = returning.store, returning.handlers
    store.finish(store.commit(grant_now(returning.number, f"g-{unique}"),
                              announce_later=False))
    profile = f"p-{unique}"

    handle(returning.event(profile))

    state = store.state(profile)
    assert ledger.check(load_catalogue(), state, "marketing_email").allowed
    assert ledger.check(load_catalogue(), state, "marketing_sms").reason == "objection"
