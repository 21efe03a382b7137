"""The consent ledger's part of an erasure in the real store: every change naming the subject
goes (those linking or merging it without entries of its own, and those committed but not yet
finished, also a bare identifier's first, before it has a state), and an erasure cut short
finds what is left when delivered again."""

from __future__ import annotations

import base64
from datetime import UTC, datetime, timedelta

import pytest

from services.consent import ledger
from services.consent.catalogue import load_catalogue
from services.consent.consent_store import (
    CHANGES,
    LEDGER,
    OUTBOX,
    STATE,
    Change,
    ConsentStore,
    UnannouncedChanges,
)
from services.consent.consents_worker import LedgerHolding
from services.consent.decisions import DecisionRequest, decision_change
from services.consent.privacy import Identifier
from services.consent.receipts import ReceiptSigner

SIGNER = ReceiptSigner.from_setting(base64.b64encode(bytes(range(32))).decode())
AT = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)


@pytest.fixture
def store(db):
    return ConsentStore(db)


def decision(profile_id: str, cause: str) -> Change:
    return decision_of(ledger.profile_subject(profile_id), cause, AT)


def decision_of(subject: ledger.Subject, cause: str, at: datetime) -> Change:
    request = DecisionRequest(subject=subject, channel="web", source="test", collected_at=at,
                              purpose="marketing_email", state="granted", proof={})
    return decision_change(load_catalogue(), request, cause_id=cause,
                           subject_state=ledger.SubjectState(subject.key), signer=SIGNER,
                           now=at)


def left_of(db, profile_id: str, *keys: str) -> dict[str, int]:
    """What the consent collections still hold naming these subjects."""
    found = {}
    for collection in (LEDGER, STATE, CHANGES, OUTBOX):
        count = sum(1 for doc in db[collection].find() if any(k in repr(doc)
                                                               for k in (profile_id, *keys)))
        if count:
            found[collection] = count
    return found


def test_a_link_without_entries_and_an_unfinished_change_go_with_the_subject(store, db, unique):
    profile_id, phone = f"p-{unique}", Identifier("phone", f"+35840{int(unique, 16) % 10**7:07d}")
    phone_key = f"{ledger.IDENTIFIER_PREFIX}phone:{phone.value}"
    store.finish(store.commit(decision(profile_id, f"d-{unique}"), announce_later=False))
    # the number found to be the customer's, with no decision of its own to carry over
    store.finish(store.commit(Change(f"l-{unique}", [], link={
        "identifier": phone_key, "profile": profile_id}), announce_later=False))
    # a decision the API stored but nobody finished yet (the relay would finish it)
    store.commit(decision(profile_id, f"u-{unique}"), announce_later=True)
    assert left_of(db, profile_id, phone_key)[CHANGES] == 3

    LedgerHolding(store).erase([profile_id], [phone])

    assert left_of(db, profile_id, phone_key) == {}


def test_an_erasure_cut_short_after_deleting_the_entries_finishes_when_delivered_again(
        store, db, unique, monkeypatch):
    profile_id = f"p-{unique}"
    store.finish(store.commit(decision(profile_id, f"d-{unique}"), announce_later=False))
    delete_one = store.ledger.delete_one

    def deleted_then_the_worker_dies(query):
        delete_one(query)
        raise SystemExit("killed")

    monkeypatch.setattr(store.ledger, "delete_one", deleted_then_the_worker_dies)
    with pytest.raises(SystemExit):
        LedgerHolding(store).erase([profile_id], [])
    monkeypatch.undo()

    LedgerHolding(store).erase([profile_id], [])  # delivered again

    assert left_of(db, profile_id) == {}


@pytest.mark.parametrize("finish_cut_short", [False, True])
def test_a_bare_identifiers_first_decision_not_finished_goes_with_its_erasure(
        store, db, unique, monkeypatch, finish_cut_short):
    number = ledger.identifier_subject("phone", f"+35840{int(unique, 16) % 10**7:07d}")
    # committed by the API a while ago (its relay's grace is over), with no state yet
    change = store.commit(decision_of(number, f"u-{unique}", datetime.now(UTC)
                                      - timedelta(minutes=1)), announce_later=True)
    if finish_cut_short:  # its entries in the ledger, the worker dying before the state
        def the_worker_dies(*_):
            raise SystemExit("killed")

        monkeypatch.setattr(store, "update", the_worker_dies)
        with pytest.raises(SystemExit):
            store.finish(change)
        monkeypatch.undo()
        assert left_of(db, number.key).get(LEDGER) == 1
    assert store.state(number.key) is None

    counts = LedgerHolding(store).erase([], [Identifier("phone", number.identifier_value)])

    assert counts["consent_entries_deleted"] == int(finish_cut_short)
    assert left_of(db, number.key) == {}
    assert db[OUTBOX].find_one({"_id": change.id}) is None
    relay = UnannouncedChanges(store)  # nothing left for it to finish and bring back
    assert [m for m in relay.pending() if m.key == number.key] == []
    assert store.state(number.key) is None
