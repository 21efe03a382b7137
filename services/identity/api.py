"""HTTP entry point of the identity service: Segment-compatible ingestion, call events, and
the identity graph's read and repair endpoints."""

from __future__ import annotations

from datetime import UTC, datetime

import orjson
from flask import Flask, current_app
from flask_smorest import Blueprint
from marshmallow import Schema, ValidationError, fields, validate

from services.common import metrics, topics, web
from services.common.bus import Outgoing
from services.common.config import Settings, parse_type_limits
from services.common.hetu_protection import MASK, HetuProtector
from services.common.identifiers import IDENTIFIER_TYPES, InvalidIdentifier
from services.common.web import Problem, current_principal, require_roles, runtime
from services.identity import graph as graph_rules
from services.identity import privacy
from services.identity.channels import (
    SEGMENT_TYPES,
    CallEventSchema,
    Converted,
    SegmentMessageSchema,
    from_call,
    from_segment,
    protect_converted,
)
from services.identity.graph_store import MongoGraph
from services.identity.merges import log_message
from services.identity.suggestions import SuggestionStore

SERVICE = "identity"
MAX_MESSAGE_BYTES = 32 * 1024
MAX_BATCH_BYTES = 500 * 1024
UNMASKED_ROLES = {"supervisor", "dpo", "admin"}
UNATTRIBUTABLE = "no usable identifier: every one given was refused"

_segment_schema = SegmentMessageSchema()


def create_app(settings: Settings | None = None) -> Flask:
    app = web.create_app(service=SERVICE, settings=settings or Settings.from_env(),
                         blueprints=[_segment_blueprint(), _calls_blueprint(),
                                     _graph_blueprint()],
                         # the batch limit applies after gzip; this bounds the raw upload
                         max_body_bytes=MAX_BATCH_BYTES + 64 * 1024)
    rt = app.extensions["muisti"]
    # fail at start-up without the keys, not on the first hetu
    app.extensions["hetu_protector"] = HetuProtector.from_settings(rt.settings, rt.db, SERVICE)
    return app


def _hetus() -> HetuProtector:
    return current_app.extensions["hetu_protector"]


def _send(converted: list[Converted], channel: str) -> None:
    """Produce (what :func:`_attributable` let through) and wait for Kafka's acknowledgement:
    only then is the event accepted."""
    topic = topics.EVENTS_WEB if channel == "web" else topics.EVENTS_PHONE
    runtime().producer.send([Outgoing(topic, c.key, c.envelope) for c in converted])
    metrics.EVENTS_INGESTED.labels(SERVICE, channel).inc(len(converted))
    redacted = sum(c.cards_redacted for c in converted)
    if redacted:
        metrics.CARD_NUMBERS_REDACTED.labels(SERVICE).inc(redacted)


def _attributable(converted: Converted) -> Converted:
    """``converted`` as it may leave: no hetu in the clear (each replaced by its digest and a
    sealed trait), and at least one identifier the identity graph can resolve, or Problem
    422 naming why each one given was refused (the worker would only dead-letter it)."""
    converted = protect_converted(converted, _hetus())
    if not converted.envelope.identifiers:
        reasons: dict[str, list[str]] = {}
        for refused in converted.invalid_identifiers:
            reasons.setdefault(refused["type"], []).append(refused["reason"])
        raise Problem(422, "no usable identifier: the message cannot be attributed to anyone; "
                           "'errors' says why each identifier was refused",
                      errors={"identifiers": reasons})
    return converted


def _load_segment(message, kind: str | None, defaults: dict) -> dict:
    """Validate one Segment message; raises Problem 413/400 with the field errors."""
    if not isinstance(message, dict):
        raise Problem(400, "a message must be a JSON object")
    try:
        size = len(orjson.dumps(message))
    except orjson.JSONEncodeError:
        raise Problem(400, "the message is nested too deeply") from None
    if size > MAX_MESSAGE_BYTES:
        raise Problem(413, f"a message may be at most {MAX_MESSAGE_BYTES} bytes")
    data = {**defaults, **message}
    if kind:
        data["type"] = kind
    try:
        return _segment_schema.load(data)
    except ValidationError as exc:
        raise Problem(400, "the message is invalid; 'errors' names each field",
                      errors=exc.messages) from None


class AcceptedSchema(Schema):
    success = fields.Boolean()
    accepted = fields.Integer()
    rejected = fields.List(fields.Dict(), metadata={
        "description": "messages of a batch that were refused: index, messageId, status, errors"})


def _segment_blueprint() -> Blueprint:
    blueprint = Blueprint("segment", __name__, description=(
        "Segment-compatible HTTP Tracking API. Authenticate with the write key as the HTTP "
        "Basic user name (collector role). Bodies may be gzip-encoded."))

    def single(kind: str):
        @require_roles("collector")
        def endpoint():
            message = _load_segment(web.read_json_body(MAX_MESSAGE_BYTES), kind, {})
            _send([_attributable(from_segment(message, source=current_principal().name))],
                  "web")
            return {"success": True, "accepted": 1, "rejected": []}

        endpoint.__name__ = f"segment_{kind}"
        endpoint.__doc__ = f"Segment `{kind}` call → cdp.events.web (answered after Kafka acks)."
        blueprint.route(f"/v1/{kind}", methods=["POST"])(
            blueprint.doc(requestBody=_body_doc(f"A Segment {kind} message"))(
                blueprint.alt_response(422, description=UNATTRIBUTABLE)(
                    blueprint.response(200, AcceptedSchema)(endpoint))))

    for kind in SEGMENT_TYPES:
        single(kind)

    @blueprint.route("/v1/batch", methods=["POST"])
    @require_roles("collector")
    @blueprint.doc(requestBody=_body_doc("{batch: [messages], context?, integrations?, sentAt?}"))
    @blueprint.response(200, AcceptedSchema)
    @blueprint.alt_response(400, description="no message of the batch was valid")
    def segment_batch():
        """Segment batch: the valid messages are accepted, the others listed as rejected."""
        body = web.read_json_body(MAX_BATCH_BYTES)
        if not isinstance(body, dict) or not isinstance(body.get("batch"), list):
            raise Problem(400, "the body must be an object with a 'batch' list",
                          errors={"batch": ["required list of messages"]})
        defaults = {k: body[k] for k in ("context", "integrations", "sentAt") if k in body}
        converted, rejected = [], []
        for index, message in enumerate(body["batch"]):
            try:
                loaded = _load_segment(message, None, defaults)
                converted.append(_attributable(from_segment(loaded,
                                                            source=current_principal().name)))
            except Problem as problem:
                metrics.EVENTS_REJECTED.labels(SERVICE, "web", str(problem.status)).inc()
                rejected.append({"index": index, "status": problem.status,
                                 "messageId": message.get("messageId")
                                 if isinstance(message, dict) else None,
                                 "detail": problem.detail, "errors": problem.errors})
        if not converted and rejected:
            raise Problem(400, "no message of the batch was valid", errors={"batch": rejected})
        if converted:
            _send(converted, "web")
        return {"success": True, "accepted": len(converted), "rejected": rejected}

    return blueprint


def _body_doc(description: str) -> dict:
    return {"required": True, "description": description,
            "content": {"application/json": {"schema": {"type": "object"}}}}


def _calls_blueprint() -> Blueprint:
    blueprint = Blueprint("calls", __name__, description="Contact-centre telephony events")

    @blueprint.route("/v1/calls", methods=["POST"])
    @require_roles("collector")
    @blueprint.arguments(CallEventSchema)
    @blueprint.response(200, AcceptedSchema)
    @blueprint.alt_response(422, description="an invalid field (a time outside 2000-01-01 .. "
                            "a day after now included) or " + UNATTRIBUTABLE)
    def call_event(call):
        """A call offered, answered or ended → cdp.events.phone (answered after Kafka acks)."""
        try:
            converted = from_call(call, source=current_principal().name)
        except InvalidIdentifier as exc:
            raise Problem(422, f"the caller number cannot be attributed: {exc.reason}",
                          errors={"json": {exc.type: [exc.reason]}}) from None
        _send([_attributable(converted)], "phone")
        return {"success": True, "accepted": 1, "rejected": []}

    return blueprint


class ResolveQuerySchema(Schema):
    type = fields.String(required=True, validate=validate.OneOf(IDENTIFIER_TYPES))
    value = fields.String(required=True, validate=validate.Length(min=1, max=512))
    region = fields.String(load_default="FI", validate=validate.Length(equal=2))


class IdentifierSchema(Schema):
    type = fields.String(required=True, validate=validate.OneOf(IDENTIFIER_TYPES))
    value = fields.String(required=True, validate=validate.Length(min=1, max=512))


class SplitSchema(Schema):
    profile_id = fields.String(required=True, validate=validate.Length(min=1, max=64))
    identifiers = fields.List(fields.Nested(IdentifierSchema), required=True,
                              validate=validate.Length(min=1, max=100))
    reason = fields.String(required=True, validate=validate.Length(min=1, max=500))


class SuggestionQuerySchema(Schema):
    status = fields.String(load_default="open",
                           validate=validate.OneOf(("open", "accepted", "rejected")))
    limit = fields.Integer(load_default=50, validate=validate.Range(min=1, max=500))
    offset = fields.Integer(load_default=0, validate=validate.Range(min=0, max=1_000_000))


class ReleaseSchema(Schema):
    type = fields.String(required=True, validate=validate.OneOf(IDENTIFIER_TYPES))
    value = fields.String(required=True, validate=validate.Length(min=1, max=512))
    reason = fields.String(required=True, validate=validate.Length(min=1, max=500))


class SubjectSchema(Schema):
    profile_ids = fields.List(fields.String(validate=validate.Length(min=1, max=128)),
                              load_default=list, validate=validate.Length(max=100))
    identifiers = fields.List(fields.Nested(IdentifierSchema), load_default=list,
                              validate=validate.Length(max=100))


def _normalised(type_: str, value: str, region: str = "FI") -> graph_rules.Identifier:
    """The identifier as the graph keeps it (hetu_protection.matching_form)."""
    try:
        return graph_rules.Identifier(*_hetus().matching_form(type_, value, region))
    except InvalidIdentifier as exc:
        raise Problem(422, f"invalid {type_}: {exc.reason}",
                      errors={"value": [exc.reason]}) from None


def _link_view(link: graph_rules.Link, unmasked: bool) -> dict:
    value = link.identifier.value
    if link.identifier.type == "hetu" and not unmasked:
        # the graph holds only the keyed digest: useless to an agent, but a supervisor passes
        # it back to unmerge or release (the profile API shows the code to those who may)
        value = MASK
    return {"type": link.identifier.type, "value": value, "verified": link.verified,
            "source_message_id": link.source_message_id,
            "linked_at": link.linked_at.isoformat() if link.linked_at else None}


def _graph_blueprint() -> Blueprint:
    blueprint = Blueprint("identity", __name__, url_prefix="/v1/identity",
                          description="The identity graph: resolve, explain, split, release")

    @blueprint.route("/resolve")
    @require_roles("agent", "supervisor", "dpo")
    @blueprint.arguments(ResolveQuerySchema, location="query")
    @blueprint.response(200)
    @blueprint.alt_response(404, description="no profile has this identifier")
    def resolve_identifier(query):
        """The profile an identifier belongs to and every identifier linked to it. The value
        is normalised as on ingestion: `040 123 4567` and `+358401234567` are the same."""
        identifier = _normalised(query["type"], query["value"], query["region"].upper())
        graph = MongoGraph(runtime().db)
        link = graph.links([identifier]).get(identifier)
        if link is None:
            raise Problem(404, f"no profile has this {identifier.type}")
        profile_id = graph_rules.canonical(graph, link.profile_id)
        unmasked = bool(current_principal().roles & UNMASKED_ROLES)
        return {"profile_id": profile_id,
                "identifiers": [_link_view(li, unmasked) for li in graph.links_of(profile_id)]}

    @blueprint.route("/subject", methods=["POST"])
    @require_roles("dpo", "admin")
    @blueprint.arguments(SubjectSchema)
    @blueprint.response(200)
    def subject(body):
        """Everything the graph links to a data subject: the profiles the given profile ids
        and identifiers lead to (merged ones included) and every identifier they hold. The
        privacy service asks this before it fans a data-subject request out."""
        request = privacy.PrivacyRequest(
            "lookup", "access", tuple(body["profile_ids"]),
            tuple(_normalised(i["type"], i["value"]) for i in body["identifiers"]))
        graph = MongoGraph(runtime().db)
        found = privacy.expand_subject(graph, request, graph.merged_into)
        return {"profile_ids": sorted(found.profile_ids),
                "identifiers": privacy.identifier_view(found.identifiers)}

    @blueprint.route("/profiles/<string:profile_id>/log")
    @require_roles("supervisor", "dpo")
    @blueprint.response(200)
    def explain(profile_id):
        """Every merge, split and release that touched a profile: why it looks as it does."""
        entries = MongoGraph(runtime().db).log_entries(profile_id)
        return {"profile_id": profile_id, "entries": [_entry_view(e) for e in entries]}

    @blueprint.route("/unmerge", methods=["POST"])
    @require_roles("admin")
    @blueprint.arguments(SplitSchema)
    @blueprint.response(200)
    def unmerge(body):
        """Split identifiers off a profile into a new one; announced on cdp.identity.merges."""
        graph = MongoGraph(runtime().db)
        identifiers = [_normalised(i["type"], i["value"]) for i in body["identifiers"]]
        if graph.profile(body["profile_id"]) is None:
            raise Problem(404, f"no profile {body['profile_id']}")
        try:
            split = graph_rules.split(graph, body["profile_id"], identifiers,
                                      reason=body["reason"], at=datetime.now(UTC),
                                      actor=current_principal().key_id)
        except graph_rules.NotOnProfile as exc:
            raise Problem(409, str(exc)) from None
        _announce(graph, split.split_id)
        return {"profile_id": split.profile_id, "new_profile_id": split.new_profile_id,
                "identifiers": [{"type": i.type, "value": i.value} for i in split.identifiers]}

    @blueprint.route("/release", methods=["POST"])
    @require_roles("admin", "supervisor")
    @blueprint.arguments(ReleaseSchema)
    @blueprint.response(200)
    def release(body):
        """Release an identifier from its profile (a recycled phone number, a shared line).
        The profile and its history stay; the next event with the identifier starts anew."""
        graph = MongoGraph(runtime().db)
        identifier = _normalised(body["type"], body["value"])
        try:
            split = graph_rules.release(graph, identifier, reason=body["reason"],
                                        at=datetime.now(UTC), actor=current_principal().key_id)
        except graph_rules.NotOnProfile as exc:
            raise Problem(404, str(exc)) from None
        _announce(graph, split.split_id)
        return {"profile_id": split.profile_id, "released": {"type": identifier.type,
                                                             "value": identifier.value}}

    @blueprint.route("/suggestions/run", methods=["POST"])
    @require_roles("supervisor")
    @blueprint.response(200)
    def run_suggestions():
        """Score live profiles for probable duplicates and store new suggestions; with
        CDP_IDENTITY_AUTO_MERGE_THRESHOLD set, merge the pairs scoring at or above it."""
        settings, suggestions = runtime().settings, SuggestionStore(runtime().db)
        summary = suggestions.run(datetime.now(UTC),
                                  threshold_match=settings.identity_match_threshold,
                                  threshold_possible=settings.identity_possible_threshold)
        threshold = settings.identity_auto_merge_threshold
        if threshold:
            summary["auto_merged"] = summary["auto_merge_refused"] = 0
            for doc in suggestions.open_at_or_above(threshold):
                try:
                    _accept(suggestions, doc, actor=f"auto-merge (score >= {threshold})")
                    summary["auto_merged"] += 1
                except graph_rules.MergeRefused:
                    summary["auto_merge_refused"] += 1  # stays open for a person to judge
        return summary

    @blueprint.route("/suggestions")
    @require_roles("supervisor")
    @blueprint.arguments(SuggestionQuerySchema, location="query")
    @blueprint.response(200)
    def list_suggestions(query):
        """Suggested merges, best first, each with how much every field contributed."""
        docs = SuggestionStore(runtime().db).page(query["status"], query["limit"],
                                                  query["offset"])
        return {"suggestions": [_suggestion_view(doc) for doc in docs],
                "limit": query["limit"], "offset": query["offset"]}

    @blueprint.route("/suggestions/<string:suggestion_id>/accept", methods=["POST"])
    @require_roles("supervisor")
    @blueprint.response(200)
    def accept_suggestion(suggestion_id):
        """Merge the two profiles (merge protection still applies) and close the suggestion."""
        suggestions = SuggestionStore(runtime().db)
        doc = suggestions.get(suggestion_id)
        if doc is None:
            raise Problem(404, f"no suggestion {suggestion_id}")
        if doc["status"] != "open":
            raise Problem(409, f"the suggestion is already {doc['status']}")
        try:
            profile_id = _accept(suggestions, doc, actor=current_principal().key_id)
        except graph_rules.MergeRefused as exc:
            raise Problem(409, str(exc)) from None
        return {"id": suggestion_id, "status": "accepted", "profile_id": profile_id}

    @blueprint.route("/suggestions/<string:suggestion_id>/reject", methods=["POST"])
    @require_roles("supervisor")
    @blueprint.response(200)
    def reject_suggestion(suggestion_id):
        """Close the suggestion: the pair is not offered again."""
        suggestions = SuggestionStore(runtime().db)
        if suggestions.get(suggestion_id) is None:
            raise Problem(404, f"no suggestion {suggestion_id}")
        if not suggestions.decide(suggestion_id, "rejected", current_principal().key_id,
                                  datetime.now(UTC)):
            raise Problem(409, "the suggestion is not open")
        return {"id": suggestion_id, "status": "rejected"}

    return blueprint


def _accept(suggestions: SuggestionStore, doc: dict, actor: str) -> str:
    """Merge a suggested pair and close the suggestion; the surviving profile's id.
    Raises MergeRefused when merge protection forbids it."""
    graph = MongoGraph(runtime().db)
    limits = graph_rules.limits_from(parse_type_limits(runtime().settings.identity_limits))
    merge = graph_rules.merge_profiles(graph, doc["a"], doc["b"], limits=limits,
                                       decision_id=doc["_id"], at=datetime.now(UTC))
    if merge is not None:
        _announce(graph, merge.merge_id)
    suggestions.decide(doc["_id"], "accepted", actor, datetime.now(UTC))
    return merge.survivor if merge else graph_rules.canonical(graph, doc["a"])


def _announce(graph: MongoGraph, entry_id: str) -> None:
    """Put a stored change on cdp.identity.merges. If Kafka is away the caller gets 503 and
    the identity worker's relay announces it later (merges.UnannouncedChanges)."""
    runtime().producer.send([log_message(graph.entry(entry_id))])
    graph.mark_announced([entry_id])


def _suggestion_view(doc: dict) -> dict:
    return {"id": doc["_id"], "profiles": [doc["a"], doc["b"]], "score": doc["score"],
            "decision": doc["decision"], "status": doc["status"],
            "contributions": doc["contributions"]}


def _entry_view(entry: dict) -> dict:
    envelope = log_message(entry).value
    return {"id": entry["_id"], "event": envelope.type, **envelope.payload,
            "at": envelope.occurred_at.isoformat()}

