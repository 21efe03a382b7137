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

import logging
from datetime import UTC, datetime, timedelta

import flask
from flask_smorest import Blueprint
from marshmallow import Schema, ValidationError, fields, validate, validates_schema

from services.common.envelope import CHANNELS
from services.common.identifiers import IDENTIFIER_TYPES, InvalidIdentifier
from services.common.shredding import FieldCipher
from services.common.web import Problem, require_roles, runtime
from services.consent import ledger, recording
from services.consent.catalogue import load_catalogue
from services.consent.decisions import (
    identifier_check,
    special_category_answers,
)
from services.consent.linking import IdentityProfiles, ProfileLookupFailed
from services.consent.privacy import Identifier
from services.consent.privacy_flow import digest_key, subject_keys
from services.consent.privacy_handlers import DoNotContactList
from services.consent.receipts import ReceiptSigner
from services.consent.recording import current_catalogue, current_store

WRITERS = ("collector", "agent", "supervisor", "dpo")
READERS = ("agent", "supervisor", "dpo")
CHECKERS = ("collector", "agent", "supervisor", "dpo")
EVERYONE = ("collector", "agent", "supervisor", "partner", "dpo")
CLOCK_SKEW = timedelta(minutes=5)

log = logging.getLogger(__name__)


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
    resolved_profile_id = fields.String(allow_none=True, metadata={
        "description": "identifier checks: the profile the identity graph resolves it to"})
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
    app.extensions["consent_profiles"] = IdentityProfiles(rt.settings.identity_url,
                                                          rt.settings.service_api_key)


def _answer(subject_key: str, answer: ledger.CheckAnswer, profile: bool) -> dict:
    body = {"purpose": answer.purpose, "allowed": answer.allowed, "state": answer.state,
            "reason": answer.reason,
            "decided_at": answer.decided_at.isoformat().replace("+00:00", "Z")
            if answer.decided_at else None}
    return {("profile_id" if profile else "subject"): subject_key, **body}


def _checked(subject_key: str, purpose: str, profile: bool) -> dict:
    catalogue = current_catalogue()
    if catalogue.purpose(purpose) is None:
        raise Problem(400, f"unknown purpose {purpose!r}",
                      errors={"purpose": [f"known: {', '.join(catalogue.purposes)}"]})
    key, state = current_store().current_state(subject_key)
    return _answer(key, ledger.check(catalogue, state, purpose), profile)


def _overview(subject_key: str) -> dict:
    store, catalogue = current_store(), current_catalogue()
    key, state = store.current_state(subject_key)
    history = store.entries(state.applied) if state else []
    return {
        "subject": key,
        # each row titled in every language, so a reader (the agent dashboard) shows the
        # catalogue's own words rather than the purpose's code name
        "consents": [{**_answer(key, ledger.check(catalogue, state, p), False),
                      "titles": {lang: text["title"] for lang, text in purpose.texts.items()}}
                     for p, purpose in catalogue.purposes.items()],
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


def _identifier_checked(query: dict) -> dict:
    catalogue, store = current_catalogue(), current_store()
    if catalogue.purpose(query["purpose"]) is None:
        raise Problem(400, f"unknown purpose {query['purpose']!r}",
                      errors={"purpose": [f"known: {', '.join(catalogue.purposes)}"]})
    key = _identifier_key(query)
    _, identifier_state = store.current_state(key)
    subject = ledger.subject_from_key(key)
    extensions = flask.current_app.extensions
    objected_then_erased = DoNotContactList(runtime().db, extensions["consent_digest_key"])
    do_not_contact_since = objected_then_erased.listed_since(
        Identifier(subject.identifier_type, subject.identifier_value))
    try:
        profile_id = flask.current_app.extensions["consent_profiles"].profile_of(
            subject.identifier_type, subject.identifier_value, identifier_state)
    except ProfileLookupFailed as exc:
        log.warning("identifier check without its profile", extra={"error": str(exc)})
        profile_id, known = None, False
    else:
        known = True
    profile_state = store.current_state(profile_id)[1] if profile_id else None
    answer = identifier_check(catalogue, identifier_state, profile_state, query["purpose"],
                              profile_known=known, do_not_contact_since=do_not_contact_since)
    return {**_answer(key, answer, False), "resolved_profile_id": profile_id}


def _identifier_key(query: dict) -> str:
    try:
        return recording.identifier_subject(query["type"], query["value"], query["region"]).key
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
        return recording.record_decision(body, objection=False)

    @blueprint.route("/v1/objections", methods=["POST"])
    @require_roles(*WRITERS)
    @blueprint.arguments(SubjectRequestSchema)
    @blueprint.response(201)
    @blueprint.alt_response(200, description="a retry of a recorded decision_id")
    @blueprint.alt_response(409, description="decision_id reused for another decision")
    def record_objection(body):
        """Object to direct marketing: every direct-marketing purpose denied on every
        channel, for a profile or a bare identifier (a do-not-call number)."""
        return recording.record_decision(body, objection=True)

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
        """Is the purpose allowed for an identifier (e.g. before calling a number): the
        decisions recorded on the identifier and those of the profile the identity graph
        resolves it to; the latest wins. If the graph cannot be asked, never allowed."""
        return _identifier_checked(query)

    @blueprint.route("/v1/consents/special-categories/check", methods=["POST"])
    @require_roles(*CHECKERS)
    @blueprint.arguments(SpecialCategoryCheckSchema)
    @blueprint.response(200)
    def check_special_categories(body):
        """Which of these traits the platform may store for the profile: a trait classified
        in a special category needs explicit consent for that category."""
        _, state = current_store().current_state(body["profile_id"])
        answers = special_category_answers(current_catalogue(), state, body["traits"])
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
        return current_catalogue().to_dict()

    return blueprint

