"""Recording a consent decision or objection: the one code path behind POST /v1/consents,
POST /v1/objections and the preference centre's switches and objection button, so every
decision gets the same ledger entry, signed receipt, sealed proof and Consent Changed
message, whoever records it. Runs inside a request of the consent service's Flask app (it
reads the catalogue, keys and store installed by ``consents_api.install_consents`` and the
request's principal as the actor)."""

from __future__ import annotations

import logging
import uuid
from dataclasses import replace
from datetime import UTC, datetime

import flask

from services.common.envelope import derived_message_id
from services.common.hetu_protection import matching_form
from services.common.identifiers import InvalidIdentifier
from services.common.shredding import identifier_key_id, profile_key_id
from services.common.web import Problem, current_principal, runtime
from services.consent import ledger
from services.consent.catalogue import Catalogue
from services.consent.consent_store import Change, ConsentStore, change_messages
from services.consent.decisions import (
    DecisionRefused,
    DecisionRequest,
    decision_change,
    decisions_for,
    same_request,
)
from services.consent.linking import ProfileLookupFailed, link_identifier

PERSONAL_PROOF = ("ip", "user_agent", "agent_id", "tc_string")

log = logging.getLogger(__name__)


def current_catalogue() -> Catalogue:
    return flask.current_app.extensions["consent_catalogue"]


def current_store() -> ConsentStore:
    return ConsentStore(runtime().db)


def record_decision(body: dict, *, objection: bool) -> tuple[dict, int]:
    """Record a decision (or, with ``objection``, an objection to all direct marketing) as the
    request's principal; returns (response body, status: 201 new, 200 a repeated
    ``decision_id``). ``body`` is POST /v1/consents' validated body. Raises Problem."""
    principal = current_principal()
    subject = _subject(body)
    now = datetime.now(UTC)
    proof = {k: (str(v) if v is not None else None) for k, v in body["proof"].items()}
    request = DecisionRequest(
        subject=subject, channel=body["channel"], source=body["source"],
        # a decision "collected" after it reached us is a client clock running fast (within
        # the skew allowed): ordered as of now, or a later objection would not win over it
        collected_at=min(body["collected_at"] or now, now), purpose=body.get("purpose"),
        state=body.get("state"), notice_version=body["notice_version"], proof=proof,
        actor=principal.key_id)
    kind = "objection" if objection else "decision"
    cause_id = (derived_message_id(body["decision_id"], f"consent-{kind}:{principal.key_id}")
                if body["decision_id"] else str(uuid.uuid4()))
    store = current_store()
    extensions = flask.current_app.extensions
    try:
        existing = store.change(cause_id)
        if existing is not None:
            decisions = None if objection else decisions_for(current_catalogue(), request)[0]
            if not same_request(existing, subject, decisions):
                raise Problem(409, "decision_id was already used for a different decision")
            change, status = existing, 200
        else:
            change = decision_change(current_catalogue(), request, cause_id=cause_id,
                                     subject_state=store.state(subject.key),
                                     signer=extensions["consent_signer"], now=now,
                                     objection=objection)
            change.entries = [_with_proof(e) for e in change.entries]
            change, status = store.commit(change, announce_later=True), 201
    except DecisionRefused as exc:
        raise Problem(400, exc.reason, errors={exc.field: [exc.reason]}) from None
    messages, announced = change_messages(store.finish(change)), [change.id]
    if subject.is_identifier:
        link = _link_to_known_profile(store, subject, change)
        if link is not None:
            messages += link[1]
            announced.append(link[0].id)
    runtime().producer.send(messages)
    store.announced(announced)
    receipts = [e.receipt for e in change.entries if e.subject.key == subject.key]
    return {"decision_id": change.id, "subject": subject.key, "receipts": receipts}, status


def _link_to_known_profile(store: ConsentStore, subject: ledger.Subject,
                           change: Change) -> tuple[Change, list] | None:
    """A decision on an identifier the identity graph already gives a profile (an agent's
    do-not-call on a known customer's number) reaches that profile now, not at its next
    event; returns the link's change and messages (None when there is none to make). The
    link waits in the outbox until announced, like the decision. If the graph cannot be
    asked, the consent worker links them at that event."""
    extensions = flask.current_app.extensions
    state = store.state(subject.key)
    try:
        profile_id = extensions["consent_profiles"].profile_of(
            subject.identifier_type, subject.identifier_value, state)
    except ProfileLookupFailed as exc:
        log.warning("decision on an identifier not linked to its profile yet",
                    extra={"error": str(exc)})
        return None
    if profile_id is None or (state and profile_id in state.linked):
        return None
    link, messages = link_identifier(store, extensions["consent_signer"], subject.key,
                                     profile_id, at=change.at, by=change.id,
                                     announce_later=True)
    return None if link is None else (link, messages)


def identifier_subject(type_: str, value: str, region: str) -> ledger.Subject:
    """A bare identifier's subject, keyed as every service keys the identifier (events, the
    graph, erasure requests): a hetu, or a user_id that is one, by the hetu's keyed digest,
    never in the clear (hetu_protection.matching_form). Raises InvalidIdentifier."""
    type_, value = matching_form(flask.current_app.extensions["consent_digest_key"], type_,
                                 value, region.upper())
    return ledger.identifier_subject(type_, value, region.upper())


def _subject(body: dict) -> ledger.Subject:
    if "identifier" in body:
        raw = body["identifier"]
        try:
            return identifier_subject(raw["type"], raw["value"], raw["region"])
        except InvalidIdentifier as exc:
            raise Problem(422, f"invalid {raw['type']}: {exc.reason}",
                          errors={"identifier": {"value": [exc.reason]}}) from None
    key, _ = current_store().current_state(body["profile_id"])
    return ledger.profile_subject(key)


def _seal(subject: ledger.Subject, proof: dict) -> dict:
    """Personal proof (IP, user agent, agent id, TC string) sealed under the subject's data
    key, so erasing the subject shreds it in the append-only ledger."""
    personal = {k: proof[k] for k in PERSONAL_PROOF if proof.get(k)}
    if not personal:
        return proof
    extensions = flask.current_app.extensions
    key_id = (identifier_key_id(extensions["consent_digest_key"], subject.identifier_type,
                                subject.identifier_value)
              if subject.is_identifier else profile_key_id(subject.profile_id))
    rest = {k: v for k, v in proof.items() if k not in PERSONAL_PROOF}
    return {**rest, "personal": extensions["consent_cipher"].seal(key_id, personal)}


def _with_proof(entry: ledger.Entry) -> ledger.Entry:
    return replace(entry, proof=_seal(entry.subject, entry.proof))
