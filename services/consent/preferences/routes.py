"""The preference centre's HTTP side (``/preferences``): server-rendered pages and plain HTML
forms, no JavaScript needed. A thin adapter: codes, sessions, limits and senders are the
modules beside it; every consent decision and data-subject request goes through the consent
service's own code paths (``recording.record_decision`` as POST /v1/consents and /v1/objections,
the privacy flow as POST /v1/privacy/requests), acting as the customer's session
(``customer-session:<hash prefix>``), so the ledger, receipts, audit trail and Kafka fan-out
are the same as for an agent or the dpo.

Protection: every POST needs the session cookie and the session's CSRF token (else 403); the
pages send a strict Content-Security-Policy and Jinja escapes everything shown back. The
routes are marked ``authenticated_by_platform`` (an API key neither opens nor is needed for
them: the customer's session is the proof); the page itself and its static files are public.
"""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import flask
import orjson
from werkzeug.wrappers import Response

from services.common.auth import Principal
from services.common.identifiers import InvalidIdentifier, normalise
from services.common.shredding import identifier_digest
from services.common.web import Problem, authenticated_by_platform, runtime
from services.consent import consents_api
from services.consent.catalogue import Catalogue
from services.consent.preferences import store
from services.consent.preferences.codes import CodeRefused, OneTimeCodes
from services.consent.preferences.directory import Directory, ServiceUnavailable
from services.consent.preferences.limits import CodeLimits
from services.consent.preferences.senders import CodeMessage, Sender, SendFailed, build_sender
from services.consent.preferences.sessions import COOKIE, Session, SessionManager, csrf_ok
from services.consent.preferences.texts import (
    LANGUAGE_NAMES,
    LANGUAGES,
    choose_language,
    translator,
)
from services.consent.privacy import (
    InvalidPrivacyRequest,
    PrivacyRequest,
    access_export,
)
from services.consent.privacy_flow import PrivacyFlow
from services.consent.recording import record_decision

log = logging.getLogger(__name__)

LANGUAGE_COOKIE = "muisti_lang"
PATH = "/preferences"
PROOF = "the customer's preference-centre session and its CSRF token"
MAX_FIELD_VALUE = 500
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; style-src 'self'; img-src 'self'; "
    "form-action 'self'; base-uri 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-store",
}
EXTENSION = "muisti_preferences"


@dataclass
class Centre:
    """What the preference centre's views share in one process."""

    sessions: SessionManager
    codes: OneTimeCodes
    limits: CodeLimits
    counters: store.MongoCounters
    directory: Directory
    sender: Sender
    sending: ThreadPoolExecutor
    code_minutes: int
    secure_cookies: bool


def install(app: flask.Flask) -> None:
    """Serve the preference centre from ``app`` (after the consent and privacy installs)."""
    rt = app.extensions["muisti"]
    settings, db = rt.settings, rt.db
    app.extensions[EXTENSION] = Centre(
        sessions=SessionManager(store.MongoSessions(db),
                                timedelta(seconds=settings.preferences_session_seconds)),
        codes=OneTimeCodes(store.MongoChallenges(db), app.extensions["consent_digest_key"],
                           lifetime=timedelta(seconds=settings.preferences_code_seconds),
                           max_attempts=settings.preferences_code_attempts),
        limits=CodeLimits(settings.preferences_codes_per_identifier,
                          settings.preferences_codes_per_ip),
        counters=store.MongoCounters(db),
        directory=Directory(settings.identity_url, settings.profile_url,
                            settings.service_api_key, export_url=settings.export_url),
        sender=build_sender(settings),
        sending=ThreadPoolExecutor(max_workers=2, thread_name_prefix="code-sender"),
        code_minutes=max(1, settings.preferences_code_seconds // 60),
        secure_cookies=settings.preferences_secure_cookies)
    app.register_blueprint(_blueprint())


def _centre() -> Centre:
    return flask.current_app.extensions[EXTENSION]


def _now() -> datetime:
    return datetime.now(UTC)


def _language() -> str:
    return choose_language(flask.request.cookies.get(LANGUAGE_COOKIE),
                           flask.request.headers.get("Accept-Language"))


def _render(template: str, session: Session, status: int = 200, **context) -> Response:
    language = _language()
    body = flask.render_template(
        template, t=translator(language), lang=language, languages=LANGUAGES,
        language_names=LANGUAGE_NAMES, session=session, **context)
    return Response(body, status=status, mimetype="text/html")


def _set_session_cookie(response: Response, cookie: str) -> Response:
    centre = _centre()
    response.set_cookie(COOKIE, cookie, max_age=int(centre.sessions.lifetime.total_seconds()),
                        path=PATH, httponly=True, samesite="Lax", secure=centre.secure_cookies)
    return response


def _back(session: Session | None = None, notice: tuple[str, dict] | None = None,
          **pending: str) -> Response:
    """Back to the page (post/redirect/get), remembering filed requests and a notice to show."""
    if session is not None and (notice or pending):
        if notice:
            pending["notice"] = [notice[0], notice[1]]
        _centre().sessions.update(session, pending={**session.pending, **pending})
    return flask.redirect(PATH, code=303)


def _posted(*, signed_in: bool | None = True) -> Session:
    """The session of a form POST; raises 403 without the session or its CSRF token, or
    when it is not signed in (``signed_in`` True) or is (False). A signed-in session keeps
    the identifier it signed in with: the erasure's second code goes there, so a stolen
    session cannot point it at an address of the thief's."""
    session = _centre().sessions.current(flask.request.cookies.get(COOKIE), _now())
    if not csrf_ok(session, flask.request.form.get("csrf_token")):
        raise Problem(403, "this form needs the page's session and CSRF token")
    if signed_in and not session.signed_in:
        raise Problem(403, "sign in first")
    if signed_in is False and session.signed_in:
        raise Problem(403, "already signed in: sign out first to use another email address "
                           "or phone number")
    if signed_in:
        _refuse_after_erasure(session)
    flask.g.preference_session = session
    return session


def _refuse_after_erasure(session: Session) -> None:
    """Once the customer confirmed their erasure, nothing more is recorded or handed out
    for them: a decision now would store new personal data after the erasure."""
    if session.pending.get("erasure"):
        raise Problem(409, "your erasure request has been filed: nothing more can be changed "
                           "or downloaded here")


def _as_customer(session: Session) -> None:
    """Let the consent service's own views run as this customer's session."""
    flask.g.principal = Principal(key_id=session.reference, name="preference centre",
                                  roles=frozenset({"customer"}))


def _parse_identifier(raw: str) -> tuple[str, str]:
    raw = raw.strip()[:320]
    type_ = "email" if "@" in raw else "phone"
    return type_, normalise(type_, raw, region="FI")


def _flow() -> PrivacyFlow:
    return flask.current_app.extensions["privacy_flow"]


def _file_request(session: Session, kind: str, fields: dict | None = None) -> PrivacyRequest:
    """File a data-subject request about the signed-in customer through the privacy flow,
    exactly as POST /v1/privacy/requests does for the dpo."""
    request = _new_request(session, kind, fields)
    _send(request)
    return request


def _new_request(session: Session, kind: str, fields: dict | None = None) -> PrivacyRequest:
    settings = runtime().settings
    try:
        request = PrivacyRequest.new(
            kind=kind, profile_id=session.profile_id, identifier=None, fields=fields,
            reason=f"preference centre: signed in with a one-time code sent to the customer's "
                   f"{session.identifier_type}",
            requested_by=session.reference,
            expected=tuple(s.strip() for s in settings.privacy_services.split(",")),
            deadline_days=settings.privacy_deadline_days, now=_now(), digest=_flow().digest)
    except InvalidPrivacyRequest as exc:
        raise Problem(422, str(exc)) from None
    return request


def _send(request: PrivacyRequest) -> None:
    flow = _flow()
    flow.repository.add(request)
    flow.send_now(request.request_id,
                  lambda messages: runtime().producer.send(messages, timeout=5))
    log.info("customer filed a data-subject request", extra={
        "request_id": request.request_id, "kind": request.kind,
        "requested_by": request.requested_by})


def _send_code(type_: str, value: str, code: str) -> None:
    centre = _centre()
    message = CodeMessage(to_type=type_, to=value, code=code, language=_language(),
                          minutes=centre.code_minutes)

    def send() -> None:
        try:
            centre.sender.send(message)
        except SendFailed as exc:
            log.warning("one-time code not sent", extra={"error": str(exc)})

    # in the background: a known identifier's answer must not take longer than an unknown's
    centre.sending.submit(send)


def _purposes(catalogue: Catalogue, profile_id: str, language: str) -> list[dict]:
    overview = consents_api._overview(profile_id)
    states = {c["purpose"]: c for c in overview["consents"]}
    return [{"name": name, "texts": purpose.texts[language], "allowed":
             states[name]["allowed"], "direct_marketing": purpose.direct_marketing}
            for name, purpose in catalogue.purposes.items()]


def _request_states(session: Session) -> dict[str, dict]:
    found = {}
    for kind in ("access", "erasure", "rectification"):
        request_id = session.pending.get(kind)
        request = _flow().repository.get(request_id) if request_id else None
        if request is not None:
            found[kind] = {"id": request.request_id, "state": request.state_at(_now()),
                           "missing": request.missing()}
    return found


def _account(session: Session) -> Response:
    centre = _centre()
    notice = session.pending.get("notice")
    if notice:
        session = centre.sessions.update(
            session, pending={k: v for k, v in session.pending.items() if k != "notice"})
    try:
        profile, unavailable = centre.directory.profile(session.profile_id), False
    except ServiceUnavailable as exc:
        log.warning("profile service unavailable", extra={"error": str(exc)})
        profile, unavailable = None, True
    disclosures = None
    if profile is not None:
        try:
            disclosures = centre.directory.disclosures(session.profile_id)
        except ServiceUnavailable as exc:
            log.warning("export service unavailable", extra={"error": str(exc)})
    catalogue = flask.current_app.extensions["consent_catalogue"]
    return _render("account.html", session, profile=profile, unavailable=unavailable,
                   disclosures=disclosures,
                   purposes=_purposes(catalogue, session.profile_id, _language()),
                   requests=_request_states(session), notice=notice,
                   confirming_erasure=bool(session.challenge_id))


def _blueprint() -> flask.Blueprint:
    blueprint = flask.Blueprint("preferences", __name__, url_prefix=PATH,
                                template_folder="templates", static_folder="static")

    @blueprint.after_request
    def protect(response: Response) -> Response:
        for name, value in SECURITY_HEADERS.items():
            response.headers.setdefault(name, value)
        return response

    @blueprint.errorhandler(Problem)
    def on_problem(problem: Problem):
        if problem.status not in (403, 503):
            return problem.response()
        session = flask.g.get("preference_session")
        key = "error.forbidden" if problem.status == 403 else "error.unavailable"
        return _render("message.html", session, status=problem.status, message=key)

    @blueprint.route("")
    def page():
        """Sign-in, code entry or the signed-in page, by the state of the session."""
        if flask.request.args.get("lang") in LANGUAGES:
            response = flask.redirect(PATH, code=303)
            response.set_cookie(LANGUAGE_COOKIE, flask.request.args["lang"], path=PATH,
                                max_age=365 * 86400, samesite="Lax", httponly=True,
                                secure=_centre().secure_cookies)
            return response
        centre = _centre()
        now = _now()
        cookie = flask.request.cookies.get(COOKIE)
        session = centre.sessions.current(cookie, now)
        fresh = session is None
        if fresh:
            store.purge_expired(runtime().db, now)
            cookie, session = centre.sessions.anonymous(now)
        flask.g.preference_session = session
        if session.signed_in:
            response = _account(session)
        elif session.challenge_id:
            response = _render("code.html", session, minutes=centre.code_minutes)
        else:
            response = _render("sign_in.html", session)
        return _set_session_cookie(response, cookie)

    @blueprint.route("/code", methods=["POST"])
    @authenticated_by_platform(PROOF)
    def request_code():
        """Send a one-time code; the same answer whether or not the identifier is known."""
        session = _posted(signed_in=False)
        centre, now = _centre(), _now()
        try:
            type_, value = _parse_identifier(flask.request.form.get("identifier", ""))
        except InvalidIdentifier:
            return _render("sign_in.html", session, status=422, error="invalid")
        digest = identifier_digest(flask.current_app.extensions["consent_digest_key"],
                                   type_, value)
        if not centre.limits.allows(centre.counters, identifier_digest=digest,
                                    ip=flask.request.remote_addr or "unknown", now=now):
            return _render("sign_in.html", session, status=429, error="limited")
        try:
            profile_id = centre.directory.profile_of(type_, value)
        except ServiceUnavailable as exc:
            log.warning("identity service unavailable", extra={"error": str(exc)})
            raise Problem(503, "identity unavailable") from None
        challenge, code = centre.codes.issue(identifier_type=type_, identifier_digest=digest,
                                             profile_id=profile_id, now=now)
        if code is not None:
            _send_code(type_, value, code)
        centre.sessions.update(session, challenge_id=challenge.id, identifier_type=type_,
                               identifier_value=value)
        return _back()

    @blueprint.route("/sign-in", methods=["POST"])
    @authenticated_by_platform(PROOF)
    def sign_in():
        """Check the code; on success a new session (new id, new CSRF token) starts."""
        session = _posted(signed_in=False)
        centre = _centre()
        if not session.challenge_id:
            return _back()
        try:
            challenge = centre.codes.verify(session.challenge_id,
                                            flask.request.form.get("code", "")[:32], _now())
        except CodeRefused as exc:
            log.info("sign-in code refused", extra={"reason": exc.reason})
            return _render("code.html", session, status=400, error="code.refused",
                           minutes=centre.code_minutes)
        cookie, _ = centre.sessions.sign_in(
            session, profile_id=challenge.profile_id, identifier_type=session.identifier_type,
            identifier_value=session.identifier_value, now=_now())
        return _set_session_cookie(flask.redirect(PATH, code=303), cookie)

    @blueprint.route("/restart", methods=["POST"])
    @authenticated_by_platform(PROOF)
    def restart():
        """Forget the awaited code (to ask for a new one or use another identifier)."""
        session = _posted(signed_in=None)
        _centre().sessions.update(session, challenge_id=None)
        return _back()

    @blueprint.route("/sign-out", methods=["POST"])
    @authenticated_by_platform(PROOF)
    def sign_out():
        session = _posted(signed_in=None)
        _centre().sessions.end(session)
        response = flask.redirect(PATH, code=303)
        response.delete_cookie(COOKIE, path=PATH)
        return response

    @blueprint.route("/consents", methods=["POST"])
    @authenticated_by_platform(PROOF)
    def decide():
        """Record a decision on one purpose, through POST /v1/consents' own code path."""
        session = _posted()
        state = flask.request.form.get("state")
        if state not in ("granted", "denied"):
            raise Problem(400, "state must be granted or denied")
        _as_customer(session)
        answer, _ = record_decision(_decision_body(
            session, purpose=flask.request.form.get("purpose", "")[:64], state=state),
            objection=False)
        return _back(session, ("purposes.saved", {"receipt": answer["decision_id"]}))

    @blueprint.route("/objection", methods=["POST"])
    @authenticated_by_platform(PROOF)
    def object_to_marketing():
        """Object to all direct marketing, through POST /v1/objections' own code path."""
        session = _posted()
        _as_customer(session)
        record_decision(_decision_body(session), objection=True)
        return _back(session, ("object.done", {}))

    @blueprint.route("/access", methods=["POST"])
    @authenticated_by_platform(PROOF)
    def request_access():
        """Collect the access export (a data-subject access request, as the dpo's)."""
        session = _posted()
        return _back(session, access=_file_request(session, "access").request_id)

    @blueprint.route("/access/download")
    @authenticated_by_platform(PROOF)
    def download_access():
        """The access export once every service has answered (the dpo's download)."""
        centre = _centre()
        session = centre.sessions.current(flask.request.cookies.get(COOKIE), _now())
        if session is None or not session.signed_in:
            raise Problem(403, "sign in first")
        _refuse_after_erasure(session)
        flask.g.preference_session = session
        request_id = session.pending.get("access")
        request = _flow().repository.get(request_id) if request_id else None
        if request is None or request.missing():
            return _back()
        document = access_export(request, _flow().repository.access_data(request_id), _now())
        return Response(
            orjson.dumps(document, option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS),
            mimetype="application/json", headers={
                "Content-Disposition": f'attachment; filename="my-data-{request_id}.json"'})

    @blueprint.route("/rectification", methods=["POST"])
    @authenticated_by_platform(PROOF)
    def request_rectification():
        """Ask for a field to be corrected (a rectification request, as the dpo's)."""
        session = _posted()
        field = flask.request.form.get("field", "").strip()
        value = flask.request.form.get("value", "").strip()
        if not (0 < len(field) <= 64) or not (0 < len(value) <= MAX_FIELD_VALUE):
            raise Problem(400, "name the field and its correct value")
        request = _file_request(session, "rectification", {field: value})
        return _back(session, ("rectify.done", {"request": request.request_id}),
                     rectification=request.request_id)

    @blueprint.route("/erasure", methods=["POST"])
    @authenticated_by_platform(PROOF)
    def ask_erasure():
        """Send a second code, to the identifier the customer signed in with."""
        session = _posted()
        centre, now = _centre(), _now()
        digest = identifier_digest(flask.current_app.extensions["consent_digest_key"],
                                   session.identifier_type, session.identifier_value)
        if not centre.limits.allows(centre.counters, identifier_digest=digest,
                                    ip=flask.request.remote_addr or "unknown", now=now):
            return _back(session, ("limited", {}))
        challenge, code = centre.codes.issue(
            identifier_type=session.identifier_type, identifier_digest=digest,
            profile_id=session.profile_id, now=now, purpose="erasure")
        _send_code(session.identifier_type, session.identifier_value, code)
        centre.sessions.update(session, challenge_id=challenge.id)
        return _back()

    @blueprint.route("/erasure/confirm", methods=["POST"])
    @authenticated_by_platform(PROOF)
    def confirm_erasure():
        """The second code confirms: the erasure request goes out as the dpo's would."""
        session = _posted()
        centre = _centre()
        try:
            challenge = centre.codes.verify(session.challenge_id or "",
                                            flask.request.form.get("code", "")[:32], _now(),
                                            purpose="erasure")
        except CodeRefused as exc:
            log.info("erasure code refused", extra={"reason": exc.reason})
            return _back(session, ("code.refused", {}))
        if challenge.profile_id != session.profile_id:
            raise Problem(403, "the code belongs to another session")
        request = _new_request(session, "erasure")
        # stripped before the request goes out: the erasure handler then finds this session
        # holding only what the page needs to show the erasure's progress
        centre.sessions.update(session, challenge_id=None, identifier_type=None,
                               identifier_value=None,
                               pending={**session.pending, "erasure": request.request_id})
        _send(request)
        return _back()

    return blueprint


def _decision_body(session: Session, **decision) -> dict:
    request = flask.request
    return {"profile_id": session.profile_id, "channel": "web", "source": "preference_centre",
            "collected_at": None, "notice_version": None, "decision_id": None,
            "proof": {"ip": request.remote_addr, "user_agent":
                      request.headers.get("User-Agent", "")[:1000] or None}, **decision}

