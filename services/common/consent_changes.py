"""The Consent Changed contract every service reads from cdp.consent.changes (docs/EVENTS.md):
one parser, so the profile and export services agree on what a malformed change is."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from services.common.bus import InvalidMessage
from services.common.envelope import Envelope


@dataclass(frozen=True)
class ConsentChange:
    """One purpose's state after a change, for a profile or (before any profile existed, e.g.
    a do-not-call number) for a bare identifier."""

    profile_id: str | None
    identifier: tuple[str, str] | None  # (type, value) when there is no profile
    purpose: str
    allowed: bool
    state: str | None  # granted, denied or withdrawn
    reason: str | None
    receipt_id: str
    collected_at: datetime  # aware, in UTC, at the store's millisecond precision
    message_id: str


def parse_consent_change(envelope: Envelope) -> ConsentChange:
    """The change a Consent Changed envelope carries; raises InvalidMessage (the message
    then goes to the dead-letter topic with the reason).

    ``collected_at`` orders a subject's decisions. When absent the envelope's
    ``occurred_at`` stands in; one that is present but no ISO-8601 time is an error, since
    guessing its moment could let an older decision overwrite a newer one."""
    payload = envelope.payload
    purpose, allowed, state = payload.get("purpose"), payload.get("allowed"), payload.get("state")
    if not isinstance(purpose, str) or not purpose or not isinstance(allowed, bool):
        raise InvalidMessage("a Consent Changed needs purpose (string) and allowed (bool)")
    if state is not None and not isinstance(state, str):
        raise InvalidMessage("a Consent Changed's state is a string")
    identifier = None
    if not envelope.profile_id:
        if not envelope.identifiers:
            raise InvalidMessage("a Consent Changed names a profile_id or an identifier")
        identifier = sorted(envelope.identifiers.items())[0]
    return ConsentChange(
        profile_id=envelope.profile_id or None, identifier=identifier, purpose=purpose,
        allowed=allowed, state=state, reason=payload.get("reason"),
        receipt_id=str(payload.get("receipt_id") or envelope.message_id),
        collected_at=_collected_at(payload.get("collected_at"), envelope.occurred_at),
        message_id=envelope.message_id)


def _collected_at(value, occurred_at: datetime) -> datetime:
    if value is None:
        moment = occurred_at
    elif isinstance(value, str):
        try:
            moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            raise InvalidMessage("collected_at is not an ISO-8601 time") from None
    else:
        raise InvalidMessage("collected_at is not an ISO-8601 time")
    # a time without a zone is UTC, as for the envelope's occurred_at
    moment = moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)
    return moment.replace(microsecond=moment.microsecond // 1000 * 1000)
