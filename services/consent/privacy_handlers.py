"""The consent service's privacy consumers.

``make_ack_handler`` (cdp.privacy.acks): records each service's acknowledgement on its
request, idempotently; access data is stored sealed before the ack counts, and a completed
erasure forgets the request's plain identifiers and gets its signed erasure receipt
(privacy_receipts.py). Acks of requests this deployment does not
know (another deployment sharing the cluster) are skipped, not dead-lettered.

``make_request_handler`` (cdp.privacy.requests): the consent service's own part, answered
with its ack like every other service's:

* erasure — every data key of the subject (``profile:<id>`` and ``identifier:<digest>``) is
  destroyed, which crypto-shreds the personal fields sealed under them: the consent
  ledger's proof (IP address, user agent, identifier values), kept append-only, becomes
  unreadable without a single ledger entry being rewritten. The holders of consent records
  erase what they keep outside sealed fields. If the subject had objected to direct
  marketing, that objection must outlive the erasure — else erasing a person would make
  them contactable again — so each of their identifiers goes on the do-not-contact list as a
  keyed digest only (``privacy_do_not_contact``): a later sign-up with the same phone
  number is recognised as not to be called, without the list holding the number.
  The preference centre's sign-in challenges and sessions of the subject are deleted too
  (preferences/store.py ``erase_subject``).
* access — the consent records and whether the subject is on the do-not-contact list.
* restriction, restriction lifted, rectification — the consent service keeps no profile
  traits; consent decisions change through the consent API, so the ack says so.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import orjson
from pymongo.database import Database

from services.common import topics
from services.common.bus import ConsumerLoop, InvalidMessage, Outgoing, Producer
from services.common.config import Settings
from services.common.documents import unstorable
from services.common.envelope import Envelope, derived_message_id, new_envelope
from services.common.identifiers import IDENTIFIER_TYPES, InvalidIdentifier, normalise
from services.common.shredding import (
    SubjectKeys,
    identifier_digest,
    identifier_key_id,
    profile_key_id,
)
from services.common.store import ProcessedLedger, ensure_indexes
from services.consent.preferences import store as preference_store
from services.consent.privacy import (
    ACK_TYPE,
    COMPLETED,
    REQUEST_TYPES,
    Identifier,
    InvalidAck,
    PrivacyRequest,
    parse_ack,
)
from services.consent.privacy_flow import UnsentRequests, build_flow, digest_key, subject_keys
from services.consent.privacy_receipts import erasure_receipt_body
from services.consent.privacy_store import INDEXES, PrivacyRequests
from services.consent.receipts import ReceiptSigner

SERVICE = "consent"
KIND_BY_TYPE = {type_: kind for kind, type_ in REQUEST_TYPES.items()}
DO_NOT_CONTACT = "privacy_do_not_contact"
ACKS_GROUP = "consent-privacy-acks"
REQUESTS_GROUP = "consent-privacy-requests"

log = logging.getLogger(__name__)


def make_ack_handler(repository: PrivacyRequests, signer: ReceiptSigner):
    def handle(envelope: Envelope) -> list[Outgoing]:
        if envelope.type != ACK_TYPE:
            return []
        try:
            ack = parse_ack(envelope.payload, message_id=envelope.message_id,
                            at=envelope.occurred_at)
        except InvalidAck as exc:
            raise InvalidMessage(f"privacy ack: {exc}") from None
        reason = unstorable(ack.summary)
        if reason:
            raise InvalidMessage(f"privacy ack summary cannot be stored: {reason}")
        request = repository.get(ack.request_id)
        if request is None:
            log.info("ack for a request this deployment does not know",
                     extra={"request_id": ack.request_id, "service": ack.service})
            return []
        now = datetime.now(UTC)
        # an access request the subject's erasure made forget collects nothing more: its
        # key is gone, and sealing would make a new one
        if (ack.kind == "access" and ack.status == "done" and ack.data is not None
                and not request.personal_data_forgotten):
            try:
                repository.store_access_data(ack, now)
            except (orjson.JSONEncodeError, TypeError):
                raise InvalidMessage("privacy ack data is not plain JSON") from None
        try:
            request = repository.update(ack.request_id, lambda r: r.record_ack(ack, now))
        except InvalidAck as exc:
            raise InvalidMessage(f"privacy ack: {exc}") from None
        if request.kind == "erasure" and request.state == COMPLETED:
            # the person's other requests too: an access export would otherwise stay
            # downloadable, and their identifiers and corrected values readable
            for request_id in [*repository.others_about(request), request.request_id]:
                repository.update(request_id, lambda r: r.forget_personal_data(now))
                repository.forget(request_id)
            issue_receipt(repository, signer, request.request_id, now)
        return []

    return handle


def issue_receipt(repository: PrivacyRequests, signer: ReceiptSigner, request_id: str,
                  now: datetime) -> PrivacyRequest | None:
    """Sign and keep the erasure receipt of a completed erasure (once; a repeat keeps the
    first). Raises NoReceipt when the request is not a completed erasure."""
    def sign(request: PrivacyRequest) -> bool:
        if request.receipt is not None:
            return False
        return request.record_receipt(
            signer.sign_document(erasure_receipt_body(request, now)), now)

    return repository.update(request_id, sign)


class ConsentHolding:
    """Consent data kept outside sealed fields (the current-state projection, say): the
    consent ledger's module implements this and is passed to ``make_request_handler``."""

    def objected(self, profile_ids: list[str], identifiers: list[Identifier]) -> bool:
        """True when the subject objected to direct marketing."""
        raise NotImplementedError

    def erase(self, profile_ids: list[str], identifiers: list[Identifier]) -> dict[str, int]:
        """Delete or anonymise the subject's records (idempotent); counts by kind."""
        raise NotImplementedError

    def collect(self, profile_ids: list[str], identifiers: list[Identifier]) -> dict[str, Any]:
        """The subject's records, JSON-serialisable."""
        raise NotImplementedError


class DoNotContactList:
    """Keyed digests of identifiers whose owner objected to direct marketing and was then
    erased: a check of a bare identifier asks ``listed_since``, and denies direct marketing
    from then on unless a later decision allows it."""

    def __init__(self, db: Database, digest_key: bytes):
        self.collection = db[DO_NOT_CONTACT]
        self.digest_key = digest_key

    def add(self, identifiers: Sequence[Identifier], request_id: str, at: datetime) -> int:
        added = 0
        for identifier in identifiers:
            digest = identifier_digest(self.digest_key, identifier.type, identifier.value)
            result = self.collection.update_one(
                {"_id": digest}, {"$setOnInsert": {"type": identifier.type, "reason": "objection",
                                                   "request_id": request_id, "at": at}},
                upsert=True)
            added += result.upserted_id is not None
        return added

    def listed_since(self, identifier: Identifier) -> datetime | None:
        """When the identifier was put on the list (None when it is not on it)."""
        doc = self.collection.find_one(
            {"_id": identifier_digest(self.digest_key, identifier.type, identifier.value)},
            {"at": 1})
        return doc and doc["at"]

    def contains(self, identifiers: Sequence[Identifier]) -> bool:
        digests = [identifier_digest(self.digest_key, i.type, i.value) for i in identifiers]
        return bool(digests) and self.collection.find_one(
            {"_id": {"$in": digests}}, {"_id": 1}) is not None


def make_request_handler(keys: SubjectKeys, do_not_contact: DoNotContactList,
                         holdings: Sequence[ConsentHolding], digest_key: bytes, db: Database):
    def handle(envelope: Envelope) -> list[Outgoing]:
        kind = KIND_BY_TYPE.get(envelope.type)
        if kind is None:
            return []
        request_id, profile_ids, identifiers = _subject(envelope.payload, kind)
        now = datetime.now(UTC)
        data = None
        if kind == "erasure":
            summary: dict[str, Any] = {"do_not_contact_kept": 0}
            if any(h.objected(profile_ids, identifiers) for h in holdings):
                summary["do_not_contact_kept"] = do_not_contact.add(identifiers, request_id, now)
            for holding in holdings:
                summary |= holding.erase(profile_ids, identifiers)
            summary |= preference_store.erase_subject(
                db, digest_key, request_id=request_id, profile_ids=profile_ids,
                identifiers=identifiers)
            key_ids = [profile_key_id(p) for p in profile_ids] + [
                identifier_key_id(digest_key, i.type, i.value) for i in identifiers]
            summary["data_keys_destroyed"] = keys.destroy(key_ids)
        elif kind == "access":
            data = {"do_not_contact": do_not_contact.contains(identifiers)}
            for holding in holdings:
                data |= holding.collect(profile_ids, identifiers)
            summary = {"records": len(data)}
        else:
            summary = {"action": "none", "note": "the consent service keeps no profile traits; "
                       "consent decisions change through /v1/consents"}
        payload: dict[str, Any] = {"request_id": request_id, "kind": kind, "service": SERVICE,
                                   "status": "done", "summary": summary}
        if data is not None:
            payload["data"] = data
        ack = new_envelope(ACK_TYPE, "system", payload=payload, message_id=derived_message_id(
            envelope.message_id, f"privacy-ack-{SERVICE}"))
        return [Outgoing(topics.PRIVACY_ACKS, request_id, ack)]

    return handle


def _subject(payload: dict[str, Any], kind: str) -> tuple[str, list[str], list[Identifier]]:
    request_id = payload.get("request_id")
    if not isinstance(request_id, str) or not request_id:
        raise InvalidMessage("privacy request: request_id must be a non-empty string")
    if payload.get("kind") != kind:
        raise InvalidMessage("privacy request: kind does not match the event type")
    profile_ids = payload.get("profile_ids") or []
    if not isinstance(profile_ids, list) or not all(isinstance(p, str) for p in profile_ids):
        raise InvalidMessage("privacy request: profile_ids must be a list of strings")
    raw = payload.get("identifiers") or []
    if not isinstance(raw, list):
        raise InvalidMessage("privacy request: identifiers must be a list of {type, value}")
    identifiers = []
    for item in raw:
        if not isinstance(item, dict) or item.get("type") not in IDENTIFIER_TYPES:
            raise InvalidMessage("privacy request: an identifier has an unknown type")
        try:
            identifiers.append(Identifier(item["type"], normalise(item["type"], item["value"])))
        except (InvalidIdentifier, KeyError, TypeError):
            raise InvalidMessage(f"privacy request: invalid {item['type']}") from None
    return request_id, profile_ids, identifiers


def privacy_consumers(settings: Settings, producer: Producer, db: Database,
                      holdings: Sequence[ConsentHolding] = ()) -> list[ConsumerLoop]:
    """The consent worker's privacy loops: acks (with the relay of unsent requests) and the
    consent service's own part of each request."""
    ensure_indexes(db, INDEXES)
    flow = build_flow(settings, db)
    key = digest_key(settings)
    loops = []
    for group, topic, handler, relay in (
        (ACKS_GROUP, topics.PRIVACY_ACKS,
         make_ack_handler(flow.repository,
                          ReceiptSigner.from_setting(settings.consent_receipt_key)),
         UnsentRequests(flow)),
        (REQUESTS_GROUP, topics.PRIVACY_REQUESTS,
         make_request_handler(subject_keys(settings, db), DoNotContactList(db, key), holdings,
                              key, db), None),
    ):
        ledger = ProcessedLedger(db, group)
        ledger.prepare()
        loops.append(ConsumerLoop(settings=settings, service=SERVICE, group=group,
                                  topics=[topic], handler=handler, producer=producer,
                                  ledger=ledger, relay=relay))
    return loops
