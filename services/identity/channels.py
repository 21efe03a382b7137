"""Channel messages (Segment's HTTP Tracking API spec, contact-centre call events) turned into
Muisti envelopes. Pure functions: the API validates with these schemas and produces the result.

Segment semantics kept: userId / anonymousId (one is required), messageId is the idempotency
key, ``timestamp`` is corrected for the client's clock skew with ``sentAt`` (Segment's
``originalTimestamp`` rule), and traits may also ride in ``context.traits``.

:func:`protect_hetus` then replaces every personal identity code (an identifier or a trait)
by its keyed digest and a sealed trait (services.common.hetu_protection) before the event
goes anywhere: the HTTP API applies it to what it accepts, the identity worker to events that
producers put on Kafka themselves.
"""

from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from marshmallow import (
    EXCLUDE,
    Schema,
    ValidationError,
    fields,
    validate,
    validates_schema,
)

from services.common.documents import unstorable
from services.common.envelope import Envelope, new_envelope
from services.common.event_times import WINDOW, EventTime, UtcDateTime, outside_window
from services.common.hetu_protection import HetuProtector
from services.common.identifiers import InvalidIdentifier, normalise
from services.common.redaction import redact_hetus, redact_hetus_in, redact_in
from services.identity.graph import PRIORITY

SEGMENT_TYPES = ("identify", "track", "page", "screen", "group", "alias")
EVENT_NAMES = {"identify": "Identify", "page": "Page Viewed", "screen": "Screen Viewed",
               "group": "Group", "alias": "Alias"}
# trait name in Segment's reserved traits (or common practice) → Muisti identifier type
TRAIT_IDENTIFIERS = {"email": "email", "phone": "phone", "twitter": "twitter_handle",
                     "twitter_handle": "twitter_handle", "facebook_id": "facebook_id"}
CONTEXT_KEPT = ("page", "ip", "userAgent", "locale", "library", "campaign", "referrer",
                "timezone", "app", "os", "screen", "channel")


class _Id(fields.Field):
    """Segment ids are strings, but some SDKs send numbers: accept both, keep a string."""

    def _deserialize(self, value, attr, data, **kwargs):
        if isinstance(value, bool) or not isinstance(value, str | int):
            raise ValidationError("must be a string or a number")
        text = str(value).strip()
        if not text or len(text) > 256:
            raise ValidationError("must be 1-256 characters")
        return text


class SegmentMessageSchema(Schema):
    class Meta:
        unknown = EXCLUDE  # SDKs add fields of their own (writeKey, _metadata, channel...)

    type = fields.String(required=True, validate=validate.OneOf(SEGMENT_TYPES))
    userId = _Id(load_default=None, allow_none=True)
    anonymousId = _Id(load_default=None, allow_none=True)
    previousId = _Id(load_default=None, allow_none=True)
    groupId = _Id(load_default=None, allow_none=True)
    messageId = fields.String(load_default=None, allow_none=True,
                              validate=validate.Length(min=1, max=128))
    event = fields.String(load_default=None, allow_none=True,
                          validate=validate.Length(min=1, max=128))
    name = fields.String(load_default=None, allow_none=True)
    category = fields.String(load_default=None, allow_none=True)
    # the client's clock: only the time corrected for its skew must be an event's time
    timestamp = UtcDateTime(load_default=None, allow_none=True)
    originalTimestamp = UtcDateTime(load_default=None, allow_none=True)
    sentAt = UtcDateTime(load_default=None, allow_none=True)
    traits = fields.Dict(keys=fields.String(), load_default=dict, allow_none=True)
    properties = fields.Dict(keys=fields.String(), load_default=dict, allow_none=True)
    context = fields.Dict(keys=fields.String(), load_default=dict, allow_none=True)
    integrations = fields.Dict(keys=fields.String(), load_default=dict, allow_none=True)

    @validates_schema
    def _storable(self, data, **_):
        context = data.get("context") or {}
        if "traits" in context and not isinstance(context["traits"], dict):
            raise ValidationError({"context": {"traits": ["must be an object"]}})
        for name in ("traits", "properties", "context", "integrations"):
            reason = unstorable(data.get(name) or {}, f"{name}.")
            if reason:
                raise ValidationError({name: [reason]})

    @validates_schema
    def _required_by_type(self, data, **_):
        kind = data.get("type")
        if kind == "alias":
            missing = [f for f in ("userId", "previousId") if not data.get(f)]
            if missing:
                raise ValidationError({f: ["required for alias"] for f in missing})
            return
        if not data.get("userId") and not data.get("anonymousId"):
            raise ValidationError({"userId": ["userId or anonymousId is required"]})
        if kind == "track" and not data.get("event"):
            raise ValidationError({"event": ["required for track"]})
        if kind == "group" and not data.get("groupId"):
            raise ValidationError({"groupId": ["required for group"]})

    @validates_schema
    def _occurred_in_window(self, data, **_):
        stated = "timestamp" if data.get("timestamp") else "originalTimestamp"
        if not data.get(stated):
            return  # the event happened when it was received
        try:
            problem = outside_window(occurred_at(data, datetime.now(UTC)))
        except OverflowError:
            problem = "out of the range of dates"
        if problem:
            corrected = " once corrected for the client's clock by sentAt" \
                if data.get("sentAt") else ""
            raise ValidationError({stated: [f"must lie {WINDOW}{corrected}; it is {problem}"]})


CALL_EVENTS = {"offered": "Call Started", "answered": "Call Answered", "ended": "Call Ended"}


class CallEventSchema(Schema):
    """A contact-centre telephony event (from the telephony platform's webhook or CTI)."""

    call_id = fields.String(required=True, validate=validate.Length(min=1, max=128))
    event = fields.String(required=True, validate=validate.OneOf(tuple(CALL_EVENTS)))
    caller_number = fields.String(required=True, validate=validate.Length(min=1, max=40))
    dialled_number = fields.String(load_default=None, allow_none=True)
    customer_number = fields.String(load_default=None, allow_none=True,
                                    metadata={"description": "loyalty or customer number the "
                                              "caller gave in the IVR (a user_id)"})
    agent_id = fields.String(load_default=None, allow_none=True)
    extension = fields.String(load_default=None, allow_none=True)
    queue = fields.String(load_default=None, allow_none=True)
    wait_seconds = fields.Integer(load_default=None, allow_none=True,
                                  validate=validate.Range(min=0, max=86400))
    talk_seconds = fields.Integer(load_default=None, allow_none=True,
                                  validate=validate.Range(min=0, max=86400))
    disposition = fields.String(load_default=None, allow_none=True)
    notes = fields.String(load_default=None, allow_none=True,
                          validate=validate.Length(max=10000))
    timestamp = EventTime(load_default=None, allow_none=True)
    message_id = fields.String(load_default=None, allow_none=True,
                               validate=validate.Length(min=1, max=128))


@dataclass
class Converted:
    envelope: Envelope
    key: str
    cards_redacted: int = 0
    invalid_identifiers: list[dict[str, str]] = field(default_factory=list)


def _identifiers(candidates: dict[str, Any]) -> tuple[dict[str, str], list[dict[str, str]]]:
    valid, invalid = {}, []
    for type_, value in candidates.items():
        if value in (None, ""):
            continue
        try:
            valid[type_] = normalise(type_, str(value))
        except InvalidIdentifier as exc:
            invalid.append({"type": type_, "reason": exc.reason})
    return valid, invalid


def partition_key(identifiers: dict[str, str]) -> str:
    """The strongest identifier: events of one customer keep their order on one partition."""
    for type_ in PRIORITY:
        if type_ in identifiers:
            return f"{type_}:{identifiers[type_]}"
    return "unidentified"


def occurred_at(message: dict, received_at: datetime) -> datetime:
    """Segment's rule: with sentAt, shift the client's timestamp by the client's clock skew.
    Raises OverflowError when an absurd skew shifts it out of the range of dates (the schema
    refuses such messages)."""
    timestamp = message.get("timestamp") or message.get("originalTimestamp")
    sent_at = message.get("sentAt")
    if timestamp and sent_at:
        return received_at - (sent_at - timestamp)
    return timestamp or received_at


def from_segment(message: dict, *, source: str | None = None) -> Converted:
    """Turn one validated Segment message (SegmentMessageSchema output) into an envelope."""
    kind = message["type"]
    traits = {**(message["context"] or {}).get("traits", {}), **(message["traits"] or {})}
    candidates = {"user_id": message.get("userId"), "anonymous_id": message.get("anonymousId")}
    if kind == "alias":
        candidates["anonymous_id"] = message.get("previousId")
    device = (message["context"] or {}).get("device") or {}
    if isinstance(device, dict):
        candidates["device_id"] = device.get("id")
    for trait, type_ in TRAIT_IDENTIFIERS.items():
        if isinstance(traits.get(trait), str | int):
            candidates.setdefault(type_, traits[trait])
    identifiers, invalid = _identifiers(candidates)

    payload: dict[str, Any] = {"call": kind}
    for name in ("event", "name", "category", "groupId", "previousId"):
        if message.get(name):
            payload[name] = message[name]
    if "previousId" in payload:
        # the anonymous id it names may be a hetu, which travels only protected (the identifier)
        payload["previousId"], _ = redact_hetus(payload["previousId"])
    if message["properties"]:
        payload["properties"] = message["properties"]
    if traits:
        payload["traits"] = traits
    context = {k: v for k, v in (message["context"] or {}).items() if k in CONTEXT_KEPT}
    if context:
        payload["context"] = context
    if message["integrations"]:
        payload["integrations"] = message["integrations"]
    if invalid:
        payload["invalid_identifiers"] = invalid
    payload, cards = redact_in(payload)

    received = datetime.now(UTC)
    envelope = new_envelope(
        message["event"] if kind == "track" else EVENT_NAMES[kind], "web",
        identifiers=identifiers, payload=payload, occurred_at=occurred_at(message, received),
        message_id=message.get("messageId"), source=source)
    return Converted(envelope, partition_key(identifiers), cards, invalid)


def from_call(call: dict, *, source: str | None = None) -> Converted:
    """Turn one validated call event into an envelope. The caller-id number is unverified:
    it finds the profile that owns it but never merges two profiles.

    Raises InvalidIdentifier when the caller number cannot be read as a phone number
    (withheld or malformed): such a call cannot be attributed to anyone.
    """
    phone = normalise("phone", call["caller_number"])
    identifiers = {"phone": phone}
    if call.get("customer_number"):
        identifiers["user_id"] = normalise("user_id", call["customer_number"])
    payload = {k: v for k, v in call.items()
               if v is not None and k not in ("timestamp", "message_id", "caller_number")}
    payload["caller_number"] = phone
    payload["unverified_identifiers"] = ["phone"]
    payload, cards = redact_in(payload)
    # agents type what callers say into the notes: a hetu among it is masked, not kept
    payload, _ = redact_hetus_in(payload)
    envelope = new_envelope(
        CALL_EVENTS[call["event"]], "phone", identifiers=identifiers, payload=payload,
        occurred_at=call.get("timestamp"),
        message_id=call.get("message_id") or _call_message_id(call),
        source=source)
    return Converted(envelope, partition_key({"phone": phone}), cards)


def protect_hetus(envelope: Envelope, hetus: HetuProtector) -> Envelope:
    """The envelope with every hetu it carries as digest (identifier) and sealed trait; the
    hetus refused are added to ``invalid_identifiers``. An envelope already protected comes
    back as it is."""
    payload = envelope.payload
    traits = payload.get("traits")
    protected = hetus.protect(envelope.identifiers,
                              traits if isinstance(traits, dict) else None)
    if not protected.changed:
        return envelope
    return dataclasses.replace(envelope, identifiers=protected.identifiers,
                               payload=protected.payload(payload))


def protect_converted(converted: Converted, hetus: HetuProtector) -> Converted:
    """``converted`` with its hetus protected. Its partition key stays (a call keeps its
    caller's number) unless it named a value protection replaced (a user_id that is a hetu):
    then it is made of what remains."""
    envelope = protect_hetus(converted.envelope, hetus)
    if envelope is converted.envelope:
        return converted
    type_, _, value = converted.key.partition(":")
    key = converted.key if envelope.identifiers.get(type_) == value \
        else partition_key(envelope.identifiers)
    invalid = envelope.payload.get("invalid_identifiers") or []
    return Converted(envelope, key, converted.cards_redacted, list(invalid))


def _call_message_id(call: dict) -> str:
    """Stable per call and step, so the telephony platform's retries (the same body again)
    are applied once. A transfer offers and answers the call again, in another queue, by
    another agent or later: a step of its own, not a retry."""
    natural = f"call:{call['call_id']}:{call['event']}"
    if call["event"] != "ended":
        at = call.get("timestamp")
        natural += (f":{call.get('queue') or ''}:{call.get('agent_id') or ''}"
                    f":{at.isoformat() if at else ''}")
    if len(natural) <= 128:
        return natural
    return "call:" + hashlib.sha256(natural.encode()).hexdigest()
