"""HTTP entry point of the profile service: profile lookups for contact-centre dashboards,
name search, the paged full history, and segment definitions with their members.

Every read is recorded for the access log (who, which profile, when, the purpose stated in the
``X-Purpose`` header) before it is answered: the entry is spooled on local disk, shipped to
Kafka within moments (services/common/spool.py) and stored by the worker (access_log.py).
Agents see sensitive identifiers masked; supervisors, dpo and admin see them whole. A profile
keeps a hetu only as its keyed digest and a sealed copy (services.common.hetu_protection): a
lookup by hetu compares digests, and a read opens the sealed copy for display (masked for
agents). Reads are purpose-bound (services/profile/privacy.py): a purpose that needs consent
gets personal data only as the profile's consents allow. A restricted profile answers 403 to
everyone but the data-protection officer.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from flask import Flask, current_app, request
from flask_smorest import Blueprint
from marshmallow import Schema, fields, validate

from services.common import retention, web
from services.common.config import Settings
from services.common.hetu_protection import HETU, HetuProtector
from services.common.hetu_protection import mask as mask_hetu
from services.common.identifiers import IDENTIFIER_TYPES, InvalidIdentifier
from services.common.identifiers import normalise as normalise_identifier
from services.common.spool import Spool, SpoolFull
from services.common.web import Problem, current_principal, require_roles, runtime
from services.profile import access_log, dashboard, privacy, projection, segments
from services.profile.history import HistoryStore
from services.profile.profile_store import NAME_PREFIX_MIN, ProfileStore, normalise_name
from services.profile.segments_store import SegmentExists, SegmentStore, SegmentVersionConflict

SERVICE = "profile"
READERS = ("agent", "supervisor", "dpo")
UNMASKED_ROLES = {"supervisor", "dpo", "admin"}
SEGMENT_WRITERS = ("supervisor",)  # and admin, as everywhere
DEFAULT_HISTORY_DAYS = 395
PURPOSES = ("customer_service", "marketing", "analytics", "fraud_prevention", "data_request",
            "unspecified")


def create_app(settings: Settings | None = None) -> Flask:
    app = web.create_app(service=SERVICE, settings=settings or Settings.from_env(),
                         blueprints=[_profiles_blueprint(), _segments_blueprint(),
                                     dashboard.api_blueprint()])
    dashboard.install(app)
    rt = app.extensions["muisti"]
    # fail at start-up without the keys, not on the first hetu lookup
    app.extensions["hetu_protector"] = HetuProtector.from_settings(rt.settings, rt.db, SERVICE)
    app.extensions["profile_store"] = ProfileStore(rt.db)
    policy = retention.parse_policy(rt.settings.retention_days)
    app.extensions["history"] = HistoryStore(rt.db, policy.get(
        "event_history", timedelta(days=DEFAULT_HISTORY_DAYS)))
    # a read is answered once its access-log entry is spooled; Kafka has it moments later
    spool = Spool(rt.settings.spool_directory(SERVICE),
                  lambda reads: rt.producer.send(access_log.bundled(reads)), name="access_log")
    rt.on_shutdown.append(spool.close)
    app.extensions["access_spool"] = spool
    app.extensions["purpose_consents"] = privacy.parse_purpose_consents(
        rt.settings.profile_purpose_consents)
    return app


def _profiles() -> ProfileStore:
    return current_app.extensions["profile_store"]


def _hetus() -> HetuProtector:
    return current_app.extensions["hetu_protector"]


def _show_hetus(view: dict, doc: dict, unmasked: bool) -> dict:
    """The view with the profile's hetu opened from its sealed trait: whole for the roles
    that may see it, masked for the others. A digest with no readable sealed copy (erased, or
    sealed for another code) shows as the digest, or masked."""
    sealed = (doc["traits"].get(HETU) or {}).get("value")
    code = _hetus().reveal(sealed) if sealed else None
    sealed_for = _hetus().sealed_key_id_of(sealed) if code else None
    shown = []
    for digest in doc["identifiers"].get(HETU, []):
        matches = code is not None and _hetus().sealed_key_id(digest) == sealed_for
        if unmasked:
            shown.append(code if matches else digest)
        else:
            shown.append(mask_hetu(code if matches else None))
    if shown:
        view["identifiers"][HETU] = shown
    if HETU in view["traits"]:
        view["traits"][HETU]["value"] = code if unmasked else mask_hetu(code)
    return view


# routes take schema instances: given a class, webargs builds a new schema for every request
class LookupQuerySchema(Schema):
    type = fields.String(required=True, validate=validate.OneOf(IDENTIFIER_TYPES),
                         metadata={"description": "identifier type, e.g. phone"})
    value = fields.String(required=True, validate=validate.Length(min=1, max=512))
    region = fields.String(load_default="FI", validate=validate.Length(equal=2))


class TimelineQuerySchema(Schema):
    channel = fields.String(load_default=None, validate=validate.Length(max=20))
    before = fields.AwareDateTime(load_default=None, default_timezone=UTC,
                                  metadata={"description": "only entries older than this"})
    cursor = fields.String(load_default=None, validate=validate.Length(max=200),
                           metadata={"description": "next_cursor of the previous page"})
    limit = fields.Integer(load_default=20, validate=validate.Range(min=1, max=200))


class SearchQuerySchema(Schema):
    name = fields.String(required=True, validate=validate.Length(min=NAME_PREFIX_MIN, max=100),
                         metadata={"description": "the start of a first name, last name or "
                                   "full name (either order); case and accents ignored"})
    limit = fields.Integer(load_default=20, validate=validate.Range(min=1, max=100))


class SegmentSchema(Schema):
    id = fields.String(required=True, validate=validate.Regexp(segments.SEGMENT_ID),
                       metadata={"description": "lower-case letters, digits, - and _"})
    name = fields.String(required=True, validate=validate.Length(min=1, max=200))
    description = fields.String(load_default="", validate=validate.Length(max=2000))
    rule = fields.Dict(required=True, metadata={"description": "the rule (see segments.py)"})


class SegmentUpdateSchema(Schema):
    name = fields.String(validate=validate.Length(min=1, max=200))
    description = fields.String(validate=validate.Length(max=2000))
    rule = fields.Dict()
    version = fields.Integer(load_default=None, metadata={
        "description": "the version read; a newer stored one answers 409"})


class MembersQuerySchema(Schema):
    after = fields.String(load_default=None, validate=validate.Length(max=200),
                          metadata={"description": "next_after of the previous page"})
    limit = fields.Integer(load_default=100, validate=validate.Range(min=1, max=1000))
    purpose = fields.String(load_default=None, validate=validate.Length(max=64), metadata={
        "description": "only members whose consents allow this consent purpose "
                       "(e.g. marketing_email), for campaign extraction"})


def _purpose() -> str:
    purpose = request.headers.get("X-Purpose", "unspecified")
    if purpose not in PURPOSES:
        raise Problem(400, f"X-Purpose must be one of {', '.join(PURPOSES)}")
    return purpose


def _read(doc: dict | None, what: str) -> dict:
    """The view of ``doc`` this caller may have for the stated purpose, the read logged.
    Raises Problem 404 (no profile) or 403 (processing restricted)."""
    if doc is None:
        raise Problem(404, f"no profile {what}")
    principal = current_principal()
    purpose = _purpose()
    reason = privacy.restriction_reason(doc, principal.roles)
    if reason:
        raise Problem(403, reason)
    store = _profiles()
    try:
        current_app.extensions["access_spool"].append([access_log.entry_message(
            profile_id=doc["_id"], key_id=principal.key_id, roles=sorted(principal.roles),
            purpose=purpose, endpoint=request.path, at=datetime.now(UTC))])
    except SpoolFull as exc:
        raise Problem(503, f"reads wait until the access log can record them again ({exc})",
                      headers={"Retry-After": "5"}) from None
    unmasked = bool(principal.roles & UNMASKED_ROLES)
    view = _show_hetus(projection.view(doc, unmasked=unmasked), doc, unmasked)
    needs = current_app.extensions["purpose_consents"]
    if purpose not in needs:
        return view
    states = store.consent_states(doc["_id"])
    denied = (_denied_identifier_values(store, doc)
              if privacy.uses_denied_values(purpose, needs, states) else None)
    return privacy.bound_view(view, purpose, needs, states, denied)


def _denied_identifier_values(store: ProfileStore, doc: dict) -> dict[str, set[str]]:
    """Per consent purpose, the profile's contact identifiers denied on their own (e.g. a
    number on a do-not-call list)."""
    denied: dict[str, set[str]] = {}
    for type_ in privacy.CONTACT_IDENTIFIERS.values():
        for value in doc["identifiers"].get(type_, []):
            for purpose, state in store.consent_states(f"id:{type_}:{value}").items():
                if not state.get("allowed"):
                    denied.setdefault(purpose, set()).add(value)
    return denied


def _history() -> HistoryStore:
    return current_app.extensions["history"]


def _cursor(query: dict) -> tuple[datetime, str] | None:
    if query["cursor"]:
        at, _, message_id = query["cursor"].rpartition("|")
        try:
            return datetime.fromisoformat(at), message_id
        except ValueError:
            raise Problem(400, "cursor is not one this API gave out",
                          errors={"cursor": ["unknown cursor"]}) from None
    if query["before"]:
        return query["before"], ""
    return None


def _entry(entry: dict) -> dict:
    return projection.plain(entry)


def _iso(moment: datetime) -> str:
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.isoformat()


def _profiles_blueprint() -> Blueprint:
    blueprint = Blueprint("profiles", __name__, url_prefix="/v1/profiles",
                          description="Profile lookups (every read is logged)")

    @blueprint.route("")
    @require_roles(*READERS)
    @blueprint.arguments(LookupQuerySchema(), location="query")
    @blueprint.response(200)
    @blueprint.alt_response(404, description="no profile has this identifier")
    def find_profile(query):
        """The profile holding an identifier, normalised as on ingestion: `040 123 4567`
        and `+358 40 123 4567` find the same person."""
        try:
            if query["type"] == HETU:
                value = _hetus().digest(query["value"])
            else:
                value = normalise_identifier(query["type"], query["value"],
                                             region=query["region"].upper())
        except InvalidIdentifier as exc:
            raise Problem(422, f"invalid {query['type']}: {exc.reason}",
                          errors={"value": [exc.reason]}) from None
        return _read(_profiles().find_by_identifier(query["type"], value),
                     f"with this {query['type']}")

    @blueprint.route("/search")
    @require_roles(*READERS)
    @blueprint.arguments(SearchQuerySchema(), location="query")
    @blueprint.response(200)
    def search(query):
        """Profiles whose name starts with ``name`` (first, last or full name in either
        order), for agents finding a caller. ``truncated`` means more people match than one
        answer lists: type more letters. Not for purposes that need consent (a name list
        cannot honour each person's consents)."""
        purpose = _purpose()
        if purpose in current_app.extensions["purpose_consents"]:
            raise Problem(403, f"name search is not available for the purpose {purpose}")
        if len(normalise_name(query["name"])) < NAME_PREFIX_MIN:
            raise Problem(422, f"name needs {NAME_PREFIX_MIN} letters or more",
                          errors={"name": ["too short once spaces and punctuation go"]})
        found, more = _profiles().search_names(query["name"], query["limit"])
        names = sorted(found.items(), key=lambda item: (item[1].casefold(), item[0]))
        return {"results": [{"profile_id": pid, "name": name} for pid, name in names],
                "truncated": more}

    @blueprint.route("/<string:profile_id>")
    @require_roles(*READERS)
    @blueprint.response(200)
    @blueprint.alt_response(404, description="no such profile")
    def get_profile(profile_id):
        """One profile; a profile merged into another answers with the one that absorbed it."""
        return _read(_profiles().load_current(profile_id), profile_id)

    @blueprint.route("/<string:profile_id>/timeline")
    @require_roles(*READERS)
    @blueprint.arguments(TimelineQuerySchema(), location="query")
    @blueprint.response(200)
    def timeline(query, profile_id):
        """The profile's cross-channel timeline from its full history, newest first, a page
        at a time: pass ``next_cursor`` back as ``cursor`` (or an entry's time as
        ``before``) for the next page; ``next_cursor`` is null on the last."""
        doc = _profiles().load_current(profile_id)
        view = _read(doc, profile_id)
        if "withheld" in view and "timeline" in view["withheld"]["fields"]:
            return {"profile_id": view["profile_id"], "entries": [], "next_cursor": None,
                    "withheld": view["withheld"]}
        entries, more = _history().page(
            doc["_id"], doc.get("history_months", []), datetime.now(UTC),
            before=_cursor(query), channel=query["channel"], limit=query["limit"],
            reach=projection.timeline_reach(doc, query["limit"] + 1))
        if not doc.get("history_months"):  # a profile stored before the history existed
            entries = [e for e in doc["timeline"]
                       if (query["channel"] is None or e["channel"] == query["channel"])
                       and (query["before"] is None or e["at"] < query["before"])]
            entries, more = entries[:query["limit"]], None
        return {"profile_id": view["profile_id"], "entries": [_entry(e) for e in entries],
                "next_cursor": f"{more[0].isoformat()}|{more[1]}" if more else None}

    @blueprint.route("/<string:profile_id>/access-log")
    @require_roles("dpo", "supervisor")
    @blueprint.response(200)
    def access_log(profile_id):
        """Who read this profile, when and for which purpose (newest first)."""
        entries = _profiles().accesses(profile_id, 200)
        return {"profile_id": profile_id,
                "entries": [{**e, "at": _iso(e["at"])} for e in entries]}

    return blueprint


def _segment_view(doc: dict) -> dict:
    return {"id": doc["_id"], "name": doc["name"], "description": doc.get("description", ""),
            "rule": doc["rule"], "version": doc["version"],
            "updated_at": _iso(doc["updated_at"]), "updated_by": doc.get("updated_by")}


def _valid_rule(rule: dict) -> dict:
    try:
        segments.validate(rule)
    except segments.InvalidRule as exc:
        raise Problem(422, f"invalid rule: {exc}", errors={"rule": {exc.path: [exc.reason]}}
                      ) from None
    return rule


def _segments_blueprint() -> Blueprint:
    blueprint = Blueprint("segments", __name__, url_prefix="/v1/segments",
                          description="Rule-based segments and their members")

    @blueprint.route("")
    @require_roles(*READERS)
    @blueprint.response(200)
    def list_segments():
        """Every segment definition."""
        docs = [d for d in SegmentStore(runtime().db).all() if not d.get("deleted")]
        return {"segments": [_segment_view(d) for d in docs]}

    @blueprint.route("", methods=["POST"])
    @require_roles(*SEGMENT_WRITERS)
    @blueprint.arguments(SegmentSchema)
    @blueprint.response(201)
    @blueprint.alt_response(409, description="a segment with this id exists")
    @blueprint.alt_response(422, description="the rule is invalid")
    def create_segment(body):
        """Define a segment. Membership is computed for every profile in the background and
        kept current on every profile change."""
        fields_ = {"name": body["name"], "description": body["description"],
                   "rule": _valid_rule(body["rule"])}
        try:
            doc = SegmentStore(runtime().db).create(
                body["id"], fields_, current_principal().key_id, datetime.now(UTC))
        except SegmentExists:
            raise Problem(409, f"segment {body['id']} exists; PUT changes it") from None
        return _segment_view(doc)

    @blueprint.route("/<string:segment_id>")
    @require_roles(*READERS)
    @blueprint.response(200)
    @blueprint.alt_response(404, description="no such segment")
    def get_segment(segment_id):
        """One segment definition and its member count."""
        store = SegmentStore(runtime().db)
        doc = store.get(segment_id)
        if doc is None:
            raise Problem(404, f"no segment {segment_id}")
        return {**_segment_view(doc), "members": store.count(segment_id)}

    @blueprint.route("/<string:segment_id>", methods=["PUT"])
    @require_roles(*SEGMENT_WRITERS)
    @blueprint.arguments(SegmentUpdateSchema)
    @blueprint.response(200)
    @blueprint.alt_response(404, description="no such segment")
    @blueprint.alt_response(409, description="changed since the version given")
    def update_segment(body, segment_id):
        """Change a segment; every profile's membership is recomputed in the background."""
        changes = {k: body[k] for k in ("name", "description") if k in body}
        if "rule" in body:
            changes["rule"] = _valid_rule(body["rule"])
        try:
            doc = SegmentStore(runtime().db).update(
                segment_id, changes, current_principal().key_id, datetime.now(UTC),
                expected_version=body.get("version"))
        except SegmentVersionConflict:
            raise Problem(409, f"segment {segment_id} changed meanwhile; read it again"
                          ) from None
        if doc is None:
            raise Problem(404, f"no segment {segment_id}")
        return _segment_view(doc)

    @blueprint.route("/<string:segment_id>", methods=["DELETE"])
    @require_roles(*SEGMENT_WRITERS)
    @blueprint.response(204)
    @blueprint.alt_response(404, description="no such segment")
    def delete_segment(segment_id):
        """Remove a segment; its members leave it in the background."""
        try:
            deleted = SegmentStore(runtime().db).delete(
                segment_id, current_principal().key_id, datetime.now(UTC))
        except SegmentVersionConflict:
            raise Problem(409, f"segment {segment_id} changed meanwhile; retry") from None
        if not deleted:
            raise Problem(404, f"no segment {segment_id}")
        return ""

    @blueprint.route("/<string:segment_id>/members")
    @require_roles(*READERS)
    @blueprint.arguments(MembersQuerySchema, location="query")
    @blueprint.response(200)
    @blueprint.alt_response(404, description="no such segment")
    def members(query, segment_id):
        """The segment's members in profile-id order, a page at a time (pass
        ``next_after`` back as ``after``), and how many there are. With ``purpose``, only
        members whose consents allow that consent purpose (campaign extraction)."""
        store = SegmentStore(runtime().db)
        if store.get(segment_id) is None:
            raise Problem(404, f"no segment {segment_id}")
        page = store.page(segment_id, query["after"], query["limit"])
        listed = page
        if query["purpose"]:
            profiles = _profiles()
            listed = [m for m in page if privacy.allowed(
                profiles.consent_states(m["profile_id"]), query["purpose"])]
        return {"segment_id": segment_id, "count": store.count(segment_id),
                "members": [{"profile_id": m["profile_id"], "since": _iso(m["since"])}
                            for m in listed],
                "next_after": page[-1]["profile_id"] if len(page) == query["limit"] else None}

    return blueprint
