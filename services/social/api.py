"""HTTP entry point of the social service: Meta and X webhooks, the collector's post endpoint,
and platform-driven deletion (Meta's callback, X's user compliance events) with its status
page. Every delivery is answered only after Kafka acknowledged what it produced."""

from __future__ import annotations

import threading
from datetime import UTC, datetime

import flask
import orjson
from flask import Flask, current_app
from flask_smorest import Blueprint
from marshmallow import Schema, fields, validate

from services.common import metrics, web
from services.common.config import Settings
from services.common.event_times import EventTime
from services.common.hetu_protection import HetuProtector
from services.common.identifiers import IDENTIFIER_TYPES
from services.common.web import (
    Problem,
    authenticated_by_platform,
    current_principal,
    require_roles,
    runtime,
)
from services.social import messages, privacy, replays, signatures
from services.social.classify import detect_language
from services.social.classify import model as classify_model
from services.social.filing import FilingFailed, PrivacyFiler
from services.social.publish import SERVICE, publish
from services.social.social_store import DeletionStatuses
from services.social.worker import page_scoped_erasures

MAX_DELIVERY_BYTES = 1024 * 1024
PRODUCED = (f"produced to cdp.events.social, but for events more than "
            f"{replays.OLDEST_AGE.days} days old: refused as possible replays (too_old)")
MAX_COMPLIANCE_EVENTS = 1000


def create_app(settings: Settings | None = None) -> Flask:
    threading.Thread(target=detect_language.load, name="load-language-model",
                     daemon=True).start()
    threading.Thread(target=classify_model.load, name="train-classifier", daemon=True).start()
    app = web.create_app(service=SERVICE, settings=settings or Settings.from_env(),
                         blueprints=[_meta_blueprint(), _x_blueprint(), _posts_blueprint(),
                                     _deletions_blueprint()],
                         max_body_bytes=MAX_DELIVERY_BYTES)
    rt = app.extensions["muisti"]
    # not ready until the classifier is trained, so no delivery waits for it (the platforms
    # retry slow webhooks)
    rt.readiness["classifier"] = _classifier_trained
    # a collector may give an author's hetu; fail at start-up without the keys, not on the first
    app.extensions["hetu_protector"] = HetuProtector.from_settings(rt.settings, rt.db, SERVICE)
    return app


def _classifier_trained() -> None:
    if not classify_model.trained:
        raise RuntimeError("the complaint classifier is still training")


def _verified_body(verify, secret: str, header: str) -> bytes:
    """The raw body once its signature header checks out: 401 without one, 403 when wrong."""
    body = flask.request.get_data(cache=True)
    try:
        verify(secret, body, flask.request.headers.get(header))
    except signatures.MissingSignature as exc:
        metrics.EVENTS_REJECTED.labels(SERVICE, "social", "unsigned").inc()
        raise Problem(401, f"{exc}; only the platform may deliver here") from None
    except signatures.InvalidSignature as exc:
        metrics.EVENTS_REJECTED.labels(SERVICE, "social", "bad_signature").inc()
        raise Problem(403, str(exc)) from None
    return body


def _json(body: bytes):
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise Problem(400, f"the body is not valid JSON: {exc}") from None


def _publish(normalise, delivery) -> dict:
    """A signed delivery's events produced, but for those too old to tell from a replay
    (services.social.replays): refused, counted, and still answered 200. The platforms retry
    any other answer, and not that event alone but the whole delivery, fresh events
    included, until they give up on the endpoint; what they sent legitimately that late
    could not be taken in anyway."""
    try:
        normalised = normalise(delivery)
    except messages.UnreadablePayload as exc:
        metrics.EVENTS_REJECTED.labels(SERVICE, "social", "malformed").inc()
        raise Problem(400, str(exc)) from None
    normalised, too_old = replays.without_replays(normalised, datetime.now(UTC))
    if too_old:
        metrics.EVENTS_REJECTED.labels(SERVICE, "social", "too_old").inc(too_old)
    produced = publish(runtime().producer, normalised, source="webhook")
    # Instagram mentions carry ids only: the worker fetches their text after this answer
    return {"received": True, "produced": produced, "skipped": len(normalised.skipped),
            "fetching": len(normalised.to_fetch), "too_old": too_old}


def _text(body: str, status: int = 200) -> flask.Response:
    return flask.Response(body, status=status, content_type="text/plain; charset=utf-8")


def _meta_blueprint() -> Blueprint:
    blueprint = Blueprint("meta", __name__, url_prefix="/v1/social/meta",
                          description="Meta webhooks (Facebook pages, Messenger, Instagram) and "
                                      "the data-deletion callback")

    @blueprint.route("/webhook", methods=["GET"])
    @authenticated_by_platform("hub.verify_token")
    @blueprint.doc(responses={200: {"description": "hub.challenge, as plain text"},
                              403: {"description": "wrong or missing verify token"}})
    def meta_handshake():
        """Meta's subscription handshake: echo hub.challenge when hub.verify_token matches."""
        args = flask.request.args
        if not signatures.verify_meta_challenge(runtime().settings.social_meta_verify_token,
                                                args.get("hub.mode"),
                                                args.get("hub.verify_token")):
            raise Problem(403, "hub.verify_token does not match the configured token")
        return _text(args.get("hub.challenge", ""))

    @blueprint.route("/webhook", methods=["POST"])
    @authenticated_by_platform("X-Hub-Signature-256")
    @blueprint.doc(responses={200: {"description": PRODUCED},
                              400: {"description": "not a Meta delivery"},
                              401: {"description": "no signature"},
                              403: {"description": "the signature does not match"}})
    def meta_delivery():
        """A Meta webhook delivery (page feed and mentions, Messenger, Instagram comments and
        mentions), verified against X-Hub-Signature-256 and produced to cdp.events.social
        (Instagram mentions, which carry only ids, to cdp.social.mentions: the worker fetches
        their text from the Graph API and produces the event)."""
        body = _verified_body(signatures.verify_meta_signature,
                              runtime().settings.social_meta_app_secret, "X-Hub-Signature-256")
        return _publish(messages.from_meta, _json(body))

    @blueprint.route("/data-deletion", methods=["POST"])
    @authenticated_by_platform("signed_request")
    @blueprint.doc(responses={200: {"description": "{url, confirmation_code}"},
                              400: {"description": "no usable signed_request"},
                              403: {"description": "the signed_request signature is wrong"}})
    def meta_data_deletion():
        """Meta's data-deletion request callback: a person removed the app and asked for their
        data to be deleted. Files an erasure of its app-scoped id (503 when the privacy service
        does not accept it) and of each page-scoped id it resolves to (left to the worker when
        that fails)."""
        secret = runtime().settings.social_meta_app_secret
        try:
            payload = signatures.parse_signed_request(
                secret, flask.request.form.get("signed_request"))
            request = privacy.from_meta_signed_request(payload, secret)
        except signatures.MissingSignature as exc:
            raise Problem(400, str(exc)) from None
        except signatures.InvalidSignature as exc:
            raise Problem(403, str(exc)) from None
        except privacy.InvalidDeletion as exc:
            raise Problem(400, str(exc)) from None
        _request_erasure([request])
        _erase_page_scoped_ids(request)
        return {"url": _status_url(request.confirmation_code),
                "confirmation_code": request.confirmation_code}

    return blueprint


def _request_erasure(deletions: list[privacy.DeletionRequest]) -> None:
    """File each erasure with the privacy service; if it is unreachable the platform gets 503
    and retries (the request id is derived from its notice, so a retry files nothing new)."""
    settings = runtime().settings
    filer = PrivacyFiler(settings.consent_url, settings.service_api_key,
                         DeletionStatuses(runtime().db))
    for deletion in deletions:
        try:
            filer.file(deletion)
        except FilingFailed as exc:
            raise Problem(503, str(exc)) from None


def _erase_page_scoped_ids(request: privacy.DeletionRequest) -> None:
    """Resolve the callback's app-scoped id to the page-scoped ids page webhooks use and file
    an erasure for each, counted on the callback's status page (meta_ids.py says why). After
    the app-scoped erasure is filed; what fails here is left pending for the worker, never
    answered 503, since Meta is not known to retry the callback (page_scoped.py)."""
    settings = runtime().settings
    if not (settings.social_meta_graph_url and settings.social_meta_app_id):
        return
    page_scoped_erasures(settings, runtime().db).erase_or_defer(request)


def _status_url(code: str) -> str:
    base = runtime().settings.social_public_url or flask.request.host_url
    return f"{base.rstrip('/')}/v1/social/deletions/{code}"


def _x_blueprint() -> Blueprint:
    blueprint = Blueprint("x", __name__, url_prefix="/v1/social/x",
                          description="X Account Activity webhooks and user compliance events")

    @blueprint.route("/webhook", methods=["GET"])
    @authenticated_by_platform("crc_token (answered with an HMAC only X can check)")
    @blueprint.doc(responses={200: {"description": "{response_token}"},
                              400: {"description": "no crc_token, or not one of X's"},
                              403: {"description": "no consumer secret is configured"}})
    def x_crc():
        """X's challenge-response check: response_token = sha256= + base64 HMAC-SHA256 of
        crc_token with the consumer secret."""
        try:
            token = signatures.crc_response_token(runtime().settings.social_x_consumer_secret,
                                                  flask.request.args.get("crc_token", ""))
        except signatures.MissingSignature as exc:
            # without the secret nothing can be proven to X: refused like a bad proof
            raise Problem(403, str(exc)) from None
        except ValueError as exc:
            raise Problem(400, str(exc)) from None
        return {"response_token": token}

    @blueprint.route("/webhook", methods=["POST"])
    @authenticated_by_platform("x-twitter-webhooks-signature")
    @blueprint.doc(responses={200: {"description": PRODUCED},
                              400: {"description": "not an Account Activity delivery"},
                              401: {"description": "no signature"},
                              403: {"description": "the signature does not match"}})
    def x_delivery():
        """An Account Activity delivery (tweet_create_events, direct_message_events), verified
        against x-twitter-webhooks-signature and produced to cdp.events.social."""
        body = _verified_body(signatures.verify_x_signature,
                              runtime().settings.social_x_consumer_secret,
                              "x-twitter-webhooks-signature")
        return _publish(messages.from_x_activity, _json(body))

    @blueprint.route("/compliance", methods=["POST"])
    @require_roles("collector")
    @blueprint.doc(requestBody={"required": True, "description":
                                "One X user compliance stream event or a list of them",
                                "content": {"application/json": {"schema": {}}}})
    @blueprint.response(200)
    @blueprint.alt_response(400, description="an item is not a user compliance event")
    @blueprint.alt_response(422, description="no X consumer secret is configured")
    def x_compliance():
        """X user compliance events read from the stream by a collector: user_delete,
        user_protect and user_suspend raise an erasure request for that X account; the others
        are acknowledged and ignored."""
        body = web.read_json_body(MAX_DELIVERY_BYTES)
        events = body if isinstance(body, list) else [body]
        if len(events) > MAX_COMPLIANCE_EVENTS:
            raise Problem(413, f"at most {MAX_COMPLIANCE_EVENTS} events per request")
        secret = runtime().settings.social_x_consumer_secret  # keys the confirmation codes
        if not secret:
            raise Problem(422, "this deployment has no X consumer secret to key confirmation "
                               "codes with (CDP_SOCIAL_X_CONSUMER_SECRET)")
        requests, errors = [], {}
        for index, event in enumerate(events):
            try:
                request = privacy.from_x_compliance_event(event, secret)
            except privacy.InvalidDeletion as exc:
                errors[str(index)] = [str(exc)]
                continue
            if request is not None:
                requests.append(request)
        if errors:
            raise Problem(400, "some events are not user compliance events", errors=errors)
        _request_erasure(requests)
        return {"erasure_requests": [r.request_id for r in requests],
                "ignored": len(events) - len(requests)}

    return blueprint


class AuthorSchema(Schema):
    id = fields.String(load_default=None, validate=validate.Length(min=1, max=256))
    handle = fields.String(load_default=None, validate=validate.Length(min=1, max=256))
    name = fields.String(load_default=None, validate=validate.Length(max=512))


class SocialPostSchema(Schema):
    """A post or message from a network without a webhook here, or from a scraper."""

    platform = fields.String(required=True, validate=validate.Regexp(
        r"^[a-z][a-z0-9_-]{0,31}$", error="lower-case letters, digits, - or _ (max 32)"))
    message_id = fields.String(required=True, validate=validate.Length(min=1, max=256),
                               metadata={"description": "the platform's own id of the post"})
    kind = fields.String(required=True, validate=validate.OneOf(messages.KINDS))
    author = fields.Nested(AuthorSchema, required=True)
    text = fields.String(load_default="", validate=validate.Length(max=20_000))
    created_at = EventTime(load_default=None, allow_none=True, default_timezone=None)
    in_reply_to = fields.String(load_default=None, allow_none=True)
    conversation_id = fields.String(load_default=None, allow_none=True)
    urls = fields.List(fields.Url(), load_default=list, validate=validate.Length(max=50))
    mentions = fields.List(fields.String(), load_default=list, validate=validate.Length(max=50))
    media = fields.List(fields.Url(), load_default=list, validate=validate.Length(max=50))
    language = fields.String(load_default=None, allow_none=True)
    account_id = fields.String(load_default=None, allow_none=True)
    identifiers = fields.Dict(keys=fields.String(validate=validate.OneOf(IDENTIFIER_TYPES)),
                              values=fields.String(validate=validate.Length(min=1, max=512)),
                              load_default=dict, metadata={"description":
                              "identifiers of the author known to the collector; a hetu (or a "
                              "user_id that is one) travels as its keyed digest and a sealed "
                              "trait, never in the clear"})


def _posts_blueprint() -> Blueprint:
    blueprint = Blueprint("social-posts", __name__, url_prefix="/v1/social",
                          description="Posts from other networks and scrapers")

    @blueprint.route("/posts", methods=["POST"])
    @require_roles("collector")
    @blueprint.arguments(SocialPostSchema)
    @blueprint.response(200)
    @blueprint.alt_response(422, description="an invalid field (created_at outside "
                            "2000-01-01 .. a day after now included), or no valid identifier "
                            "of the author")
    def post_social(post):
        """One social post in Muisti's own form → cdp.events.social (answered after Kafka
        acks). The author's id and handle become identifiers for x, facebook and instagram;
        other networks must send ``identifiers``."""
        message = messages.from_collector(post, current_app.extensions["hetu_protector"])
        if not messages.author_identifiers(message):
            raise Problem(422, "no valid identifier of the author: send author.id for x, "
                               "facebook or instagram, or identifiers",
                          errors={"json": {"identifiers": ["nothing to attribute the post to"]}})
        normalised = messages.Normalised(messages=[message])
        produced = publish(runtime().producer, normalised, source=current_principal().name)
        return {"accepted": produced,
                "message_id": messages.message_id_for(message.platform, message.platform_id)}

    return blueprint


def _deletions_blueprint() -> Blueprint:
    blueprint = Blueprint("deletions", __name__, url_prefix="/v1/social/deletions",
                          description="Status of platform-driven deletion requests")

    @blueprint.route("/<string:confirmation_code>")
    @authenticated_by_platform("the confirmation code (unguessable, given only to the person)")
    @blueprint.response(200)
    @blueprint.alt_response(404, description="no deletion request has this code")
    def deletion_status(confirmation_code):
        """Where a platform-driven deletion stands: in_progress until every service erased
        (and, for Meta, while its page-scoped ids are still being resolved), then done; or
        incomplete when the Graph API refused to resolve them for a week
        (``page_scoped_ids``: pending, unresolved or null). The page Meta links the person
        to."""
        doc = DeletionStatuses(runtime().db).get(confirmation_code)
        if doc is None:
            raise Problem(404, "no deletion request has this confirmation code")
        return {"confirmation_code": confirmation_code, "status": doc["status"],
                "platform": doc["platform"],
                "requested_at": _iso(doc.get("requested_at")),
                "completed_at": _iso(doc.get("completed_at")),
                "services_done": sorted(doc.get("services_done") or []),
                "page_scoped_erasures": doc["parts"],
                "page_scoped_ids": doc["page_scoped_ids"]}

    return blueprint


def _iso(moment) -> str | None:
    return moment.isoformat() if moment else None
