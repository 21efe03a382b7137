"""Data-subject requests (GDPR articles 15-18): the rules, without Flask, Kafka or Mongo.

A request is one of five kinds — access, erasure, restriction, restriction lifted,
rectification — about one subject (a profile id or a bare identifier). Its life:

    received ──(subject expanded, fanned out on cdp.privacy.requests)──▶ fanned_out
    fanned_out ──(every expected service acknowledged "done")──▶ completed
    fanned_out ──(every expected service acknowledged, one or more "failed")──▶ partially_failed
    partially_failed / overdue ──(retry: re-sent to the services without a "done" ack)──▶
        completed once each of them acknowledges "done"
    received / fanned_out, past the deadline ──▶ overdue (shown, not stored: an ack can still
    complete it)

Every step goes into an audit trail. ``proof()`` is what the data-protection officer shows:
who asked, when, which services confirmed what and when — with identifiers only as keyed
digests, so the proof outlives the erasure without holding the erased data. The plain
identifiers (and rectified values) are kept only while a request is being worked on and are
forgotten once an erasure completes (``forget_personal_data``).

Acks are idempotent: a service's first ack counts; a repeat changes nothing, except that a
"done" after a "failed" (the service retried and succeeded) replaces it.
"""

from __future__ import annotations

import calendar
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

REQUEST_TYPES = {
    "erasure": "Erasure Requested",
    "access": "Access Requested",
    "restriction": "Restriction Requested",
    "restriction_lifted": "Restriction Lifted",
    "rectification": "Rectification Requested",
}
KINDS = tuple(REQUEST_TYPES)
ACK_TYPE = "Privacy Request Acknowledged"

RECEIVED = "received"
FANNED_OUT = "fanned_out"
COMPLETED = "completed"
PARTIALLY_FAILED = "partially_failed"
OVERDUE = "overdue"
STATES = (RECEIVED, FANNED_OUT, COMPLETED, PARTIALLY_FAILED, OVERDUE)
OPEN_STATES = (RECEIVED, FANNED_OUT)
RETRYABLE_STATES = (PARTIALLY_FAILED, OVERDUE)

Digest = Callable[[str, str], str]  # (type, normalised value) → keyed digest


class InvalidPrivacyRequest(ValueError):
    """A request that cannot be accepted; the message says why (shown to the caller)."""


class NotRetryable(ValueError):
    """The request is not in a state a retry can help; the message says why."""


class InvalidAck(ValueError):
    """An acknowledgement that cannot be recorded; the message says why."""



def one_month_after(moment: datetime) -> datetime:
    """GDPR's "one month" (art. 12(3), counted as Regulation 1182/71 does): the same date
    next month, or that month's last day when it has no such date (31 January → 28 or 29
    February)."""
    year, month = (moment.year + 1, 1) if moment.month == 12 else (moment.year, moment.month + 1)
    return moment.replace(year=year, month=month,
                          day=min(moment.day, calendar.monthrange(year, month)[1]))

@dataclass(frozen=True)
class Identifier:
    type: str
    value: str

    def as_dict(self) -> dict[str, str]:
        return {"type": self.type, "value": self.value}


@dataclass(frozen=True)
class Ack:
    """One service's answer. ``data`` (access only) is the subject's data and personal, so
    it is kept apart from the request and never shown in its status or proof."""

    request_id: str
    kind: str
    service: str
    status: str
    summary: dict[str, Any]
    at: datetime
    message_id: str
    error: str | None = None
    data: Any = None


@dataclass
class PrivacyRequest:
    request_id: str
    kind: str
    requested_by: str
    reason: str
    received_at: datetime
    deadline: datetime
    expected: tuple[str, ...]
    subject: dict[str, Any]  # as given, identifier value replaced by its digest
    profile_ids: list[str]
    identifiers: list[Identifier]
    identifier_digests: list[dict[str, str]]
    fields: dict[str, Any] = field(default_factory=dict)
    state: str = RECEIVED
    acks: dict[str, Ack] = field(default_factory=dict)
    audit: list[dict[str, Any]] = field(default_factory=list)
    subject_expanded_at: datetime | None = None
    fanned_out_at: datetime | None = None
    closed_at: datetime | None = None
    personal_data_forgotten: bool = False
    last_error: str | None = None
    receipt: dict[str, Any] | None = None  # the signed erasure receipt, once completed
    retries: list[dict[str, Any]] = field(default_factory=list)

    # --- creation and progress ----------------------------------------------------------

    @classmethod
    def new(cls, *, kind: str, profile_id: str | None, identifier: Identifier | None,
            fields: dict[str, Any] | None, reason: str, requested_by: str,
            expected: tuple[str, ...], deadline_days: int, now: datetime, digest: Digest,
            request_id: str | None = None) -> PrivacyRequest:
        """A received request. Raises InvalidPrivacyRequest for an unknown kind, a subject
        that is not exactly one of profile id or identifier, or fields given (or missing)
        where rectification needs them."""
        if kind not in KINDS:
            raise InvalidPrivacyRequest(f"kind must be one of {', '.join(KINDS)}")
        if (profile_id is None) == (identifier is None):
            raise InvalidPrivacyRequest("the subject is either a profile_id or an identifier")
        if kind == "rectification" and not fields:
            raise InvalidPrivacyRequest("a rectification names the fields to correct")
        if kind != "rectification" and fields:
            raise InvalidPrivacyRequest("only a rectification carries fields")
        if not expected:
            raise InvalidPrivacyRequest("no service is configured to answer requests")
        if identifier is not None:
            subject = {"identifier": {"type": identifier.type,
                                      "digest": digest(identifier.type, identifier.value)}}
        else:
            subject = {"profile_id": profile_id}
        request = cls(
            request_id=request_id or str(uuid.uuid4()), kind=kind, requested_by=requested_by,
            reason=reason, received_at=now,
            deadline=min(one_month_after(now), now + timedelta(days=deadline_days)),
            expected=tuple(sorted(set(expected))), subject=subject,
            profile_ids=[profile_id] if profile_id else [],
            identifiers=[identifier] if identifier else [],
            identifier_digests=[], fields=dict(fields or {}))
        request._remember_digests(digest)
        request._log(now, "received", requested_by, {"kind": kind, "subject": subject,
                                                     "reason": reason})
        return request

    def expand_subject(self, profile_ids: list[str], identifiers: list[Identifier],
                       now: datetime, digest: Digest, by: str) -> None:
        """Add what ``by`` (the identity graph) links to the subject: merged profiles and
        every identifier they hold."""
        self.profile_ids = sorted(set(self.profile_ids) | set(profile_ids))
        self.identifiers = sorted(set(self.identifiers) | set(identifiers),
                                  key=lambda i: (i.type, i.value))
        self._remember_digests(digest)
        self.subject_expanded_at = now
        self.last_error = None
        self._log(now, "subject_expanded", by, {"profiles": len(self.profile_ids),
                                                "identifiers": len(self.identifiers)})

    def held_up(self, reason: str, now: datetime) -> bool:
        """The request could not move on (the identity lookup or the broker failed); it
        is retried. Audited once per distinct reason; True when that changed anything."""
        if reason == self.last_error:
            return False
        self.last_error = reason
        self._log(now, "held_up", "consent", {"reason": reason})
        return True

    def mark_fanned_out(self, now: datetime) -> bool:
        """The request is on cdp.privacy.requests; False when that was already recorded."""
        if self.fanned_out_at is not None:
            return False
        self.fanned_out_at = now
        self.last_error = None
        if self.state == RECEIVED:
            self.state = FANNED_OUT
        self._log(now, "fanned_out", "consent", {"services": list(self.expected)})
        return True

    def record_ack(self, ack: Ack, now: datetime) -> bool:
        """Record ``ack``; True when it changed anything. Raises InvalidAck when it answers
        another request or another kind."""
        if ack.request_id != self.request_id:
            raise InvalidAck(f"the ack answers request {ack.request_id}, not {self.request_id}")
        if ack.kind != self.kind:
            raise InvalidAck(f"the ack is for a {ack.kind} request; this is a {self.kind}")
        previous = self.acks.get(ack.service)
        if previous is not None and not (previous.status == "failed" and ack.status == "done"):
            return False
        self.acks[ack.service] = ack
        if self.fanned_out_at is None:  # its announcement was recorded late; the ack proves it
            self.mark_fanned_out(ack.at)
        detail = {"status": ack.status, "summary": ack.summary}
        if ack.error:
            detail["error"] = ack.error
        self._log(ack.at, "acknowledged", ack.service, detail)
        if not self.missing():
            failed = self.failed()
            self.state = PARTIALLY_FAILED if failed else COMPLETED
            self.closed_at = now
            self._log(now, self.state, "consent", {"failed": failed} if failed else {})
        return True

    def forget_personal_data(self, now: datetime) -> bool:
        """Drop the plain identifiers and rectified values, keeping their digests; done once
        an erasure completed (nothing is left to send them to). True when it changed."""
        if self.personal_data_forgotten:
            return False
        self.identifiers, self.fields = [], {}
        self.personal_data_forgotten = True
        self._log(now, "personal_data_forgotten", "consent", {})
        return True

    def retry_targets(self, now: datetime) -> list[str]:
        """The services a retry re-sends the request to: those that have not acknowledged
        and those that failed. Raises NotRetryable unless the request is partially failed,
        or fanned out and overdue."""
        state = self.state_at(now)
        if state not in RETRYABLE_STATES or self.fanned_out_at is None:
            raise NotRetryable(f"request {self.request_id} is {state}; only a partially failed "
                               "or an overdue request that was fanned out is retried")
        return [s for s in self.expected
                if s not in self.acks or self.acks[s].status != "done"]

    def last_retry(self) -> dict[str, Any] | None:
        return self.retries[-1] if self.retries else None

    def record_retry(self, attempt: int, services: list[str], message_id: str, by: str,
                     now: datetime) -> bool:
        """Record retry number ``attempt`` (sent); False when that attempt is recorded."""
        if any(r["attempt"] == attempt for r in self.retries):
            return False
        retry = {"attempt": attempt, "services": list(services), "message_id": message_id,
                 "by": by, "at": now}
        self.retries.append(retry)
        self._log(now, "retried", by, {k: v for k, v in retry.items() if k not in ("by", "at")})
        return True

    def record_receipt(self, receipt: dict[str, Any], now: datetime) -> bool:
        """Keep the signed erasure receipt; the first one issued stands. True when kept."""
        if self.receipt is not None:
            return False
        self.receipt = receipt
        self._log(now, "receipt_issued", "consent", {"key_id": receipt.get("key_id")})
        return True

    # --- reading -------------------------------------------------------------------------

    def state_at(self, now: datetime) -> str:
        if self.state in OPEN_STATES and now > self.deadline:
            return OVERDUE
        return self.state

    def missing(self) -> list[str]:
        """Expected services that have not acknowledged yet."""
        return [service for service in self.expected if service not in self.acks]

    def failed(self) -> list[str]:
        """Services whose latest acknowledgement says they could not do it."""
        return [service for service in self.expected
                if service in self.acks and self.acks[service].status != "done"]

    def fan_out_payload(self) -> dict[str, Any]:
        """The cdp.privacy.requests payload (CONTRACTS.md)."""
        payload = {"request_id": self.request_id, "kind": self.kind,
                   "profile_ids": list(self.profile_ids),
                   "identifiers": [i.as_dict() for i in self.identifiers],
                   "requested_by": self.requested_by}
        if self.kind == "rectification":
            payload["fields"] = dict(self.fields)
        return payload

    def proof(self, now: datetime) -> dict[str, Any]:
        """What the data-protection officer hands over: no identifier in the clear."""
        return {
            "request_id": self.request_id, "kind": self.kind, "state": self.state_at(now),
            "requested_by": self.requested_by, "reason": self.reason,
            "received_at": _iso(self.received_at), "deadline": _iso(self.deadline),
            "fanned_out_at": _iso(self.fanned_out_at), "closed_at": _iso(self.closed_at),
            "subject": self.subject, "profile_ids": list(self.profile_ids),
            "identifier_digests": list(self.identifier_digests),
            "services": [self._service_proof(service) for service in self.expected],
            "personal_data_forgotten": self.personal_data_forgotten,
        }

    def _service_proof(self, service: str) -> dict[str, Any]:
        ack = self.acks.get(service)
        if ack is None:
            return {"service": service, "status": "missing"}
        entry = {"service": service, "status": ack.status, "summary": ack.summary,
                 "acknowledged_at": _iso(ack.at), "message_id": ack.message_id}
        if ack.error:
            entry["error"] = ack.error
        return entry

    def _remember_digests(self, digest: Digest) -> None:
        known = {(d["type"], d["digest"]) for d in self.identifier_digests}
        for identifier in self.identifiers:
            known.add((identifier.type, digest(identifier.type, identifier.value)))
        self.identifier_digests = [{"type": t, "digest": d} for t, d in sorted(known)]

    def _log(self, at: datetime, event: str, by: str, detail: dict[str, Any]) -> None:
        self.audit.append({"at": at, "event": event, "by": by, "detail": detail})


def parse_ack(payload: dict[str, Any], *, message_id: str, at: datetime) -> Ack:
    """The ack in a cdp.privacy.acks payload; raises InvalidAck naming what is wrong."""
    request_id, kind = payload.get("request_id"), payload.get("kind")
    service, status = payload.get("service"), payload.get("status")
    if not isinstance(request_id, str) or not request_id:
        raise InvalidAck("request_id must be a non-empty string")
    if kind not in KINDS:
        raise InvalidAck(f"kind must be one of {', '.join(KINDS)}")
    if not isinstance(service, str) or not service:
        raise InvalidAck("service must name the acknowledging service")
    if status not in ("done", "failed"):
        raise InvalidAck("status must be done or failed")
    summary = payload.get("summary") or {}
    if not isinstance(summary, dict):
        raise InvalidAck("summary must be an object")
    error = payload.get("error")
    if status == "failed" and not isinstance(error, str):
        raise InvalidAck("a failed ack says why in error")
    return Ack(request_id=request_id, kind=kind, service=service, status=status,
               summary=summary, at=at, message_id=message_id,
               error=error if status == "failed" else None,
               data=payload.get("data") if kind == "access" else None)


def access_export(request: PrivacyRequest, data: dict[str, Any], now: datetime) -> dict:
    """The combined access export: every service's data about the subject, by service."""
    return {"request_id": request.request_id, "generated_at": _iso(now),
            "received_at": _iso(request.received_at), "state": request.state_at(now),
            "subject": {"profile_ids": list(request.profile_ids),
                        "identifiers": [i.as_dict() for i in request.identifiers]},
            "services": {service: data.get(service) for service in request.expected
                         if service in request.acks},
            "missing": request.missing(), "failed": request.failed()}


def _iso(moment: datetime | None) -> str | None:
    return moment.isoformat() if moment else None
