"""How a data-subject request moves: accepted → subject expanded by the identity graph →
fanned out on cdp.privacy.requests → acknowledged by every service on cdp.privacy.acks.

Subject expansion. The consent service does not own the identity graph, so it asks the
identity API (``POST /v1/identity/subject``, ``CDP_IDENTITY_URL``, with
``CDP_SERVICE_API_KEY``) for every profile merged into the subject and every identifier they
hold, and fans out that full subject, so that a service keyed by something else (social by
handle) finds its data even when the DPO named only an email address. Identity expands the
subject again when it handles the request, so a link made after the lookup is not missed
there. Without identity among ``CDP_PRIVACY_SERVICES`` (or with ``CDP_IDENTITY_URL`` empty)
the subject goes out as given.

Never lost. The request is stored before anything else (the store is the outbox). The API
then tries to expand and fan out at once; if the identity API or Kafka is away the caller
still gets 202 and the consent worker's relay (``UnsentRequests``) retries until it is out.
The fan-out's message_id derives from the request id, so a request sent twice (API and relay
racing) is one message to every consumer.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta

import requests
from kafka.errors import KafkaError

from services.common import topics
from services.common.bus import Outgoing, Relay
from services.common.config import ConfigError, Settings
from services.common.envelope import derived_message_id, new_envelope
from services.common.identifiers import InvalidIdentifier, normalise
from services.common.shredding import (
    InvalidMasterKey,
    MasterKey,
    MongoWrappedKeys,
    SubjectKeys,
    identifier_digest,
)
from services.consent.privacy import (
    RECEIVED,
    REQUEST_TYPES,
    Identifier,
    PrivacyRequest,
)
from services.consent.privacy_store import MongoPrivacyRequests, PrivacyRequests

log = logging.getLogger(__name__)

Send = Callable[[list[Outgoing]], None]


def subject_keys(settings: Settings, db) -> SubjectKeys:
    """The data keys, wrapped under ``CDP_MASTER_KEY``; raises ConfigError without it."""
    try:
        master = MasterKey.from_settings(settings)
    except InvalidMasterKey as exc:
        raise ConfigError([f"CDP_MASTER_KEY: {exc}"]) from None
    return SubjectKeys(MongoWrappedKeys(db), master)


def digest_key(settings: Settings) -> bytes:
    """``CDP_PRIVACY_DIGEST_KEY``; raises ConfigError when it is not set."""
    if not settings.privacy_digest_key:
        raise ConfigError(["CDP_PRIVACY_DIGEST_KEY: data-subject requests keep identifiers "
                           "as keyed digests and need this secret"])
    return settings.privacy_digest_key.encode()


def build_flow(settings: Settings, db) -> PrivacyFlow:
    """The flow on the real store and identity API, from settings (ConfigError if keys are
    missing)."""
    expected = [name.strip() for name in settings.privacy_services.split(",")]
    directory = None
    if "identity" in expected and settings.identity_url:
        directory = IdentityApiDirectory(settings.identity_url, settings.service_api_key)
    return PrivacyFlow(MongoPrivacyRequests(db, subject_keys(settings, db)), directory,
                       digest_key(settings))


class SubjectLookupFailed(Exception):
    """The identity graph could not be asked now; the request waits and is retried."""


class SubjectDirectory:
    """Who the subject is in the identity graph."""

    def expand(self, profile_ids: list[str],
               identifiers: list[Identifier]) -> tuple[list[str], list[Identifier]]:
        """Every profile and identifier linked to the given ones (the given ones included).
        Raises SubjectLookupFailed."""
        raise NotImplementedError


class IdentityApiDirectory(SubjectDirectory):
    """The identity service's subject lookup over HTTP."""

    TIMEOUT_SECONDS = 5.0

    def __init__(self, base_url: str, api_key: str):
        self.url = base_url.rstrip("/") + "/v1/identity/subject"
        self.api_key = api_key

    def expand(self, profile_ids, identifiers):
        body = {"profile_ids": profile_ids, "identifiers": [i.as_dict() for i in identifiers]}
        try:
            response = requests.post(self.url, json=body, timeout=self.TIMEOUT_SECONDS,
                                     headers={"Authorization": f"Bearer {self.api_key}"})
        except requests.RequestException as exc:
            raise SubjectLookupFailed(
                f"identity API unreachable: {exc.__class__.__name__}") from None
        if response.status_code != 200:
            raise SubjectLookupFailed(f"identity API answered {response.status_code}")
        try:
            found = response.json()
            return (list(found["profile_ids"]),
                    [Identifier(i["type"], normalise(i["type"], i["value"]))
                     for i in found["identifiers"]])
        except (ValueError, KeyError, TypeError, InvalidIdentifier):
            raise SubjectLookupFailed("identity API answered something unexpected") from None


class PrivacyFlow:
    """Moves requests along; used by the API (at once) and the worker's relay (later)."""

    def __init__(self, repository: PrivacyRequests, directory: SubjectDirectory | None,
                 digest_key: bytes):
        self.repository = repository
        self.directory = directory
        self.digest_key = digest_key

    def digest(self, type_: str, value: str) -> str:
        return identifier_digest(self.digest_key, type_, value)

    def ready_to_send(self, request_id: str, now: datetime) -> Outgoing | None:
        """Expand the subject if that is still to do (the result is stored) and return the
        fan-out message; None while the request is held up or when it is already out."""
        request = self.repository.get(request_id)
        if request is None or request.state != RECEIVED:
            return None
        if self.directory is not None and request.subject_expanded_at is None:
            try:
                profile_ids, identifiers = self.directory.expand(request.profile_ids,
                                                                 request.identifiers)
            except SubjectLookupFailed as exc:
                reason = str(exc)
                log.warning("data-subject request held up", extra={
                    "request_id": request_id, "reason": reason})
                self.repository.update(request_id, lambda r: r.held_up(reason, now))
                return None
            request = self.repository.update(request_id, lambda r: _expand(
                r, profile_ids, identifiers, now, self.digest))
        return request_message(request)

    def sent(self, request_ids: Sequence[str], now: datetime) -> None:
        for request_id in request_ids:
            self.repository.update(request_id, lambda r: r.mark_fanned_out(now))

    def send_now(self, request_id: str, send: Send) -> None:
        """Try to fan the request out at once; on failure it stays for the relay."""
        now = datetime.now(UTC)
        message = self.ready_to_send(request_id, now)
        if message is None:
            return
        try:
            send([message])
        except (KafkaError, TimeoutError, ConnectionError) as exc:
            log.warning("fan-out deferred to the worker", extra={"request_id": request_id,
                                                                 "error": repr(exc)})
            self.repository.update(request_id, lambda r: r.held_up("broker unavailable", now))
            return
        self.sent([request_id], now)


def _expand(request: PrivacyRequest, profile_ids, identifiers, now, digest) -> bool:
    if request.subject_expanded_at is not None:
        return False
    request.expand_subject(profile_ids, identifiers, now, digest, by="identity")
    return True


def request_message(request: PrivacyRequest) -> Outgoing:
    """The cdp.privacy.requests message of ``request``, keyed by request id."""
    envelope = new_envelope(REQUEST_TYPES[request.kind], "system",
                            payload=request.fan_out_payload(),
                            message_id=derived_message_id(request.request_id, "privacy-request"),
                            occurred_at=request.received_at)
    return Outgoing(topics.PRIVACY_REQUESTS, request.request_id, envelope)


def retry_message(request: PrivacyRequest, attempt: int, services: list[str]) -> Outgoing:
    """The request sent again (retry number ``attempt``) for ``services``. A new message id
    per attempt, since every service already recorded the first one as handled; a service
    that had answered "done" may handle it again harmlessly (its ack is not counted twice).
    ``retry`` is informational: a service not listed in it may skip the request."""
    payload = {**request.fan_out_payload(), "retry": {"attempt": attempt,
                                                      "services": list(services)}}
    envelope = new_envelope(
        REQUEST_TYPES[request.kind], "system", payload=payload,
        message_id=derived_message_id(request.request_id, f"privacy-request-retry-{attempt}"),
        occurred_at=request.received_at)
    return Outgoing(topics.PRIVACY_REQUESTS, request.request_id, envelope)


class UnsentRequests(Relay):
    """Requests stored but not yet fanned out (identity or Kafka was away when the API tried):
    the consent worker sends them."""

    interval_seconds = 15.0
    GRACE = timedelta(seconds=10)  # leave the API time to send them itself

    def __init__(self, flow: PrivacyFlow):
        self.flow = flow

    def pending(self) -> list[Outgoing]:
        now = datetime.now(UTC)
        waiting = self.flow.repository.waiting(now - self.GRACE)
        messages = (self.flow.ready_to_send(request.request_id, now) for request in waiting)
        return [message for message in messages if message is not None]

    def sent(self, messages: list[Outgoing]) -> None:
        self.flow.sent([message.key for message in messages], datetime.now(UTC))
