"""HTTP entry point of the profile service: profile lookups for contact-centre dashboards.

Every read is written to the access log (who, which profile, when, the purpose stated in the
``X-Purpose`` header). Agents see sensitive identifiers masked; supervisors, dpo and admin
see them whole.
"""

from __future__ import annotations

from datetime import UTC, datetime

from flask import Flask, request
from flask_smorest import Blueprint
from marshmallow import Schema, fields, validate

from services.common import web
from services.common.config import Settings
from services.common.identifiers import IDENTIFIER_TYPES, SENSITIVE_TYPES, InvalidIdentifier
from services.common.identifiers import normalise as normalise_identifier
from services.common.web import Problem, current_principal, require_roles, runtime
from services.profile.profile_store import ProfileStore

SERVICE = "profile"
READERS = ("agent", "supervisor", "dpo")
UNMASKED_ROLES = {"supervisor", "dpo", "admin"}
PURPOSES = ("customer_service", "marketing", "analytics", "fraud_prevention", "data_request",
            "unspecified")


def create_app(settings: Settings | None = None) -> Flask:
    return web.create_app(service=SERVICE, settings=settings or Settings.from_env(),
                          blueprints=[_profiles_blueprint()])


class LookupQuerySchema(Schema):
    type = fields.String(required=True, validate=validate.OneOf(IDENTIFIER_TYPES),
                         metadata={"description": "identifier type, e.g. phone"})
    value = fields.String(required=True, validate=validate.Length(min=1, max=512))
    region = fields.String(load_default="FI", validate=validate.Length(equal=2))


class TimelineQuerySchema(Schema):
    channel = fields.String(load_default=None, validate=validate.Length(max=20))
    before = fields.AwareDateTime(load_default=None, default_timezone=UTC)
    limit = fields.Integer(load_default=20, validate=validate.Range(min=1, max=50))


def _purpose() -> str:
    purpose = request.headers.get("X-Purpose", "unspecified")
    if purpose not in PURPOSES:
        raise Problem(400, f"X-Purpose must be one of {', '.join(PURPOSES)}")
    return purpose


def _read(doc: dict | None, what: str) -> dict:
    if doc is None:
        raise Problem(404, f"no profile {what}")
    principal = current_principal()
    ProfileStore(runtime().db).log_access(
        profile_id=doc["_id"], key_id=principal.key_id, roles=sorted(principal.roles),
        purpose=_purpose(), endpoint=request.path, at=datetime.now(UTC))
    return _view(doc, unmasked=bool(principal.roles & UNMASKED_ROLES))


def _mask(type_: str, value: str) -> str:
    return value[:6] + "*****" if type_ == "hetu" else "*****"


def _view(doc: dict, unmasked: bool) -> dict:
    identifiers = {t: (values if unmasked or t not in SENSITIVE_TYPES
                       else [_mask(t, v) for v in values])
                   for t, values in doc["identifiers"].items()}
    traits = {}
    for name, trait in doc["traits"].items():
        value = trait["value"]
        if not unmasked and name in SENSITIVE_TYPES:
            value = _mask(name, str(value))
        traits[name] = {"value": value, "source": trait.get("source"),
                        "channel": trait["channel"], "at": _iso(trait["at"])}
    computed = {k: (_iso(v) if isinstance(v, datetime) else v)
                for k, v in doc["computed"].items() if k != "last_contact"}
    computed["last_contact"] = {c: _iso(at) for c, at in doc["computed"]["last_contact"].items()}
    return {"profile_id": doc["_id"], "identifiers": identifiers, "traits": traits,
            "computed": computed, "timeline": [_entry(e) for e in doc["timeline"][:10]],
            "merged_from": doc.get("absorbed", [])}


def _entry(entry: dict) -> dict:
    return {**entry, "at": _iso(entry["at"])}


def _iso(moment: datetime) -> str:
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.isoformat()


def _profiles_blueprint() -> Blueprint:
    blueprint = Blueprint("profiles", __name__, url_prefix="/v1/profiles",
                          description="Profile lookups (every read is logged)")

    @blueprint.route("")
    @require_roles(*READERS)
    @blueprint.arguments(LookupQuerySchema, location="query")
    @blueprint.response(200)
    @blueprint.alt_response(404, description="no profile has this identifier")
    def find_profile(query):
        """The profile holding an identifier, normalised as on ingestion: `040 123 4567`
        and `+358 40 123 4567` find the same person."""
        try:
            value = normalise_identifier(query["type"], query["value"],
                                         region=query["region"].upper())
        except InvalidIdentifier as exc:
            raise Problem(422, f"invalid {query['type']}: {exc.reason}",
                          errors={"value": [exc.reason]}) from None
        store = ProfileStore(runtime().db)
        return _read(store.find_by_identifier(query["type"], value), f"with this {query['type']}")

    @blueprint.route("/<string:profile_id>")
    @require_roles(*READERS)
    @blueprint.response(200)
    @blueprint.alt_response(404, description="no such profile")
    def get_profile(profile_id):
        """One profile; a profile merged into another answers with the one that absorbed it."""
        return _read(ProfileStore(runtime().db).load_current(profile_id), profile_id)

    @blueprint.route("/<string:profile_id>/timeline")
    @require_roles(*READERS)
    @blueprint.arguments(TimelineQuerySchema, location="query")
    @blueprint.response(200)
    def timeline(query, profile_id):
        """The profile's recent cross-channel timeline, newest first."""
        doc = ProfileStore(runtime().db).load_current(profile_id)
        view = _read(doc, profile_id)
        entries = [e for e in doc["timeline"]
                   if (query["channel"] is None or e["channel"] == query["channel"])
                   and (query["before"] is None or e["at"] < query["before"])]
        return {"profile_id": view["profile_id"],
                "entries": [_entry(e) for e in entries[:query["limit"]]]}

    @blueprint.route("/<string:profile_id>/access-log")
    @require_roles("dpo", "supervisor")
    @blueprint.response(200)
    def access_log(profile_id):
        """Who read this profile, when and for which purpose (newest first)."""
        entries = ProfileStore(runtime().db).accesses(profile_id, 200)
        return {"profile_id": profile_id,
                "entries": [{**e, "at": _iso(e["at"])} for e in entries]}

    return blueprint
