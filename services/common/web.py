"""The HTTP side every service shares: app factory, problem+json errors, API-key auth,
request ids, health, readiness and metrics.

A service builds its app with ``create_app`` and its own flask-smorest blueprints; views reach
shared resources through ``runtime()`` and protect themselves with ``@require_roles(...)``.
"""

from __future__ import annotations

import base64
import binascii
import functools
import logging
import threading
import time
import uuid
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import flask
import orjson
import pymongo.errors
from flask_smorest import Api, Blueprint
from kafka.errors import KafkaError
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pymongo.database import Database
from werkzeug.exceptions import HTTPException
from werkzeug.http import HTTP_STATUS_CODES

from services.common import logs, metrics, store
from services.common.auth import ApiKeys, Principal
from services.common.bus import Producer
from services.common.config import Settings

log = logging.getLogger(__name__)

PROBLEM_JSON = "application/problem+json"
# how long an API waits for Kafka's acknowledgement before answering 503
API_SEND_TIMEOUT_SECONDS = 10.0


class Problem(Exception):
    """Raise from a view to answer with an RFC 9457 problem document."""

    def __init__(self, status: int, detail: str, *, errors: dict | None = None,
                 headers: dict | None = None):
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.errors = errors
        self.headers = headers or {}

    def response(self) -> flask.Response:
        """The problem document (for an error handler of a blueprint's own)."""
        return _problem(self.status, self.detail, errors=self.errors, headers=self.headers)


@dataclass
class Runtime:
    """What a service's views share: settings, the store, the producer and the key registry.

    The producer connects on first use, so the API answers /healthz while Kafka is down.
    """

    service: str
    settings: Settings
    client: object
    db: Database
    api_keys: ApiKeys
    readiness: dict[str, Callable[[], None]] = field(default_factory=dict)
    # run when the serving process stops (runner.serve_http), e.g. to ship a spool
    on_shutdown: list[Callable[[], None]] = field(default_factory=list)
    _producer: Producer | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def shutdown(self) -> None:
        for callback in self.on_shutdown:
            try:
                callback()
            except Exception:  # noqa: BLE001 - the process stops anyway; the next one recovers
                log.exception("shutdown callback failed")

    @property
    def producer(self) -> Producer:
        with self._lock:
            if self._producer is None:
                # an HTTP caller gets 503 within this bound while the broker is away,
                # rather than waiting for a broker that may be away for minutes
                self._producer = Producer(self.settings, self.service,
                                          send_timeout=API_SEND_TIMEOUT_SECONDS)
            return self._producer


def runtime() -> Runtime:
    return flask.current_app.extensions["muisti"]


class _ProblemApi(Api):
    """flask-smorest's Api answering every HTTP error as problem+json."""

    def handle_http_exception(self, error: HTTPException):
        data = getattr(error, "data", None) or {}
        errors = data.get("errors") or data.get("messages")
        detail = data.get("message") or (
            "the request is invalid; 'errors' names each field and what is wrong" if errors
            else error.description)
        return _problem(error.code or 500, detail, errors=errors, headers=data.get("headers"))


def _problem(status: int, detail: str, *, errors=None, headers=None) -> flask.Response:
    body = {"type": "about:blank", "title": HTTP_STATUS_CODES.get(status, "Error"),
            "status": status, "detail": detail}
    if errors:
        body["errors"] = errors
    request_id = logs.request_id.get()
    if request_id:
        body["request_id"] = request_id
    response = flask.jsonify(body)
    response.status_code = status
    response.content_type = PROBLEM_JSON
    for name, value in (headers or {}).items():
        response.headers[name] = value
    return response


def create_app(
    *,
    service: str,
    settings: Settings,
    blueprints: Iterable[Blueprint] = (),
    max_body_bytes: int = 1024 * 1024,
    version: str = "0.1.0",
) -> flask.Flask:
    """Build a service's Flask app: shared routes and error handling plus ``blueprints``.

    Connects to nothing at build time; the store and broker are used on first request.
    """
    app = flask.Flask(f"muisti.{service}")
    app.config.update(
        API_TITLE=f"Muisti {service}",
        API_VERSION=version,
        OPENAPI_VERSION="3.0.3",
        OPENAPI_URL_PREFIX="/",
        OPENAPI_JSON_PATH="openapi.json",
        MAX_CONTENT_LENGTH=max_body_bytes,
        JSON_SORT_KEYS=False,
    )
    client = store.connect(settings)
    db = store.database(client, settings)
    rt = Runtime(service=service, settings=settings, client=client, db=db,
                 api_keys=ApiKeys(db, settings.auth_cache_seconds))
    rt.readiness["store"] = lambda: store.ping(client)
    rt.readiness["broker"] = lambda: _broker_ready(rt)
    app.extensions["muisti"] = rt

    api = _ProblemApi(app, spec_kwargs={"components": {"securitySchemes": {
        "apiKey": {"type": "http", "scheme": "bearer"},
        "writeKey": {"type": "http", "scheme": "basic"},
    }}})
    api.register_blueprint(_health_blueprint())
    from services.common.auth_api import auth_blueprint  # imports this module's helpers

    api.register_blueprint(auth_blueprint())
    for blueprint in blueprints:
        api.register_blueprint(blueprint)

    _install_request_hooks(app, service)
    _install_error_handlers(app)
    if settings.bootstrap_api_keys:
        _register_bootstrap_keys_when_store_answers(rt)
    return app


def _broker_ready(rt: Runtime) -> None:
    rt.producer.check_connected()


def _register_bootstrap_keys_when_store_answers(rt: Runtime) -> None:
    """In the background, so the API starts while the store is away; not ready until done,
    since a caller holding a bootstrap key would be refused 401 meanwhile."""
    registered = threading.Event()

    def register() -> None:
        for attempt in range(60):
            try:
                rt.api_keys.register_bootstrap_keys(rt.settings.bootstrap_api_keys)
                registered.set()
                return
            except pymongo.errors.ConnectionFailure:
                time.sleep(min(0.5 * (attempt + 1), 5))
        log.error("could not register bootstrap API keys: store unreachable")

    def check() -> None:
        if not registered.is_set():
            raise RuntimeError("the bootstrap API keys are not registered yet")

    rt.readiness["bootstrap_keys"] = check
    threading.Thread(target=register, name="bootstrap-keys", daemon=True).start()


def _health_blueprint() -> Blueprint:
    blueprint = Blueprint("health", __name__, description="Liveness, readiness and metrics")

    @blueprint.route("/healthz")
    @blueprint.response(200)
    def healthz():
        """Liveness: the process answers."""
        return {"status": "ok", "service": runtime().service}

    @blueprint.route("/readyz")
    @blueprint.response(200)
    @blueprint.alt_response(503, description="A dependency (store or broker) is unreachable")
    def readyz():
        """Readiness: the store and the broker both answer."""
        rt = runtime()
        checks, ready = {}, True
        for name, check in rt.readiness.items():
            try:
                check()
                checks[name] = "ok"
            except Exception as exc:  # noqa: BLE001 - any failure means not ready
                checks[name] = f"unavailable: {exc.__class__.__name__}"
                ready = False
        body = {"status": "ready" if ready else "unavailable", "checks": checks}
        return body, (200 if ready else 503)

    @blueprint.route("/metrics")
    @blueprint.response(200, content_type=CONTENT_TYPE_LATEST)
    def prometheus_metrics():
        """Prometheus metrics of this process."""
        return flask.Response(generate_latest(), content_type=CONTENT_TYPE_LATEST)

    return blueprint


def _install_request_hooks(app: flask.Flask, service: str) -> None:
    @app.before_request
    def start_request() -> None:
        flask.g.started = time.perf_counter()
        incoming = flask.request.headers.get("X-Request-ID", "")
        request_id = incoming if 0 < len(incoming) <= 128 else uuid.uuid4().hex
        flask.g.request_id_token = logs.request_id.set(request_id)

    @app.after_request
    def finish_request(response: flask.Response) -> flask.Response:
        endpoint = flask.request.url_rule.rule if flask.request.url_rule else "unmatched"
        elapsed = time.perf_counter() - flask.g.get("started", time.perf_counter())
        method = flask.request.method
        metrics.HTTP_REQUESTS.labels(service, method, endpoint, str(response.status_code)).inc()
        metrics.HTTP_LATENCY.labels(service, method, endpoint).observe(elapsed)
        response.headers["X-Request-ID"] = logs.request_id.get() or ""
        return response

    @app.teardown_request
    def forget_request(_exc) -> None:
        token = flask.g.pop("request_id_token", None)
        if token is not None:
            logs.request_id.reset(token)


def _install_error_handlers(app: flask.Flask) -> None:
    @app.errorhandler(Problem)
    def on_problem(error: Problem):
        return error.response()

    @app.errorhandler(pymongo.errors.ConnectionFailure)
    @app.errorhandler(KafkaError)
    @app.errorhandler(TimeoutError)  # e.g. a profile lock held too long by a worker
    def on_dependency_down(error: Exception):
        log.warning("dependency unavailable", extra={"error": repr(error)})
        return _problem(503, "a dependency (store or broker) is unavailable; retry shortly",
                        headers={"Retry-After": "2"})

    @app.errorhandler(Exception)
    def on_unexpected(error: Exception):
        if isinstance(error, HTTPException):
            return _problem(error.code or 500, error.description)
        log.exception("unhandled error")
        return _problem(500, "internal error; the request id identifies it in the logs")


# --- request bodies ------------------------------------------------------------------------


def read_json_body(max_bytes: int):
    """The request's JSON body, gunzipped when ``Content-Encoding: gzip`` (RudderStack's SDKs
    send that by default). ``max_bytes`` applies after decompression, so a small compressed
    body cannot expand without bound.

    Raises Problem: 413 over the limit, 415 for other encodings, 400 for bad gzip or JSON
    (including invalid UTF-8 and nesting deeper than the parser allows).
    """
    raw = flask.request.get_data(cache=False)
    encoding = flask.request.headers.get("Content-Encoding", "").strip().lower()
    if encoding == "gzip":
        inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
        try:
            data = inflater.decompress(raw, max_bytes + 1)
        except zlib.error:
            raise Problem(400, "the body is not valid gzip") from None
        if len(data) > max_bytes or inflater.unconsumed_tail:
            raise Problem(413, f"the decompressed body exceeds {max_bytes} bytes")
    elif encoding in ("", "identity"):
        data = raw
        if len(data) > max_bytes:
            raise Problem(413, f"the body exceeds {max_bytes} bytes")
    else:
        raise Problem(415, f"unsupported Content-Encoding {encoding!r}; use gzip or none")
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise Problem(400, f"the body is not valid JSON: {exc}") from None


# --- authentication ------------------------------------------------------------------------


def _presented_key() -> str | None:
    """The API key from ``Authorization: Bearer``, ``Basic`` (Segment's write key as user name)
    or ``X-API-Key``."""
    header = flask.request.headers.get("Authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() == "bearer" and value:
        return value.strip()
    if scheme.lower() == "basic" and value:
        try:
            user, _, _password = base64.b64decode(value.strip()).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return None
        return user or None
    return flask.request.headers.get("X-API-Key") or None


def current_principal() -> Principal:
    return flask.g.principal


def require_roles(*roles: str):
    """Allow the view only to keys holding one of ``roles`` (admin always): no or an unknown
    key answers 401, a key without the role 403."""

    def decorate(view):
        @functools.wraps(view)
        def guarded(*args, **kwargs):
            key = _presented_key()
            if not key:
                raise Problem(401, "an API key is required (Authorization: Bearer KEY)",
                              headers={"WWW-Authenticate": 'Bearer realm="muisti"'})
            principal = runtime().api_keys.authenticate(key)
            if principal is None:
                raise Problem(401, "the API key is unknown or revoked",
                              headers={"WWW-Authenticate": 'Bearer realm="muisti"'})
            if not principal.may(roles):
                raise Problem(403, f"this endpoint needs one of the roles: {', '.join(roles)}")
            flask.g.principal = principal
            return view(*args, **kwargs)

        guarded._muisti_roles = roles  # read by the authorisation-matrix tests and docs
        return guarded

    return decorate


def authenticated_by_platform(proof: str):
    """Mark a view that a platform (Meta, X) calls without a Muisti API key: the request proves
    itself with ``proof`` (a signature, a verify token, an unguessable code), which the view
    checks. An API key neither opens nor is needed for such a view; the authorization-matrix
    test holds it to answering an unproven call the same whatever key is presented."""

    def decorate(view):
        view._muisti_platform_proof = proof
        return view

    return decorate
