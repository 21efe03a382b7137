"""HTTP endpoints for API keys, mounted by every service (they share one key registry)."""

from __future__ import annotations

from flask_smorest import Blueprint
from marshmallow import fields, validate

from services.common.auth import ROLES
from services.common.envelope import StrictSchema
from services.common.web import Problem, current_principal, require_roles, runtime


class PrincipalSchema(StrictSchema):
    key_id = fields.String()
    name = fields.String()
    roles = fields.List(fields.String())
    partner_id = fields.String(allow_none=True)


class NewKeySchema(StrictSchema):
    name = fields.String(required=True, validate=validate.Length(min=1, max=200))
    roles = fields.List(fields.String(validate=validate.OneOf(ROLES)), required=True,
                        validate=validate.Length(min=1))
    partner_id = fields.String(load_default=None, validate=validate.Length(min=1, max=100))


class CreatedKeySchema(StrictSchema):
    key_id = fields.String()
    key = fields.String(metadata={"description": "shown only in this response"})


def auth_blueprint() -> Blueprint:
    blueprint = Blueprint("auth", __name__, url_prefix="/v1/auth", description="API keys")

    @blueprint.route("/whoami")
    @require_roles(*ROLES)
    @blueprint.response(200, PrincipalSchema)
    def whoami():
        """The key's identity and roles."""
        principal = current_principal()
        return {"key_id": principal.key_id, "name": principal.name,
                "roles": sorted(principal.roles), "partner_id": principal.partner_id}

    @blueprint.route("/keys", methods=["POST"])
    @require_roles("admin")
    @blueprint.arguments(NewKeySchema)
    @blueprint.response(201, CreatedKeySchema)
    def create_key(body):
        """Create an API key (admin). The key is returned once and stored only hashed."""
        if "partner" in body["roles"] and not body["partner_id"]:
            raise Problem(422, "a partner key needs partner_id",
                          errors={"partner_id": ["required for the partner role"]})
        key_id, key = runtime().api_keys.create(body["name"], body["roles"],
                                                partner_id=body["partner_id"])
        return {"key_id": key_id, "key": key}

    @blueprint.route("/keys/<string:key_id>", methods=["DELETE"])
    @require_roles("admin")
    @blueprint.response(204)
    def revoke_key(key_id):
        """Revoke an API key (admin); takes effect within CDP_AUTH_CACHE_SECONDS."""
        if not runtime().api_keys.revoke(key_id):
            raise Problem(404, f"no active key {key_id}")

    return blueprint
