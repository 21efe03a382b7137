"""The agent dashboard's HTTP side: the page and its static files at /dashboard, and the few
endpoints only the dashboard needs under /v1/dashboard (its profile reads use the ordinary,
masked and access-logged /v1/profiles API).

Authentication: the page asks for an API key (agent or supervisor), keeps it in the tab's
sessionStorage and sends it as ``X-API-Key`` with every fetch. No cookies are involved, so a
third-party page cannot make the browser send an authenticated request: there is no CSRF
surface. The live stream is the one request that cannot carry a header (EventSource); it is
opened with a short-lived signed token instead (stream_tokens.py). The page's strict
Content-Security-Policy allows only its own scripts and its own origin, and it writes data into
the page as text, never as HTML, since much of it comes from customers (tweets, notes).
"""

from __future__ import annotations

import functools
import logging
import secrets
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime

import flask
import pymongo.errors
from flask import Response, g, request
from flask_smorest import Blueprint
from marshmallow import Schema, ValidationError, fields, validate, validates_schema
from pymongo import ReturnDocument

from services.common.envelope import StrictSchema
from services.common.web import Problem, current_principal, require_roles, runtime
from services.profile.dashboard.consents import read_consents
from services.profile.dashboard.feed import LiveFeed
from services.profile.dashboard.live import (
    CLOSED,
    HubFull,
    Interest,
    Notice,
    StreamHub,
    heartbeat,
    server_sent_event,
)
from services.profile.dashboard.stream_tokens import InvalidStreamToken, StreamTokens

log = logging.getLogger(__name__)

DASHBOARD_ROLES = ("agent", "supervisor")
UNMASKED_ROLES = {"supervisor", "dpo", "admin"}
STREAM_TOKEN_SECONDS = 60.0
# a stream ends after this long and the page opens a new one with a fresh token, so a revoked
# key stops receiving notices within this time
STREAM_LIFETIME_SECONDS = 300.0
HEARTBEAT_SECONDS = 15.0
SECRETS = "dashboard_secrets"
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; "
    "connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; "
    "frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


@dataclass
class _Live:
    """The live-update machinery of one API process, started on the first stream."""

    hub: StreamHub
    feed: LiveFeed
    tokens: StreamTokens | None = None


def install(app: flask.Flask) -> None:
    """Serve the dashboard page and its files from ``app`` and prepare its live updates.
    (The API endpoints come with ``api_blueprint()``, registered like every blueprint.)"""
    settings = app.extensions["muisti"].settings
    hub = StreamHub(capacity=settings.dashboard_max_streams)
    app.extensions["muisti_dashboard"] = _Live(hub=hub, feed=LiveFeed(settings, hub))
    app.register_blueprint(_pages_blueprint())


def _live() -> _Live:
    return flask.current_app.extensions["muisti_dashboard"]


def _tokens() -> StreamTokens:
    live = _live()
    if live.tokens is None:
        live.tokens = StreamTokens(_stream_secret(), ttl_seconds=STREAM_TOKEN_SECONDS)
    return live.tokens


def _stream_secret() -> bytes:
    """The configured secret, or one made once and kept in the store, so that every API
    process (and a restarted one) verifies the tokens any of them issued."""
    rt = runtime()
    if rt.settings.dashboard_stream_secret:
        return rt.settings.dashboard_stream_secret.encode()
    collection = rt.db[SECRETS]
    try:
        doc = collection.find_one_and_update(
            {"_id": "stream-token"}, {"$setOnInsert": {"secret": secrets.token_hex(32)}},
            upsert=True, return_document=ReturnDocument.AFTER)
    except pymongo.errors.DuplicateKeyError:  # another process made it at the same moment
        doc = collection.find_one({"_id": "stream-token"})
    return doc["secret"].encode()


# --- the page -------------------------------------------------------------------------------


def _pages_blueprint() -> flask.Blueprint:
    pages = flask.Blueprint("dashboard_pages", __name__, static_folder="static",
                            static_url_path="/dashboard/static", template_folder="templates")

    @pages.route("/dashboard")
    def page():
        """The dashboard (no data in it: everything is fetched after sign-in)."""
        return flask.render_template("dashboard.html")

    @pages.after_request
    def protect(response: Response) -> Response:
        response.headers.update(SECURITY_HEADERS)
        return response

    return pages


# --- the API --------------------------------------------------------------------------------


class CallTargetFields(Schema):
    tab_id = fields.String(load_default=None, validate=validate.Length(min=1, max=64),
                           metadata={"description": "a random id the page makes per browser "
                                     "tab: a new stream of the same key and tab replaces the "
                                     "previous one at once"})
    agent_id = fields.String(load_default=None, validate=validate.Length(min=1, max=64))
    extension = fields.String(load_default=None, validate=validate.Length(min=1, max=64))
    queue = fields.String(load_default=None, validate=validate.Length(min=1, max=128))


class StreamTokenRequestSchema(CallTargetFields, StrictSchema):
    profile_id = fields.String(load_default=None, validate=validate.Length(min=1, max=128),
                               metadata={"description": "the profile whose changes to hear"})

    @validates_schema
    def _wants_something(self, data, **_):
        if not any(data.get(name) for name in ("profile_id", "agent_id", "extension", "queue")):
            raise ValidationError("give a profile_id, or an agent_id, extension or queue "
                                  "for screen pops", "_schema")


class StreamTokenSchema(StrictSchema):
    token = fields.String()
    expires_at = fields.String(metadata={"description": "ISO-8601"})
    stream_url = fields.String(metadata={"description": "open this with EventSource"})


class StreamQuerySchema(CallTargetFields):
    token = fields.String(load_default=None, metadata={
        "description": "a token from POST /v1/dashboard/stream-token (for EventSource); "
                       "without one, send an API key and say what to hear in the other fields"})
    profile_id = fields.String(load_default=None, validate=validate.Length(min=1, max=128))


class SessionSchema(StrictSchema):
    key_id = fields.String()
    name = fields.String()
    roles = fields.List(fields.String())
    unmasked = fields.Boolean(metadata={"description": "whether this key sees sensitive "
                                                       "identifiers whole"})


def _token_or_key(view):
    """Let a stream in with a valid stream token (``?token=``) or, like every endpoint, an
    API key holding one of the dashboard's roles."""
    keyed = require_roles(*DASHBOARD_ROLES)(view)

    @functools.wraps(view)
    def guarded(*args, **kwargs):
        token = request.args.get("token")
        if not token:
            return keyed(*args, **kwargs)
        try:
            g.stream_grant = _tokens().verify(token)
        except InvalidStreamToken as exc:
            raise Problem(401, exc.reason) from None
        return view(*args, **kwargs)

    guarded._muisti_roles = DASHBOARD_ROLES
    return guarded


def api_blueprint() -> Blueprint:
    blueprint = Blueprint("dashboard", __name__, url_prefix="/v1/dashboard",
                          description="What the agent dashboard needs beyond profile reads")

    @blueprint.route("/session")
    @require_roles(*DASHBOARD_ROLES)
    @blueprint.response(200, SessionSchema)
    def session():
        """Who the presented key is (the dashboard's sign-in check)."""
        principal = current_principal()
        return {"key_id": principal.key_id, "name": principal.name,
                "roles": sorted(principal.roles),
                "unmasked": bool(principal.roles & UNMASKED_ROLES)}

    @blueprint.route("/stream-token", methods=["POST"])
    @require_roles(*DASHBOARD_ROLES)
    @blueprint.arguments(StreamTokenRequestSchema)
    @blueprint.response(200, StreamTokenSchema)
    def stream_token(body):
        """A token, valid for 60 s, to open the live stream with EventSource. It names this
        key and exactly what the stream carries: the profile's change notices and the screen
        pops of calls for the agent id, extension or queue."""
        tab_id = body.pop("tab_id")
        interest = Interest(**body)
        token, expires_at = _tokens().issue(current_principal().key_id, interest, tab_id)
        return {"token": token,
                "expires_at": datetime.fromtimestamp(expires_at, UTC).isoformat(),
                "stream_url": flask.url_for("dashboard.stream", token=token)}

    @blueprint.route("/stream")
    @_token_or_key
    @blueprint.arguments(StreamQuerySchema, location="query")
    @blueprint.response(200, content_type="text/event-stream")
    @blueprint.alt_response(503, description="this process serves its most live streams")
    def stream(query):
        """Server-sent events: `ready` once nothing can be missed any more (reload the
        profile then), `profile-changed` {profile_id, kind, event_type, channel, merged_into},
        `screen-pop` {profile_id, type, call_id, agent_id, extension, queue}, `resync` (too
        many at once: reload), `reconnect` (lifetime reached: get a new token). Comments keep
        the connection alive. Notices carry no profile data."""
        grant = g.get("stream_grant")
        if grant is not None:
            interest, key_id, tab_id = grant.interest, grant.key_id, grant.tab_id
        else:
            interest = Interest(**{name: query[name] for name in
                                   ("profile_id", "agent_id", "extension", "queue")})
            key_id, tab_id = current_principal().key_id, query["tab_id"]
        if not interest.keys():
            raise Problem(422, "give a token, or a profile_id, agent_id, extension or queue")
        live = _live()
        live.feed.start()
        try:
            subscription = live.hub.subscribe(interest, (key_id, tab_id) if tab_id else None)
        except HubFull as exc:
            raise Problem(503, str(exc), headers={"Retry-After": "5"}) from None
        log.info("live stream opened", extra={"key_id": key_id, "active": live.hub.active})
        return Response(_events(live, subscription), mimetype="text/event-stream",
                        headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})

    @blueprint.route("/profiles/<string:profile_id>/consents")
    @require_roles(*DASHBOARD_ROLES)
    @blueprint.response(200)
    def consents(profile_id):
        """The profile's consents as the consent service states them, read with the caller's
        own key: `{available: true, consents: [{purpose, state, allowed, at}]}`, or
        `{available: false, detail}` when the consent service does not answer or refuses."""
        credentials = {name: request.headers[name] for name in ("Authorization", "X-API-Key")
                       if name in request.headers}
        return read_consents(runtime().settings.consent_url, profile_id, credentials)

    return blueprint


def _events(live: _Live, subscription):
    deadline = time.monotonic() + STREAM_LIFETIME_SECONDS
    try:
        yield b"retry: 3000\n\n"
        beat_at = time.monotonic() + HEARTBEAT_SECONDS
        while not live.feed.positioned.wait(1.0):  # Kafka not reached yet
            if subscription.closed:
                return
            if time.monotonic() > deadline:
                yield server_sent_event(Notice("reconnect", "", {"reason": "not ready"}))
                return
            if time.monotonic() > beat_at:
                beat_at = time.monotonic() + HEARTBEAT_SECONDS
                yield heartbeat()
        yield server_sent_event(Notice("ready", "", asdict(subscription.interest)))
        while (left := deadline - time.monotonic()) > 0:
            notice = subscription.next(timeout=min(HEARTBEAT_SECONDS, left))
            if notice is CLOSED:
                return
            yield server_sent_event(notice) if notice else heartbeat()
        yield server_sent_event(Notice("reconnect", "", {"reason": "stream lifetime reached"}))
    finally:
        live.hub.unsubscribe(subscription)
