"""The data-subject request contract every service reads from cdp.privacy.requests and
answers on cdp.privacy.acks (docs/EVENTS.md): one parser and one acknowledgement shape."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

KINDS = ("erasure", "access", "restriction", "restriction_lifted", "rectification")


class InvalidRequest(ValueError):
    """A privacy request a service cannot act on; the message says why."""


@dataclass(frozen=True)
class PrivacyRequest:
    request_id: str
    kind: str
    profile_ids: tuple[str, ...]
    identifiers: tuple[tuple[str, str], ...]
    fields: dict[str, Any]


def parse_request(payload: Mapping[str, Any]) -> PrivacyRequest:
    """The request in a cdp.privacy.requests payload; raises InvalidRequest."""
    request_id, kind = payload.get("request_id"), payload.get("kind")
    if not isinstance(request_id, str) or not request_id:
        raise InvalidRequest("request_id must be a non-empty string")
    if kind not in KINDS:
        raise InvalidRequest(f"kind must be one of {', '.join(KINDS)}")
    profile_ids = payload.get("profile_ids") or []
    if not isinstance(profile_ids, list) or not all(
            isinstance(p, str) and p for p in profile_ids):
        raise InvalidRequest("profile_ids must be a list of profile ids")
    identifiers = payload.get("identifiers") or []
    if not isinstance(identifiers, list):
        raise InvalidRequest("identifiers must be a list of {type, value}")
    for item in identifiers:
        if not isinstance(item, Mapping) or not isinstance(item.get("type"), str) \
                or not isinstance(item.get("value"), str):
            raise InvalidRequest(f"not an identifier: {item!r}")
    fields = payload.get("fields") or {}
    if not isinstance(fields, Mapping):
        raise InvalidRequest("fields must be an object")
    return PrivacyRequest(request_id, kind, tuple(dict.fromkeys(profile_ids)),
                          tuple((i["type"], i["value"]) for i in identifiers), dict(fields))


def ack_payload(request: PrivacyRequest, service: str, summary: dict[str, Any],
                data: dict[str, Any] | None = None) -> dict[str, Any]:
    """The cdp.privacy.acks payload of a request done; an access ack always carries data."""
    payload = {"request_id": request.request_id, "kind": request.kind, "service": service,
               "status": "done", "summary": summary}
    if request.kind == "access":
        payload["data"] = data or {}
    return payload
