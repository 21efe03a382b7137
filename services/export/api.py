"""HTTP entry point of the export service: partner contracts and export runs.

Roles: admin defines contracts (PUT, DELETE); admin and dpo start runs; admin, dpo and
supervisor read every contract and run (every export is auditable); a partner key reads only
its own contract and runs (another partner's answer 404, so ids cannot be probed). Runs are
worked by the export worker, never in the request thread: POST answers 202 with the queued
run, and a repeated POST with the same ``Idempotency-Key`` answers the same run. A streaming
contract's stream (what it has sent, its last error) is read at ``/v1/exports/{partner}/stream``.
What went to which partner about one profile (by runs and streams) is read by admin and dpo at
``/v1/exports/disclosures`` (the consent service's preference centre shows it the customer).
A partner's deletion notices are listed at ``/v1/exports/{partner}/notices`` (admin and
auditors); admin and dpo send those that failed for good again with ``POST .../notices/retry``,
and replacing a contract does so too (a fixed destination is the usual cure); the dpo closes
one that cannot be sent with ``POST .../notices/{id}/abandon`` and the reason. How many notices
wait or failed is a gauge (``muisti_deletion_notices``), read from the store at each scrape.
Secrets are sealed at rest (services.export.sealing) and never returned.
"""

from __future__ import annotations

import uuid
from typing import Any

import flask
from flask import Flask, request
from flask_smorest import Blueprint
from marshmallow import EXCLUDE, Schema, fields, validate

from services.common import metrics, web
from services.common.config import Settings
from services.common.scraped import ScrapedReading
from services.common.web import Problem, current_principal, require_roles, runtime
from services.export import contracts
from services.export.export_store import NOTICE_STATES, ExportStore, RunInProgress, now
from services.export.feed import partners_of
from services.export.sealing import SecretBox

SERVICE = "export"
AUDITORS = ("dpo", "supervisor")
MAX_IDEMPOTENCY_KEY = 200
RUN_IN_PROGRESS = "a run of this partner is queued or running; wait for it"


def create_app(settings: Settings | None = None) -> Flask:
    settings = settings or Settings.from_env()
    # refuses to start without a usable CDP_MASTER_KEY: contracts' secrets are sealed with it
    secrets = SecretBox.from_settings(settings)
    app = web.create_app(service=SERVICE, settings=settings,
                         blueprints=[_partners_blueprint(), _runs_blueprint()])
    app.extensions["export_secrets"] = secrets
    _expose_notice_backlog(ExportStore(app.extensions["muisti"].db, secrets))
    return app


def _expose_notice_backlog(store: ExportStore) -> None:
    backlog = ScrapedReading("deletion notice backlog", store.notice_backlog,
                             {"pending": 0, "failed": 0, "oldest_pending_at": None})
    for state in ("pending", "failed"):
        metrics.DELETION_NOTICES.labels(SERVICE, state).set_function(
            lambda state=state: backlog.count(state))
    metrics.DELETION_NOTICE_OLDEST_PENDING_AGE.labels(SERVICE).set_function(
        lambda: backlog.age_seconds("oldest_pending_at"))


class FieldRuleSchema(Schema):
    class Meta:
        unknown = EXCLUDE

    name = fields.String(required=True, metadata={"description": "column name sent"})
    source = fields.String(required=True, metadata={
        "description": "profile_id, identifiers.<type>, traits.<name> or computed.<name>"})
    treatment = fields.String(load_default="plain",
                              validate=validate.OneOf(contracts.TREATMENTS))
    platform = fields.String(load_default=None, allow_none=True,
                             metadata={"description": "meta or google (sha256 only)"})
    platform_field = fields.String(load_default=None, allow_none=True, metadata={
        "description": "the platform's parameter name, e.g. em, ph, email, phone"})


class DestinationSchema(Schema):
    class Meta:
        unknown = EXCLUDE

    kind = fields.String(required=True, validate=validate.OneOf(("https", "directory")))
    url = fields.String(load_default=None, allow_none=True)
    signing_secret = fields.String(load_default=None, allow_none=True, load_only=True)
    authorization = fields.String(load_default=None, allow_none=True, load_only=True, metadata={
        "description": "the endpoint's credentials: the Authorization header value it expects"})
    path = fields.String(load_default=None, allow_none=True)


class ColumnSchema(Schema):
    class Meta:
        unknown = EXCLUDE

    name = fields.String(required=True)
    source = fields.String(required=True, metadata={
        "description": "traits.<name> or computed.<name>"})


class AggregateSchema(Schema):
    class Meta:
        unknown = EXCLUDE

    dimensions = fields.List(fields.Nested(ColumnSchema), required=True)
    measures = fields.List(fields.Nested(ColumnSchema), load_default=list, metadata={
        "description": "numeric sources: each gives <name>_sum and <name>_avg per cell"})
    k = fields.Integer(load_default=None, allow_none=True, metadata={
        "description": "minimum profiles per cell; CDP_EXPORT_MIN_CELL_SIZE when larger"})


class ContractSchema(Schema):
    class Meta:
        unknown = EXCLUDE

    name = fields.String(required=True)
    required_purposes = fields.List(fields.String(), required=True, metadata={
        "description": "every one must be allowed for a profile at the moment it is sent"})
    fields_ = fields.List(fields.Nested(FieldRuleSchema), load_default=list, data_key="fields",
                          metadata={"description": "the allow-list of fields and treatments "
                                                   "(none for an aggregate contract)"})
    destination = fields.Nested(DestinationSchema, required=True)
    format = fields.String(load_default="csv", validate=validate.OneOf(contracts.FORMATS))
    gzip = fields.Boolean(load_default=False)
    mode = fields.String(load_default="full", validate=validate.OneOf(contracts.MODES))
    segment = fields.String(load_default=None, allow_none=True)
    pseudonym_key = fields.String(load_default=None, allow_none=True, load_only=True)
    phone_region = fields.String(load_default="FI")
    aggregate = fields.Nested(AggregateSchema, load_default=None, allow_none=True, metadata={
        "description": "mode aggregate only: statistics by dimensions, cells of k+ profiles"})


class RunRequestSchema(Schema):
    class Meta:
        unknown = EXCLUDE

    mode = fields.String(load_default=None, allow_none=True,
                         validate=validate.OneOf(contracts.RUN_MODES),
                         metadata={"description": "overrides the contract's mode (a run of a "
                                   "streaming contract is a full backfill by default)"})


class DisclosureQuerySchema(Schema):
    profile_id = fields.String(required=True, validate=validate.Length(min=1, max=200))


class DisclosureSchema(Schema):
    partner_id = fields.String()
    partner_name = fields.String(allow_none=True)
    profile_id = fields.String()
    first_sent_at = fields.String(allow_none=True)
    last_sent_at = fields.String(allow_none=True)
    via = fields.String(metadata={"description": "run or stream: how it was last sent"})
    # named apart from the ``fields`` module this class body uses
    fields_sent = fields.List(fields.String(), attribute="fields", data_key="fields",
                              metadata={"description": "the columns the partner holds"})
    deletion_notice_at = fields.String(allow_none=True, metadata={
        "description": "when the partner was last told to delete it"})


class NoticeQuerySchema(Schema):
    status = fields.String(load_default=None, validate=validate.OneOf(NOTICE_STATES))


class NoticeSchema(Schema):
    notice_id = fields.String(attribute="_id")
    profile_id = fields.String()
    reason = fields.String(metadata={
        "description": "erasure, restricted or consent:<purpose>:<state>"})
    status = fields.String(metadata={
        "description": "pending, sent, failed (for good) or abandoned (closed by hand)"})
    attempts = fields.Integer()
    created_at = fields.DateTime(allow_none=True)
    next_attempt_at = fields.DateTime(allow_none=True)
    sent_at = fields.DateTime(allow_none=True)
    requeued_at = fields.DateTime(allow_none=True)
    last_error = fields.String(allow_none=True)
    abandoned_at = fields.DateTime(allow_none=True)
    abandoned_by = fields.String(allow_none=True, metadata={"description": "the key id"})
    abandoned_reason = fields.String(allow_none=True)
    partner_receipt = fields.Dict(attribute="receipt", allow_none=True)


class NoticesSchema(Schema):
    partner_id = fields.String()
    counts = fields.Dict(keys=fields.String(), values=fields.Integer(),
                         metadata={"description": "every notice of the partner, by status"})
    notices = fields.List(fields.Nested(NoticeSchema),
                          metadata={"description": "newest first, at most 100"})


class AbandonSchema(Schema):
    reason = fields.String(required=True, validate=validate.Length(min=1, max=500), metadata={
        "description": "why it is closed unsent, e.g. how the partner was told instead"})


class RequeuedSchema(Schema):
    partner_id = fields.String()
    requeued = fields.Integer(metadata={"description": "failed notices made due again"})


class DisclosuresSchema(Schema):
    profile_id = fields.String()
    disclosures = fields.List(fields.Nested(DisclosureSchema))


def _store() -> ExportStore:
    return ExportStore(runtime().db, flask.current_app.extensions["export_secrets"])


def _known_partners_store(partner_id: str) -> ExportStore:
    """The store, once it holds ``partner_id`` (retired or not); 404 when it does not."""
    store = _store()
    if store.partner(partner_id, include_deleted=True) is None:
        raise Problem(404, f"no partner {partner_id}")
    return store


def _visible_partner(partner_id: str) -> None:
    """A partner key sees only its own partner; others get the same 404 as a missing one."""
    principal = current_principal()
    privileged = principal.roles & {"admin", *AUDITORS}
    if not privileged and principal.partner_id != partner_id:
        raise Problem(404, f"no partner {partner_id}")


def _partners_blueprint() -> Blueprint:
    blueprint = Blueprint("partners", __name__, url_prefix="/v1/partners",
                          description="Partner contracts (admin)")

    @blueprint.route("/<string:partner_id>", methods=["PUT"])
    @require_roles("admin")
    @blueprint.arguments(ContractSchema)
    @blueprint.response(200)
    @blueprint.alt_response(422, description="the contract is invalid; errors name each field")
    def put_partner(body, partner_id):
        """Create or replace a partner's contract. Secrets (signing_secret, authorization,
        pseudonym_key) are stored sealed and never shown again. The partner's deletion notices
        that failed for good are sent again."""
        body = {**body, "fields": body.pop("fields_")}
        try:
            contract = contracts.parse_contract(
                partner_id, body, allow_http=runtime().settings.export_allow_http)
        except contracts.InvalidContract as exc:
            raise Problem(422, "the contract is invalid", errors=exc.problems) from None
        store = _store()
        store.save_partner(contract)
        # what failed for good was most likely the contract's fault: give it another go
        store.requeue_failed_notices(partner_id)
        return contracts.public_view(contract)

    @blueprint.route("/<string:partner_id>", methods=["GET"])
    @require_roles("admin", "partner", *AUDITORS)
    @blueprint.response(200)
    @blueprint.alt_response(404, description="no such partner")
    def get_partner(partner_id):
        """A partner's contract without its secrets."""
        _visible_partner(partner_id)
        contract = _store().partner(partner_id)
        if contract is None:
            raise Problem(404, f"no partner {partner_id}")
        return contracts.public_view(contract)

    @blueprint.route("/<string:partner_id>", methods=["DELETE"])
    @require_roles("admin")
    @blueprint.response(204)
    @blueprint.alt_response(404, description="no such partner")
    def delete_partner(partner_id):
        """Retire a contract: no new runs, and a queued or running one ends `cancelled` at its
        next batch; deletion notices still reach the partner."""
        if not _store().delete_partner(partner_id):
            raise Problem(404, f"no partner {partner_id}")
        return "", 204

    return blueprint


def _run_view(run: dict[str, Any]) -> dict[str, Any]:
    progress = run.get("progress") or {}
    return {
        "run_id": run["_id"], "partner_id": run["partner_id"], "mode": run["mode"],
        "status": run["status"], "created_at": _iso(run.get("created_at")),
        "started_at": _iso(run.get("started_at")), "finished_at": _iso(run.get("finished_at")),
        "changed_since": _iso(run.get("changed_since")),
        "progress": {"considered": progress.get("considered", 0),
                     "excluded": progress.get("excluded", {}),
                     "exported": progress.get("exported", 0),
                     "batches_sent": progress.get("batches_sent", 0),
                     "invalid_values": progress.get("invalid_values", {}),
                     "next_batch": run.get("next_batch", 0)},
        "error": run.get("error"), "failed_batch": run.get("failed_batch"),
        "audit": {"requested_by": run.get("requested_by"),
                  "idempotency_key": run.get("idempotency_key"),
                  "content_sha256": run.get("content_sha256"),
                  "partner_receipt": run.get("receipt"), "claims": run.get("claims", 0)},
    }


def _iso(moment) -> str | None:
    return moment.isoformat() if moment is not None else None


def _run_mode(contract: contracts.PartnerContract, asked: str | None) -> str:
    if contract.mode == "aggregate":
        if asked is not None:
            raise Problem(422, "an aggregate contract's runs are aggregates; leave mode out")
        return "aggregate"
    return asked or ("full" if contract.mode == "streaming" else contract.mode)


def _stream_view(partner_id: str, stream: dict[str, Any] | None,
                 changes: dict[str, int]) -> dict[str, Any]:
    stream = stream or {}
    progress = stream.get("progress") or {}
    return {"partner_id": partner_id, "next_batch": stream.get("next_batch", 0),
            "changes": changes,
            "progress": {"considered": progress.get("considered", 0),
                         "excluded": progress.get("excluded", {}),
                         "exported": progress.get("exported", 0),
                         "batches_sent": progress.get("batches_sent", 0),
                         "invalid_values": progress.get("invalid_values", {})},
            "last_sent_at": _iso(stream.get("last_sent_at")),
            "last_batch_sha256": stream.get("last_batch_sha256"),
            "partner_receipt": stream.get("last_receipt"),
            "error": stream.get("last_error"), "retry_at": _iso(stream.get("retry_at")),
            "claims": stream.get("claims", 0)}


def _runs_blueprint() -> Blueprint:
    blueprint = Blueprint("exports", __name__, url_prefix="/v1/exports",
                          description="Export runs: start, follow, audit")

    @blueprint.route("/disclosures", methods=["GET"])
    @require_roles("admin", "dpo")
    @blueprint.arguments(DisclosureQuerySchema, location="query")
    @blueprint.response(200, DisclosuresSchema)
    def disclosures(query):
        """Which partners received a profile's data and when (first and last send, by a run
        or a stream), and whether they were told to delete it."""
        profile_id = query["profile_id"]
        return {"profile_id": profile_id,
                "disclosures": partners_of(_store(), [profile_id])}

    @blueprint.route("/<string:partner_id>/runs", methods=["POST"])
    @require_roles("admin", "dpo")
    @blueprint.arguments(RunRequestSchema)
    @blueprint.response(202)
    @blueprint.alt_response(404, description="no such partner")
    @blueprint.alt_response(409, description="another run of this partner is in progress")
    def start_run(body, partner_id):
        """Queue an export run; the worker sends it. With an `Idempotency-Key` header a
        repeated request answers the run the first one created."""
        store = _store()
        contract = store.partner(partner_id)
        if contract is None:
            raise Problem(404, f"no partner {partner_id}")
        key = request.headers.get("Idempotency-Key")
        if key is not None and not 0 < len(key) <= MAX_IDEMPOTENCY_KEY:
            raise Problem(400, f"Idempotency-Key must be 1-{MAX_IDEMPOTENCY_KEY} characters")
        run_id = (str(uuid.uuid5(uuid.NAMESPACE_URL, f"muisti:export-run:{partner_id}:{key}"))
                  if key else str(uuid.uuid4()))
        existing = store.run(run_id)
        if existing is not None:
            return _run_view(existing)
        if store.active_run(partner_id) is not None:  # one stored before runs took a slot
            raise Problem(409, RUN_IN_PROGRESS)
        mode = _run_mode(contract, body.get("mode"))
        created = now()
        changed_since = None
        if mode == "incremental":
            previous = store.last_successful_run(partner_id, before=created)
            if previous is not None:
                changed_since = previous.get("started_at") or previous["created_at"]
        try:
            run, _ = store.create_run({
                "_id": run_id, "partner_id": partner_id, "mode": mode, "status": "queued",
                "requested_by": current_principal().key_id, "idempotency_key": key,
                "created_at": created, "started_at": None, "finished_at": None,
                "changed_since": changed_since, "next_batch": 0, "cursor": None,
                "lease_owner": None, "lease_until": None, "batch_digests": [],
                "progress": {"considered": 0, "excluded": {}, "exported": 0, "batches_sent": 0,
                             "invalid_values": {}}})
        except RunInProgress:
            raise Problem(409, RUN_IN_PROGRESS) from None
        return _run_view(run)

    @blueprint.route("/<string:partner_id>/runs", methods=["GET"])
    @require_roles("admin", "partner", *AUDITORS)
    @blueprint.response(200)
    def list_runs(partner_id):
        """The partner's runs, newest first (at most 50)."""
        _visible_partner(partner_id)
        return {"partner_id": partner_id,
                "runs": [_run_view(run) for run in _store().runs(partner_id)]}

    @blueprint.route("/<string:partner_id>/runs/<string:run_id>", methods=["GET"])
    @require_roles("admin", "partner", *AUDITORS)
    @blueprint.response(200)
    @blueprint.alt_response(404, description="no such run of this partner")
    def get_run(partner_id, run_id):
        """One run: status, progress (considered, excluded by reason, exported, batches
        sent) and its audit record."""
        _visible_partner(partner_id)
        run = _store().run(run_id)
        if run is None or run["partner_id"] != partner_id:
            raise Problem(404, f"no run {run_id} of partner {partner_id}")
        return _run_view(run)

    @blueprint.route("/<string:partner_id>/notices", methods=["GET"])
    @require_roles("admin", *AUDITORS)
    @blueprint.arguments(NoticeQuerySchema, location="query")
    @blueprint.response(200, NoticesSchema)
    @blueprint.alt_response(404, description="no such partner")
    def list_notices(query, partner_id):
        """The deletion notices owed to the partner, newest first: whether each went out,
        how often it was tried, the partner's receipt or the last error. The identifiers a
        notice carries are not shown."""
        store = _known_partners_store(partner_id)
        return {"partner_id": partner_id, "counts": store.notice_counts(partner_id),
                "notices": store.partner_notices(partner_id, query["status"])}

    @blueprint.route("/<string:partner_id>/notices/retry", methods=["POST"])
    @require_roles("admin", "dpo")
    @blueprint.response(200, RequeuedSchema)
    @blueprint.alt_response(404, description="no such partner")
    def retry_notices(partner_id):
        """Send the partner's deletion notices that failed for good again (after its
        contract was fixed); they go out with the worker's next turn."""
        return {"partner_id": partner_id,
                "requeued": _known_partners_store(partner_id).requeue_failed_notices(partner_id)}

    @blueprint.route("/<string:partner_id>/notices/<string:notice_id>/abandon",
                     methods=["POST"])
    @require_roles("dpo")
    @blueprint.arguments(AbandonSchema)
    @blueprint.response(200, NoticeSchema)
    @blueprint.alt_response(404, description="no such notice of this partner")
    @blueprint.alt_response(409, description="the notice has not failed for good")
    def abandon_notice(body, partner_id, notice_id):
        """Close a notice that failed for good without sending it (the partner was told some
        other way, or no longer exists), with the reason; who did it is recorded."""
        store = _store()
        before = store.abandon_notice(partner_id, notice_id, current_principal().key_id,
                                      body["reason"])
        if before is None:
            raise Problem(404, f"no notice {notice_id} of partner {partner_id}")
        if before != "failed":
            raise Problem(409, f"the notice is {before}: only one that failed for good can be "
                               "abandoned")
        return store.notice(notice_id)

    @blueprint.route("/<string:partner_id>/stream", methods=["GET"])
    @require_roles("admin", "partner", *AUDITORS)
    @blueprint.response(200)
    @blueprint.alt_response(404, description="no such streaming partner")
    def get_stream(partner_id):
        """A streaming partner's stream: changes by status (pending, sent, not_sent,
        cancelled), what was sent, the last receipt and the last error. ``changes`` counts
        the changes still kept: a settled one (sent, not_sent, cancelled) is deleted once
        older than its retention (``stream_changes`` in CDP_RETENTION_DAYS, 30 days by
        default), while ``progress`` counts everything the stream ever considered and
        sent."""
        _visible_partner(partner_id)
        store = _store()
        contract = store.partner(partner_id, include_deleted=True)
        if contract is None or contract.mode != "streaming":
            raise Problem(404, f"no streaming partner {partner_id}")
        return _stream_view(partner_id, store.stream(partner_id),
                            store.stream_change_counts(partner_id))

    return blueprint
