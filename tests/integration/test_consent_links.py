"""A bare identifier's consent subject meeting its profile, in the real store: a link the API
makes waits in the outbox until announced, so the relay announces it if the API could not."""

from __future__ import annotations

import base64
from datetime import UTC, datetime, timedelta

from services.consent import ledger
from services.consent.catalogue import load_catalogue
from services.consent.consent_store import OUTBOX, ConsentStore, UnannouncedChanges
from services.consent.decisions import DecisionRequest, decision_change
from services.consent.linking import link_identifier
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
