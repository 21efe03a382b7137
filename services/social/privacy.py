"""Privacy on the social side. Pure functions.

* Platform-driven deletion: Meta's data-deletion callback and X's user compliance events
  (account deleted, protected, suspended) become an erasure request on cdp.privacy.requests
  for that social identity, in the shape of CONTRACTS.md (``profile_ids`` empty: the identity
  service expands the identifiers to the profiles that hold them). Meta's callback names an
  app-scoped id; the page-scoped ids it resolves to get an erasure each (meta_ids.py).
* The social service's own answer to every data-subject request: it holds nothing about a
  person (only the poller's checkpoint and the statuses of deletion requests, which name no
  one, besides the platform deletions it is itself filing), so each request is acknowledged
  at once with a summary that says so.

Ids are derived, never random: a platform's retried callback yields the same request id and
confirmation code, and a re-delivered request the same acknowledgement id.
"""

from __future__ import annotations

import hashlib
import hmac
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from services.common import privacy_requests
from services.common.envelope import Envelope, derived_message_id, new_envelope
from services.common.event_times import usable
from services.common.identifiers import InvalidIdentifier, normalise
from services.common.privacy_requests import PrivacyRequest

SERVICE = "social"
ACK_TYPE = "Privacy Request Acknowledged"
KINDS = privacy_requests.KINDS
# the services CONTRACTS.md lists as answering every request
ANSWERING_SERVICES = ("identity", "profile", "consent", "social", "export")
# X user compliance events that mean: forget this account
X_ERASING_EVENTS = ("user_delete", "user_protect", "user_suspend")


class InvalidDeletion(ValueError):
    """A deletion notice that cannot be acted on (no user id, unknown shape)."""


@dataclass(frozen=True)
class DeletionRequest:
    request_id: str
    confirmation_code: str
    platform: str
    reason: str
    identifiers: tuple[tuple[str, str], ...]
    requested_at: datetime

    def filing(self) -> dict[str, Any]:
        """The body filing this erasure with the privacy service (POST /v1/privacy/requests);
        the request id is derived from the platform's notice, so a retry files nothing new."""
        (type_, value), = self.identifiers
        return {"kind": "erasure", "request_id": self.request_id,
                "subject": {"identifier": {"type": type_, "value": value}},
                "reason": f"platform:{self.platform}: {self.reason}"}


def _request(platform: str, reason: str, identifier: tuple[str, str], natural_key: str,
             secret: str, at: datetime) -> DeletionRequest:
    request_id = str(uuid.uuid5(uuid.NAMESPACE_URL, f"muisti:social-deletion:{natural_key}"))
    # keyed, so nobody can guess another person's status page from their platform id; the
    # ":" keeps it apart from the HMACs X's CRC check has the same secret make of any token
    # it is sent (tokens are letters, digits and -_+/=. only)
    code = hmac.new(secret.encode(), f"confirmation:{request_id}".encode(),
                    hashlib.sha256).hexdigest()[:24]
    return DeletionRequest(request_id, code, platform, reason, (identifier,), at)


def from_meta_signed_request(payload: dict[str, Any], app_secret: str) -> DeletionRequest:
    """A verified Meta data-deletion ``signed_request`` payload → an erasure request.

    The ``user_id`` is the app-scoped id Meta gives the app; it is erased as a facebook_id.
    Raises InvalidDeletion without a usable user_id."""
    try:
        user_id = normalise("facebook_id", str(payload.get("user_id", "")))
    except InvalidIdentifier:
        raise InvalidDeletion("the signed_request names no valid user_id") from None
    issued = payload.get("issued_at")
    at = datetime.fromtimestamp(issued, UTC) if isinstance(issued, int) else datetime.now(UTC)
    return _request("meta", "Meta data deletion request", ("facebook_id", user_id),
                    f"meta:{user_id}:{issued}", app_secret, at)


def page_scoped_deletions(deletion: DeletionRequest, page_scoped_ids: list[str],
                          secret: str) -> list[DeletionRequest]:
    """One erasure per page-scoped id Meta resolved the callback's app-scoped id to (see
    meta_ids.py), derived from the callback's request so a retry files nothing new."""
    return [_request("meta", "Meta data deletion request (page-scoped id)",
                     ("facebook_id", normalise("facebook_id", psid)),
                     f"{deletion.request_id}:psid:{psid}", secret, deletion.requested_at)
            for psid in page_scoped_ids]


def from_x_compliance_event(event: Any, secret: str) -> DeletionRequest | None:
    """One X user compliance stream event → an erasure request, or None for events that ask
    for nothing to be forgotten (undelete, unprotect, profile changes...).

    Raises InvalidDeletion for something that is not a compliance event."""
    data = event.get("data") if isinstance(event, dict) else None
    if not isinstance(data, dict) or len(data) != 1:
        raise InvalidDeletion("a compliance event is {\"data\": {\"<event>\": {...}}}")
    (name, body), = data.items()
    if name not in X_ERASING_EVENTS:
        return None
    user = body.get("user") if isinstance(body, dict) else None
    given = user.get("id") if isinstance(user, dict) else None
    try:
        user_id = normalise("twitter_id", "" if given is None else str(given))
    except InvalidIdentifier:
        raise InvalidDeletion(f"the {name} event names no valid user id") from None
    event_at = str(body.get("event_at", ""))
    try:
        stated = datetime.fromisoformat(event_at.replace("Z", "+00:00"))
    except ValueError:
        stated = None
    # a time that cannot be the event's holds no erasure up: it is dated when received
    at = usable(stated) or datetime.now(UTC)
    return _request("x", f"X {name}", ("twitter_id", user_id), f"x:{name}:{user_id}:{event_at}",
                    secret, at)


def parse_request(envelope: Envelope) -> PrivacyRequest:
    """The request on cdp.privacy.requests. Raises InvalidRequest (a ValueError) when it is
    not one."""
    return privacy_requests.parse_request(envelope.payload)


def acknowledgement(envelope: Envelope, request: PrivacyRequest) -> Envelope:
    """The social service's ack: done at once, since it holds no data about any person."""
    payload = privacy_requests.ack_payload(request, SERVICE, {
        "held": "nothing about data subjects: the social service stores only the pollers' "
                "checkpoints, stream positions, deletion-request statuses and, until the "
                "privacy service accepts them, platform deletions in flight (for Meta, the "
                "app-scoped id until its page-scoped erasures are filed)",
        "erased": 0})
    return new_envelope(ACK_TYPE, "system", payload=payload,
                        message_id=derived_message_id(envelope.message_id,
                                                      f"privacy-ack-{SERVICE}"))
