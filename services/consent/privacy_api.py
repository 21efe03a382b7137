"""HTTP adapter for data-subject requests and retention (``/v1/privacy``).

Roles: the data-protection officer (dpo) files requests and downloads access exports, which
hold the subject's personal data; supervisors may read statuses and proofs (audit), which
hold none; admin may do everything, and alone runs a retention sweep for real.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import flask
import orjson
import pymongo.errors
from flask_smorest import Blueprint
from marshmallow import (
    INCLUDE,
    Schema,
    ValidationError,
    fields,
    validate,
    validates,
    validates_schema,
)

from services.common import retention
from services.common.documents import unstorable
from services.common.hetu_protection import matching_form
from services.common.identifiers import IDENTIFIER_TYPES, InvalidIdentifier
from services.common.web import Problem, current_principal, require_roles, runtime
from services.consent import privacy_backlog, privacy_retention
from services.consent.decisions import special_category_answers
from services.consent.linking import ProfileLookupFailed
from services.consent.privacy import (
    KINDS,
    STATES,
    Identifier,
    InvalidPrivacyRequest,
    NotRetryable,
    PrivacyRequest,
    access_export,
)
from services.consent.privacy_flow import PrivacyFlow, build_flow, retry_message
from services.consent.privacy_handlers import issue_receipt
from services.consent.privacy_receipts import NoReceipt
from services.consent.receipts import ReceiptSigner, verify
from services.consent.recording import current_catalogue, current_store

MAX_FIELDS = 50
RETRY_REPEAT_WINDOW = timedelta(minutes=1)


class SubjectIdentifierSchema(Schema):
    type = fields.String(required=True, validate=validate.OneOf(IDENTIFIER_TYPES))
    value = fields.String(required=True, validate=validate.Length(min=1, max=512))


class SubjectSchema(Schema):
    profile_id = fields.String(validate=validate.Length(min=1, max=128))
    identifier = fields.Nested(SubjectIdentifierSchema)

    @validates_schema
    def _exactly_one(self, data: dict, **_: Any) -> None:
        if ("profile_id" in data) == ("identifier" in data):
            raise ValidationError("give either profile_id or identifier")


class NewRequestSchema(Schema):
    kind = fields.String(required=True, validate=validate.OneOf(KINDS))
    subject = fields.Nested(SubjectSchema, required=True)
    fields_ = fields.Dict(data_key="fields", keys=fields.String(validate=validate.Length(
        min=1, max=64)), metadata={"description": "rectification only: trait → new value"})
    reason = fields.String(required=True, validate=validate.Length(min=1, max=500), metadata={
        "description": "the verification reference (how the subject's identity was checked); "
                       "a reference, not personal data"})
    request_id = fields.String(validate=validate.Regexp(r"^[A-Za-z0-9._:-]{8,128}$"), metadata={
        "description": "optional id chosen by the caller: filing the same id again returns "
                       "the request already filed (a platform's retried deletion callback)"})

    @validates("fields_")
    def _plain_fields(self, value: dict, **_: Any) -> None:
        if len(value) > MAX_FIELDS:
            raise ValidationError(f"at most {MAX_FIELDS} fields")
        reason = unstorable(value)
        if reason:
            raise ValidationError(reason)


class ListQuerySchema(Schema):
    state = fields.String(validate=validate.OneOf(STATES))
    limit = fields.Integer(load_default=50, validate=validate.Range(min=1, max=500))


class ExportQuerySchema(Schema):
    partial = fields.Boolean(load_default=False, metadata={
        "description": "download even though some services have not answered yet"})


class RetrySchema(Schema):
    request_id = fields.String()
    attempt = fields.Integer()
    services = fields.List(fields.String())
    message_id = fields.String()
    retried_at = fields.String()


class ReceiptSchema(Schema):
    class Meta:
        unknown = INCLUDE

    signature = fields.String(required=True, validate=validate.Length(min=1, max=200))


class VerificationSchema(Schema):
    valid = fields.Boolean()
    key_id = fields.String()


class AcceptedSchema(Schema):
    request_id = fields.String()
    state = fields.String()
    deadline = fields.String()
    status_url = fields.String()


def _accepted(request: PrivacyRequest) -> dict:
    return {"request_id": request.request_id, "state": request.state_at(datetime.now(UTC)),
            "deadline": request.deadline.isoformat(),
            "status_url": f"/v1/privacy/requests/{request.request_id}"}


def _filed_before(existing: PrivacyRequest, retried: PrivacyRequest) -> dict:
    """A retry of a request filed under the same ``request_id`` gets the stored request; a
    different request reusing the id is refused, not silently answered with the other."""
    if (existing.kind, existing.subject) != (retried.kind, retried.subject):
        raise Problem(409, f"request_id {existing.request_id!r} was used for another request "
                           f"(a {existing.kind} of another subject or kind)")
    return _accepted(existing)


def privacy_blueprint() -> Blueprint:
    blueprint = Blueprint("privacy", __name__, url_prefix="/v1/privacy",
                          description="Data-subject requests (access, erasure, restriction, "
                                      "rectification) and retention")

    @blueprint.route("/requests", methods=["POST"])
    @require_roles("dpo")
    @blueprint.arguments(NewRequestSchema)
    @blueprint.response(202, AcceptedSchema)
    @blueprint.alt_response(409, description="request_id already used for another request")
    def file_request(body):
        """File a request. It is stored at once (202), then the subject is expanded through
        the identity graph and the request fanned out on cdp.privacy.requests."""
        flow = _flow()
        subject = body["subject"]
        identifier = _identifier(subject["identifier"]) if "identifier" in subject else None
        if body["kind"] == "rectification":
            _refuse_special_categories_without_consent(subject, body.get("fields_") or {})
        try:
            request = PrivacyRequest.new(
                kind=body["kind"], profile_id=subject.get("profile_id"), identifier=identifier,
                fields=body.get("fields_"), reason=body["reason"],
                requested_by=current_principal().key_id, expected=_expected(),
                deadline_days=runtime().settings.privacy_deadline_days, now=datetime.now(UTC),
                digest=flow.digest, request_id=body.get("request_id"))
        except InvalidPrivacyRequest as exc:
            raise Problem(422, str(exc)) from None
        if body.get("request_id"):
            existing = flow.repository.get(body["request_id"])
            if existing is not None:
                return _filed_before(existing, request)
        try:
            flow.repository.add(request)
        except pymongo.errors.DuplicateKeyError:  # the same id filed at the same moment
            return _filed_before(flow.repository.get(request.request_id), request)
        flow.send_now(request.request_id, lambda messages: runtime().producer.send(
            messages, timeout=5))
        return _accepted(flow.repository.get(request.request_id))

    @blueprint.route("/requests")
    @require_roles("dpo", "supervisor")
    @blueprint.arguments(ListQuerySchema, location="query")
    @blueprint.response(200)
    def list_requests(query):
        """Requests, newest first; ``state=overdue`` lists open ones past their deadline."""
        now = datetime.now(UTC)
        found = _flow().repository.listing(query.get("state"), now, query["limit"])
        return {"requests": [_summary(request, now) for request in found]}

    @blueprint.route("/requests/<string:request_id>")
    @require_roles("dpo", "supervisor")
    @blueprint.response(200)
    @blueprint.alt_response(404, description="no such request")
    def show_request(request_id):
        """Status, acknowledgements, who is missing, the audit trail and the proof (no
        identifier in the clear)."""
        now = datetime.now(UTC)
        request = _request(request_id)
        return {**_summary(request, now), "audit": [_audit_view(e) for e in request.audit],
                "proof": request.proof(now)}

    @blueprint.route("/requests/<string:request_id>/export")
    @require_roles("dpo")
    @blueprint.arguments(ExportQuerySchema, location="query")
    @blueprint.response(200, content_type="application/json")
    @blueprint.alt_response(409, description="not an access request, or services still "
                                             "missing or failed")
    def export(query, request_id):
        """An access request's combined export: every service's data about the subject, as a
        JSON download."""
        request = _request(request_id)
        if request.kind != "access":
            raise Problem(409, f"request {request_id} is a {request.kind}, not an access request")
        if request.missing() and not query["partial"]:
            raise Problem(409, "services have not answered yet: " + ", ".join(request.missing())
                          + " (partial=true downloads what there is)")
        if request.failed() and not query["partial"]:
            raise Problem(409, "services could not collect their part: "
                          + ", ".join(request.failed()) + " (retry the request, or partial=true "
                          "downloads what there is)")
        document = access_export(request, _flow().repository.access_data(request_id),
                                 datetime.now(UTC))
        return flask.Response(
            orjson.dumps(document, option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS),
            mimetype="application/json", headers={
                "Content-Disposition": f'attachment; filename="access-{request_id}.json"'})

    @blueprint.route("/requests/<string:request_id>/retry", methods=["POST"])
    @require_roles("dpo")
    @blueprint.response(202, RetrySchema)
    @blueprint.alt_response(200, description="the same retry, asked again within a minute")
    @blueprint.alt_response(404, description="no such request")
    @blueprint.alt_response(409, description="neither partially failed nor overdue")
    def retry_request(request_id):
        """Send a partially failed or overdue request again to the services that have not
        acknowledged it as done (audited). Asking again within a minute returns that retry
        instead of sending another; services handle a repeat idempotently."""
        now = datetime.now(UTC)
        now = now.replace(microsecond=now.microsecond // 1000 * 1000)  # as the store keeps it
        request = _request(request_id)
        try:
            services = request.retry_targets(now)
        except NotRetryable as exc:
            raise Problem(409, str(exc)) from None
        last = request.last_retry()
        if last and last["services"] == services and now - last["at"] < RETRY_REPEAT_WINDOW:
            return _retry_view(request_id, last), 200
        attempt = len(request.retries) + 1
        message = retry_message(request, attempt, services)
        runtime().producer.send([message], timeout=5)
        by = current_principal().key_id
        _flow().repository.update(request_id, lambda r: r.record_retry(
            attempt, services, message.value.message_id, by, now))
        return _retry_view(request_id, {"attempt": attempt, "services": services,
                                        "message_id": message.value.message_id, "at": now})

    @blueprint.route("/requests/<string:request_id>/receipt")
    @require_roles("dpo")
    @blueprint.response(200)
    @blueprint.alt_response(404, description="no such request")
    @blueprint.alt_response(409, description="not an erasure, or not completed")
    def erasure_receipt(request_id):
        """The signed erasure receipt of a completed erasure, for the DPO to hand to the
        customer: no personal data, verifiable by anyone with the public key at
        /v1/consents/receipt-key."""
        request = _request(request_id)
        if request.receipt is None:
            try:  # an erasure completed before receipts were issued gets one now
                request = issue_receipt(_flow().repository, _signer(), request_id,
                                        datetime.now(UTC))
            except NoReceipt as exc:
                raise Problem(409, str(exc)) from None
        return flask.Response(
            orjson.dumps(request.receipt, option=orjson.OPT_INDENT_2),
            mimetype="application/json", headers={
                "Content-Disposition": f'attachment; filename="erasure-receipt-{request_id}.json"'})

    @blueprint.route("/receipts/verify", methods=["POST"])
    @require_roles("collector", "agent", "supervisor", "partner", "dpo")
    @blueprint.arguments(ReceiptSchema)
    @blueprint.response(200, VerificationSchema)
    def verify_receipt(body):
        """Check a consent or erasure receipt against this platform's public key: valid
        only when it was signed by it and not altered since. (Offline, without a key to
        this API: python -m services.consent.receipts RECEIPT.json --public-key KEY.)"""
        signer = _signer()
        return {"valid": verify(body, signer.public_key_bytes), "key_id": signer.key_id}

    @blueprint.route("/retention")
    @require_roles("dpo", "supervisor")
    @blueprint.response(200)
    def retention_report():
        """Dry run: per data kind this service holds, how much is past its retention."""
        return {"applied": False, "kinds": _sweep(apply=False)}

    @blueprint.route("/retention/sweep", methods=["POST"])
    @require_roles("admin")
    @blueprint.response(200)
    def retention_sweep():
        """Delete what is past its retention now (the consent worker also sweeps daily)."""
        return {"applied": True, "kinds": _sweep(apply=True)}

    return blueprint


def install_privacy(app: flask.Flask) -> None:
    """Give the app's privacy views their flow; raises ConfigError without the keys."""
    rt = app.extensions["muisti"]
    app.extensions["privacy_flow"] = build_flow(rt.settings, rt.db)
    privacy_backlog.expose(privacy_backlog.erasure_backlog(
        app.extensions["privacy_flow"].repository.erasure_backlog))
    app.extensions["privacy_signer"] = ReceiptSigner.from_setting(rt.settings.consent_receipt_key)


def _flow() -> PrivacyFlow:
    return flask.current_app.extensions["privacy_flow"]


def _retry_view(request_id: str, retry: dict) -> dict:
    return {"request_id": request_id, "attempt": retry["attempt"], "services": retry["services"],
            "message_id": retry["message_id"], "retried_at": retry["at"].isoformat()}


def _signer() -> ReceiptSigner:
    return flask.current_app.extensions["privacy_signer"]


def _expected() -> tuple[str, ...]:
    return tuple(s.strip() for s in runtime().settings.privacy_services.split(","))


def _sweep(*, apply: bool) -> list[dict]:
    settings = runtime().settings
    return privacy_retention.sweep(runtime().db, retention.parse_policy(settings.retention_days),
                                   datetime.now(UTC), apply=apply)


def _refuse_special_categories_without_consent(subject: dict, fields: dict) -> None:
    """A rectification may not put special-category data (GDPR art. 9: health, religion...)
    on a profile unless the explicit consent its category needs is on record. Clearing such
    a trait needs no consent."""
    catalogue = current_catalogue()
    special = [trait for trait, value in fields.items()
               if value not in (None, "") and catalogue.category_of_trait(trait) is not None]
    if not special:
        return
    profile_id = subject.get("profile_id")
    if profile_id is None:
        raw = subject["identifier"]
        try:
            profile_id = flask.current_app.extensions["consent_profiles"].profile_of(
                raw["type"], raw["value"], None)
        except ProfileLookupFailed as exc:
            raise Problem(503, f"cannot check explicit consent for special-category data: "
                               f"{exc}") from None
    state = current_store().current_state(profile_id)[1] if profile_id else None
    refused = [answer for answer in special_category_answers(catalogue, state, special)
               if not answer.allowed]
    if refused:
        raise Problem(
            422, "special-category data needs the subject's explicit consent: "
                 + "; ".join(f"{a.trait} is {a.category} data and needs {a.purpose}"
                             for a in refused),
            errors={"json": {"fields": {a.trait: [f"{a.category}: no explicit consent for "
                                                  f"{a.purpose} on record ({a.reason})"]
                                        for a in refused}}})


def _identifier(raw: dict) -> Identifier:
    """The subject identifier as every service keeps it (hetu_protection.matching_form)."""
    try:
        return Identifier(*matching_form(_flow().digest_key, raw["type"], raw["value"]))
    except InvalidIdentifier as exc:
        raise Problem(422, f"invalid {raw['type']}: {exc.reason}",
                      errors={"json": {"subject": {"identifier": {"value": [exc.reason]}}}}
                      ) from None


def _request(request_id: str) -> PrivacyRequest:
    request = _flow().repository.get(request_id)
    if request is None:
        raise Problem(404, f"no privacy request {request_id}")
    return request


def _summary(request: PrivacyRequest, now: datetime) -> dict[str, Any]:
    proof = request.proof(now)
    return {"request_id": request.request_id, "kind": request.kind, "state": proof["state"],
            "received_at": proof["received_at"], "deadline": proof["deadline"],
            "closed_at": proof["closed_at"], "requested_by": request.requested_by,
            "subject": request.subject, "expected": list(request.expected),
            "acknowledged": [s for s in proof["services"] if s["status"] != "missing"],
            "missing": request.missing(), "held_up": request.last_error}


def _audit_view(entry: dict) -> dict:
    return {**entry, "at": entry["at"].isoformat()}

