"""Privacy rules of the profile service, pure: purpose-bound reads, processing restrictions,
and data-subject requests as they arrive on cdp.privacy.requests.

Purpose-bound reads. A read states its purpose (``X-Purpose``). A purpose listed in
``CDP_PROFILE_PURPOSE_CONSENTS`` needs one of its consent purposes allowed for the profile
(the states come from cdp.consent.changes); a consent purpose never decided counts as not
allowed. Without one, the read returns no personal data at all: identifiers, traits,
timeline, computed traits and segments are withheld, and ``withheld`` says why. With one, a
marketing read still shows a contact channel only where that channel's own consent allows it
(``CONTACT_CONSENTS``): email needs ``marketing_email``, phone ``marketing_sms`` or
``marketing_phone``, the postal address ``marketing_post``; a denial recorded for the bare
identifier (e.g. a do-not-call number) withholds that value too, and what the customer did
(the timeline) and what was inferred from it (computed traits such as the RFM segment, segment
memberships) need the ``profiling`` consent on top: targeting by purchases and visits is
profiling. Other purposes (customer_service, fraud_prevention, data_request) need no consent.

Restriction (GDPR art. 18). A restricted profile is stored but not used: reads answer 403
with the reason, except for the data-protection officer.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

from services.common import privacy_requests
from services.common.privacy_requests import InvalidRequest, PrivacyRequest

UNRESTRICTED_ROLES = frozenset({"dpo"})

CONTACT_CONSENTS: dict[str, tuple[str, ...]] = {
    "email": ("marketing_email",),
    "phone": ("marketing_sms", "marketing_phone"),
    "address": ("marketing_post",),
}
# which traits and identifier types make up each contact channel
CONTACT_FIELDS: dict[str, tuple[str, ...]] = {
    "email": ("email",),
    "phone": ("phone", "mobile"),
    "address": ("street", "address", "city", "postcode", "postal_code", "country", "state"),
}
CONTACT_IDENTIFIERS = {"email": "email", "phone": "phone"}
PROFILING_CONSENT = "profiling"
PROFILING_FIELDS: dict[str, Any] = {"timeline": [], "computed": {}, "segments": []}


def parse_purpose_consents(text: str) -> dict[str, tuple[str, ...]]:
    """``marketing=marketing_email|marketing_sms,analytics=analytics`` → mapping."""
    mapping = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        purpose, _, consents = item.partition("=")
        mapping[purpose.strip()] = tuple(c.strip() for c in consents.split("|") if c.strip())
    return mapping


def allowed(states: Mapping[str, Mapping[str, Any]], consent_purpose: str) -> bool:
    state = states.get(consent_purpose)
    return bool(state and state.get("allowed"))


def bound_view(view: dict[str, Any], purpose: str, needs: Mapping[str, tuple[str, ...]],
               states: Mapping[str, Mapping[str, Any]],
               denied_values: Mapping[str, set[str]] | None = None) -> dict[str, Any]:
    """The profile view a read for ``purpose`` may see, given the profile's consent
    ``states`` ({consent purpose: {"allowed": bool, ...}}) and identifier values denied on
    their own (``denied_values``: {consent purpose: {values}})."""
    required = needs.get(purpose)
    if not required:
        return view
    granted = [c for c in required if allowed(states, c)]
    if not granted:
        return {"profile_id": view["profile_id"], "identifiers": {}, "traits": {},
                "computed": {}, "segments": [], "timeline": [],
                "merged_from": view.get("merged_from", []),
                "withheld": {"purpose": purpose, "reason": f"no consent for {purpose} (needs "
                             f"one of {', '.join(required)})",
                             "fields": ["identifiers", "traits", "computed", "segments",
                                        "timeline"]}}
    if purpose != "marketing":
        return view
    result = copy.deepcopy(view)
    withheld = []
    denied_values = denied_values or {}
    for channel, consents in CONTACT_CONSENTS.items():
        if not any(allowed(states, c) for c in consents):
            withheld.append(channel)
            for name in CONTACT_FIELDS[channel]:
                result["traits"].pop(name, None)
            if channel in CONTACT_IDENTIFIERS:
                result["identifiers"].pop(CONTACT_IDENTIFIERS[channel], None)
            continue
        blocked = set().union(*(denied_values.get(c, set()) for c in consents))
        if channel in CONTACT_IDENTIFIERS and blocked:
            type_ = CONTACT_IDENTIFIERS[channel]
            kept = [v for v in result["identifiers"].get(type_, []) if v not in blocked]
            result["identifiers"][type_] = kept
            for name in CONTACT_FIELDS[channel]:
                if result["traits"].get(name, {}).get("value") in blocked:
                    result["traits"].pop(name)
    reasons = ["no consent for these contact channels"] if withheld else []
    if not allowed(states, PROFILING_CONSENT):
        result.update(copy.deepcopy(PROFILING_FIELDS))
        withheld.extend(PROFILING_FIELDS)
        reasons.append("no profiling consent for the customer's activity and what is "
                       "inferred from it")
    if withheld:
        result["withheld"] = {"purpose": purpose, "reason": "; ".join(reasons),
                              "fields": withheld}
    return result


def uses_denied_values(purpose: str, needs: Mapping[str, tuple[str, ...]],
                       states: Mapping[str, Mapping[str, Any]]) -> bool:
    """Whether ``bound_view`` for ``purpose`` looks at identifier values denied on their own
    (a marketing read with some consent granted), so a read gathers them only then."""
    return purpose == "marketing" and any(allowed(states, c) for c in needs.get(purpose, ()))


def parse_request(payload: Mapping[str, Any]) -> PrivacyRequest:
    """The request in a cdp.privacy.requests payload; raises InvalidRequest. The profile
    applies a rectification's fields, so one without fields is refused here."""
    request = privacy_requests.parse_request(payload)
    if request.kind == "rectification" and not request.fields:
        raise InvalidRequest("a rectification names the fields to set")
    return request


def restriction_reason(profile: Mapping[str, Any], roles: frozenset[str]) -> str | None:
    """Why ``roles`` may not read the profile now, or None."""
    restricted = profile.get("restricted")
    if not restricted or roles & UNRESTRICTED_ROLES:
        return None
    return (f"processing of this profile is restricted at the data subject's request "
            f"({restricted['request_id']}); only the data-protection officer may read it")


