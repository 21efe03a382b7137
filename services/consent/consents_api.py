"""HTTP adapter of the consent ledger: record decisions and objections, check, show state and
history, the purposes catalogue, the special-category rule and the receipt key.

Roles: collector (web back ends recording CMP decisions), agent (a customer's decision on the
phone), supervisor and dpo record decisions and objections and check; agent, supervisor and
dpo read a subject's state and history; collector also checks (exports and other services
call the check with a machine key). A partner sees only the catalogue and the receipt key:
whether a given person allowed something is not a partner's to ask; the export service
filters what partners receive.

Writes are answered after the Consent Changed messages reached Kafka. If Kafka is away the
decision still stands (it is stored and applied first), the caller gets 503 and the consent
worker announces it later (consent_store.UnannouncedChanges); a retry with the same
``decision_id`` is answered with the original receipts.
"""

from __future__ import annotations

import uuid
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import flask
from flask_smorest import Blueprint
from marshmallow import Schema, ValidationError, fields, validate, validates_schema

from services.common.envelope import CHANNELS, derived_message_id
from services.common.identifiers import IDENTIFIER_TYPES, InvalidIdentifier
from services.common.shredding import FieldCipher, identifier_key_id, profile_key_id
from services.common.web import Problem, current_principal, require_roles, runtime
from services.consent import ledger
from services.consent.catalogue import Catalogue, load_catalogue
from services.consent.consent_store import ConsentStore, change_messages
from services.consent.decisions import (
    DecisionRefused,
    DecisionRequest,
    decision_change,
    decisions_for,
    same_request,
    special_category_answers,
)
from services.consent.privacy_flow import digest_key, subject_keys
from services.consent.receipts import ReceiptSigner

WRITERS = ("collector", "agent", "supervisor", "dpo")
READERS = ("agent", "supervisor", "dpo")
CHECKERS = ("collector", "agent", "supervisor", "dpo")
EVERYONE = ("collector", "agent", "supervisor", "partner", "dpo")
CLOCK_SKEW = timedelta(minutes=5)
PERSONAL_PROOF = ("ip", "user_agent", "agent_id", "tc_string")


class IdentifierSchema(Schema):
    type = fields.String(required=True, validate=validate.OneOf(IDENTIFIER_TYPES))
    value = fields.String(required=True, validate=validate.Length(min=1, max=512))
    region = fields.String(load_default="FI", validate=validate.Length(equal=2))


class ProofSchema(Schema):
    ip = fields.IP(load_default=None)
    user_agent = fields.String(load_default=None, validate=validate.Length(max=1000))
    tc_string = fields.String(load_default=None, validate=validate.Length(min=1, max=65536))
    agent_id = fields.String(load_default=None, validate=validate.Length(max=128))


class SubjectRequestSchema(Schema):
    profile_id = fields.String(validate=validate.Length(min=1, max=128))
    identifier = fields.Nested(IdentifierSchema)
    channel = fields.String(load_default="web", validate=validate.OneOf(CHANNELS))
    source = fields.String(required=True, validate=validate.Length(min=1, max=200))
    collected_at = fields.AwareDateTime(load_default=None, default_timezone=UTC)
    notice_version = fields.String(load_default=None, validate=validate.Length(max=64))
    decision_id = fields.String(load_default=None, validate=validate.Length(min=1, max=128),
                                metadata={"description": "the client's id for this decision: "
                                          "a retry with it is answered, not recorded twice"})
    proof = fields.Nested(ProofSchema, load_default=dict)

    @validates_schema
    def _one_subject(self, data, **_):
        if ("profile_id" in data) == ("identifier" in data):
            raise ValidationError("give exactly one of profile_id and identifier", "profile_id")
        collected = data.get("collected_at")
        if collected and collected > datetime.now(UTC) + CLOCK_SKEW:
            raise ValidationError("collected_at is in the future", "collected_at")


class DecisionSchema(SubjectRequestSchema):
    purpose = fields.String(load_default=None, validate=validate.Length(min=1, max=64),
                            metadata={"description": "omit to decide the TCF-mapped purposes "
                                      "from proof.tc_string"})
    state = fields.String(load_default=None, validate=validate.OneOf(ledger.STATES))


class CheckQuerySchema(Schema):
    purpose = fields.String(required=True, validate=validate.Length(min=1, max=64))


class IdentifierQuerySchema(Schema):
    type = fields.String(required=True, validate=validate.OneOf(IDENTIFIER_TYPES))
    value = fields.String(required=True, validate=validate.Length(min=1, max=512))
    region = fields.String(load_default="FI", validate=validate.Length(equal=2))


class IdentifierCheckQuerySchema(IdentifierQuerySchema, CheckQuerySchema):
    pass


class SpecialCategoryCheckSchema(Schema):
    profile_id = fields.String(required=True, validate=validate.Length(min=1, max=128))
    traits = fields.List(fields.String(validate=validate.Length(min=1, max=128)),
                         required=True, validate=validate.Length(min=1, max=500))


class CheckSchema(Schema):
    profile_id = fields.String()
    subject = fields.String()
    purpose = fields.String()
    allowed = fields.Boolean()
    state = fields.String()
    reason = fields.String()
    decided_at = fields.String(allow_none=True)


def install_consents(app: flask.Flask) -> None:
    """Load the catalogue and keys once (fail at start-up, not on the first request)."""
    rt = app.extensions["muisti"]
    app.extensions["consent_catalogue"] = load_catalogue(rt.settings.consent_purposes_file or None)
    app.extensions["consent_signer"] = ReceiptSigner.from_setting(rt.settings.consent_receipt_key)
    app.extensions["consent_cipher"] = FieldCipher(subject_keys(rt.settings, rt.db))
    app.extensions["consent_digest_key"] = digest_key(rt.settings)


def _catalogue() -> Catalogue:
    return flask.current_app.extensions["consent_catalogue"]


def _store() -> ConsentStore:
    return ConsentStore(runtime().db)


def _subject(body: dict) -> ledger.Subject:
    if "identifier" in body:
        raw = body["identifier"]
        try:
            return ledger.identifier_subject(raw["type"], raw["value"], raw["region"].upper())
        except InvalidIdentifier as exc:
            raise Problem(422, f"invalid {raw['type']}: {exc.reason}",
                          errors={"identifier": {"value": [exc.reason]}}) from None
    key, _ = _store().current_state(body["profile_id"])
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


def _record(body: dict, *, objection: bool):
    """Record a decision or objection; returns (response, status)."""
    principal = current_principal()
    subject = _subject(body)
    now = datetime.now(UTC)
    proof = {k: (str(v) if v is not None else None) for k, v in body["proof"].items()}
    request = DecisionRequest(
        subject=subject, channel=body["channel"], source=body["source"],
        collected_at=body["collected_at"] or now, purpose=body.get("purpose"),
        state=body.get("state"), notice_version=body["notice_version"], proof=proof,
        actor=principal.key_id)
    kind = "objection" if objection else "decision"
    cause_id = (derived_message_id(body["decision_id"], f"consent-{kind}:{principal.key_id}")
                if body["decision_id"] else str(uuid.uuid4()))
    store = _store()
    extensions = flask.current_app.extensions
    try:
        existing = store.change(cause_id)
        if existing is not None:
            decisions = None if objection else decisions_for(_catalogue(), request)[0]
            if not same_request(existing, subject, decisions):
                raise Problem(409, "decision_id was already used for a different decision")
            change, status = existing, 200
        else:
            change = decision_change(_catalogue(), request, cause_id=cause_id,
                                     subject_state=store.state(subject.key),
                                     signer=extensions["consent_signer"], now=now,
                                     objection=objection)
            change.entries = [_with_proof(e) for e in change.entries]
            change, status = store.commit(change, announce_later=True), 201
    except DecisionRefused as exc:
        raise Problem(400, exc.reason, errors={exc.field: [exc.reason]}) from None
    runtime().producer.send(change_messages(store.finish(change)))
    store.announced([change.id])
    receipts = [e.receipt for e in change.entries if e.subject.key == subject.key]
    return {"decision_id": change.id, "subject": subject.key, "receipts": receipts}, status


def _with_proof(entry: ledger.Entry) -> ledger.Entry:
    return replace(entry, proof=_seal(entry.subject, entry.proof))


def _answer(subject_key: str, answer: ledger.CheckAnswer, profile: bool) -> dict:
    body = {"purpose": answer.purpose, "allowed": answer.allowed, "state": answer.state,
            "reason": answer.reason,
            "decided_at": answer.decided_at.isoformat().replace("+00:00", "Z")
            if answer.decided_at else None}
    return {("profile_id" if profile else "subject"): subject_key, **body}


def _checked(subject_key: str, purpose: str, profile: bool) -> dict:
    catalogue = _catalogue()
    if catalogue.purpose(purpose) is None:
        raise Problem(400, f"unknown purpose {purpose!r}",
                      errors={"purpose": [f"known: {', '.join(catalogue.purposes)}"]})
    key, state = _store().current_state(subject_key)
    return _answer(key, ledger.check(catalogue, state, purpose), profile)


def _overview(subject_key: str) -> dict:
    store, catalogue = _store(), _catalogue()
    key, state = store.current_state(subject_key)
    history = store.entries(state.applied) if state else []
    return {
        "subject": key,
        "consents": [_answer(key, ledger.check(catalogue, state, p), False)
                     for p in catalogue.purposes],
        "linked": state.linked if state else [],
        "absorbed": state.absorbed if state else [],
        "history": [_entry_view(e) for e in history],
    }


def _entry_view(entry: ledger.Entry) -> dict:
    proof = {k: v for k, v in entry.proof.items() if k != "personal"}
    return {"receipt_id": entry.id, "purpose": entry.purpose, "state": entry.state,
            "kind": entry.kind, "reason": entry.reason, "channel": entry.channel,
            "source": entry.source, "collected_at": entry.collected_at.isoformat(),
            "notice_version": entry.notice_version, "proof": proof,
            "proof_sealed": "personal" in entry.proof, "receipt": entry.receipt}


def _identifier_key(query: dict) -> str:
    try:
        return ledger.identifier_subject(query["type"], query["value"],
                                         query["region"].upper()).key
    except InvalidIdentifier as exc:
        raise Problem(422, f"invalid {query['type']}: {exc.reason}",
                      errors={"value": [exc.reason]}) from None


def consents_blueprint() -> Blueprint:
    blueprint = Blueprint("consents", __name__, description=(
        "Consent decisions, objections to direct marketing, checks and the purposes catalogue"))

    @blueprint.route("/v1/consents", methods=["POST"])
    @require_roles(*WRITERS)
    @blueprint.arguments(DecisionSchema)
    @blueprint.response(201)
    @blueprint.alt_response(200, description="a retry of a recorded decision_id")
    @blueprint.alt_response(409, description="decision_id reused for another decision")
    def record_decision(body):
        """Record a decision for a profile or a bare identifier; returns signed receipts.
        Without `purpose`, `proof.tc_string` decides the TCF-mapped purposes."""
        return _record(body, objection=False)

    @blueprint.route("/v1/objections", methods=["POST"])
    @require_roles(*WRITERS)
    @blueprint.arguments(SubjectRequestSchema)
    @blueprint.response(201)
    def record_objection(body):
        """Object to direct marketing: every direct-marketing purpose denied on every
        channel, for a profile or a bare identifier (a do-not-call number)."""
        return _record(body, objection=True)

    @blueprint.route("/v1/consents/<string:profile_id>")
    @require_roles(*READERS)
    @blueprint.response(200)
    def profile_consents(profile_id):
        """A profile's state for every purpose, linked identifiers and full history."""
        return {"profile_id": profile_id, **_overview(profile_id)}

    @blueprint.route("/v1/consents/<string:profile_id>/check")
    @require_roles(*CHECKERS)
    @blueprint.arguments(CheckQuerySchema, location="query")
    @blueprint.response(200, CheckSchema)
    def check_profile(query, profile_id):
        """Is the purpose allowed for the profile, and why (one store read)."""
        return _checked(profile_id, query["purpose"], profile=True)

    @blueprint.route("/v1/consents/by-identifier")
    @require_roles(*READERS)
    @blueprint.arguments(IdentifierQuerySchema, location="query")
    @blueprint.response(200)
    def identifier_consents(query):
        """A bare identifier's state and history (decisions recorded on the identifier)."""
        return _overview(_identifier_key(query))

    @blueprint.route("/v1/consents/by-identifier/check")
    @require_roles(*CHECKERS)
    @blueprint.arguments(IdentifierCheckQuerySchema, location="query")
    @blueprint.response(200, CheckSchema)
    def check_identifier(query):
        """Is the purpose allowed for a bare identifier (e.g. before calling a number)."""
        return _checked(_identifier_key(query), query["purpose"], profile=False)

    @blueprint.route("/v1/consents/special-categories/check", methods=["POST"])
    @require_roles(*CHECKERS)
    @blueprint.arguments(SpecialCategoryCheckSchema)
    @blueprint.response(200)
    def check_special_categories(body):
        """Which of these traits the platform may store for the profile: a trait classified
        in a special category needs explicit consent for that category."""
        _, state = _store().current_state(body["profile_id"])
        answers = special_category_answers(_catalogue(), state, body["traits"])
        return {"profile_id": body["profile_id"], "traits": [vars(a) for a in answers],
                "refused": [a.trait for a in answers if not a.allowed]}

    @blueprint.route("/v1/consents/receipt-key")
    @require_roles(*EVERYONE)
    @blueprint.response(200)
    def receipt_key():
        """The public key that verifies consent receipts (Ed25519)."""
        return flask.current_app.extensions["consent_signer"].public_key()

    @blueprint.route("/v1/purposes")
    @require_roles(*EVERYONE)
    @blueprint.response(200)
    def purposes():
        """The purposes catalogue: legal bases, defaults, texts (fi, sv, en), notices and
        special categories."""
        return _catalogue().to_dict()

    return blueprint

