"""The profile projection: how a resolved event or a merge changes a customer's profile.

Plain functions over plain dicts (the profile document), no I/O, so replaying the same events
gives the same profile and a unit test can drive every rule.

A profile holds:

* ``traits``: each value with its provenance (``source``, ``channel``, ``at``, the event's
  ``message_id``) and kept by the trait's survivorship rule (``SURVIVORSHIP``): ``most_recent``
  (default: a late event older than the current value does not overwrite it), ``first_seen``,
  or ``most_trusted`` (by ``SOURCE_TRUST``, then most recent);
* ``identifiers`` by type;
* ``timeline``: the ``TIMELINE_LIMIT`` most recent events, newest first, summarised;
* ``computed``: purchase count, total and average order value, last purchase, last contact per
  channel, calls, first and last seen;
* ``recent_message_ids``: the last ``REMEMBERED_IDS`` events applied, so an event re-delivered
  after a crash is not counted twice.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

TIMELINE_LIMIT = 50
REMEMBERED_IDS = 1000

SURVIVORSHIP = {
    "birthday": "first_seen",
    "first_seen_channel": "first_seen",
    "email_verified": "most_trusted",
}
DEFAULT_RULE = "most_recent"
# where a trait came from, most trusted first (the envelope's channel decides)
SOURCE_TRUST = {"store": 4, "web": 3, "phone": 2, "email": 2, "social": 1, "system": 0}

# Segment trait names mapped to Muisti's (anything else keeps its own name)
TRAIT_NAMES = {"firstName": "first_name", "lastName": "last_name", "postalCode": "postcode",
               "birthday": "birthday", "phone": "phone", "email": "email"}

PURCHASE_EVENTS = {"Order Completed"}
TIMELINE_FIELDS = ("order_id", "total", "currency", "url", "name", "sku", "category", "queue",
                   "disposition", "talk_seconds", "agent_id", "text", "event", "kind")


def new_profile(profile_id: str) -> dict[str, Any]:
    return {"_id": profile_id, "traits": {}, "identifiers": {}, "timeline": [],
            "computed": {"purchase_count": 0, "purchase_total": 0.0, "calls": 0,
                         "last_contact": {}}, "recent_message_ids": [], "merged_into": None}


def apply_event(profile: Mapping[str, Any] | None, event: Mapping[str, Any]) -> dict[str, Any]:
    """The profile after one resolved event (an envelope as a dict). Returns the profile
    unchanged (a copy) if the event was already applied."""
    result = copy.deepcopy(dict(profile)) if profile else new_profile(event["profile_id"])
    if event["message_id"] in result["recent_message_ids"]:
        return result
    at = _moment(event["occurred_at"])
    payload = event.get("payload") or {}
    provenance = {"source": event.get("source"), "channel": event["channel"], "at": at,
                  "message_id": event["message_id"]}

    for type_, value in (event.get("identifiers") or {}).items():
        values = result["identifiers"].setdefault(type_, [])
        if value not in values:
            values.append(value)
    for name, value in _flatten_traits(payload.get("traits") or {}).items():
        _offer_trait(result["traits"], name, value, provenance)

    _add_to_timeline(result["timeline"], event, at, payload)
    _update_computed(result["computed"], event, at, payload)
    result["recent_message_ids"] = (result["recent_message_ids"] + [event["message_id"]])[
        -REMEMBERED_IDS:]
    return result


def merge(survivor: Mapping[str, Any], merged: Mapping[str, Any]) -> dict[str, Any]:
    """The survivor after absorbing ``merged``: traits by survivorship, identifiers united,
    timelines joined, computed traits combined. Idempotent: merging the same profile again
    changes nothing (its events are already among the survivor's)."""
    result = copy.deepcopy(dict(survivor))
    if merged["_id"] in result.get("absorbed", []):
        return result
    for type_, values in merged["identifiers"].items():
        mine = result["identifiers"].setdefault(type_, [])
        mine.extend(v for v in values if v not in mine)
    for name, trait in merged["traits"].items():
        _offer_trait(result["traits"], name, trait["value"], {k: v for k, v in trait.items()
                                                              if k not in ("value", "rule")})
    seen = {entry["message_id"] for entry in result["timeline"]}
    joined = result["timeline"] + [e for e in merged["timeline"] if e["message_id"] not in seen]
    result["timeline"] = sorted(joined, key=lambda e: e["at"], reverse=True)[:TIMELINE_LIMIT]
    result["computed"] = _combine_computed(result["computed"], merged["computed"])
    result["recent_message_ids"] = (result["recent_message_ids"]
                                    + merged["recent_message_ids"])[-REMEMBERED_IDS:]
    result["absorbed"] = [*result.get("absorbed", []), merged["_id"]]
    return result


def _flatten_traits(traits: Mapping[str, Any]) -> dict[str, Any]:
    flat = {}
    for name, value in traits.items():
        if not isinstance(name, str) or name.startswith("$") or "." in name:
            continue  # refused at ingestion; never a field name in the store
        if isinstance(value, Mapping) and name == "address":
            for part, inner in value.items():
                flat[TRAIT_NAMES.get(part, part)] = inner
        elif value is not None and not isinstance(value, Mapping | list):
            flat[TRAIT_NAMES.get(name, name)] = value
    return flat


def _offer_trait(traits: dict, name: str, value: Any, provenance: Mapping[str, Any]) -> None:
    rule = SURVIVORSHIP.get(name, DEFAULT_RULE)
    current = traits.get(name)
    if current is None or _wins(rule, provenance, current):
        traits[name] = {"value": value, "rule": rule, **provenance}


def _wins(rule: str, new: Mapping[str, Any], current: Mapping[str, Any]) -> bool:
    if rule == "first_seen":
        return new["at"] < current["at"]
    if rule == "most_trusted":
        new_trust = SOURCE_TRUST.get(new["channel"], 0)
        current_trust = SOURCE_TRUST.get(current["channel"], 0)
        if new_trust != current_trust:
            return new_trust > current_trust
    return new["at"] >= current["at"]


def _add_to_timeline(timeline: list, event: Mapping[str, Any], at: datetime,
                     payload: Mapping[str, Any]) -> None:
    details = {**(payload.get("properties") or {}), **payload}
    entry = {"message_id": event["message_id"], "type": event["type"],
             "channel": event["channel"], "at": at,
             "summary": {k: details[k] for k in TIMELINE_FIELDS
                         if k in details and not isinstance(details[k], Mapping | list)}}
    timeline.append(entry)
    timeline.sort(key=lambda e: e["at"], reverse=True)
    del timeline[TIMELINE_LIMIT:]


def _update_computed(computed: dict, event: Mapping[str, Any], at: datetime,
                     payload: Mapping[str, Any]) -> None:
    channel = event["channel"]
    last = computed["last_contact"].get(channel)
    if last is None or at > last:
        computed["last_contact"][channel] = at
    computed["first_seen"] = min(computed.get("first_seen") or at, at)
    computed["last_seen"] = max(computed.get("last_seen") or at, at)
    if event["type"] in PURCHASE_EVENTS:
        total = (payload.get("properties") or {}).get("total")
        computed["purchase_count"] += 1
        # a plausible order value only: an absurd one would overflow the running total
        if isinstance(total, int | float) and not isinstance(total, bool) and abs(total) < 1e9:
            computed["purchase_total"] = round(computed["purchase_total"] + float(total), 2)
        computed["last_purchase_at"] = max(computed.get("last_purchase_at") or at, at)
    if channel == "phone" and event["type"] == "Call Started":
        computed["calls"] += 1
    count = computed["purchase_count"]
    computed["average_order_value"] = round(computed["purchase_total"] / count, 2) if count else 0


def _combine_computed(a: Mapping[str, Any], b: Mapping[str, Any]) -> dict[str, Any]:
    combined = dict(a)
    for name in ("purchase_count", "calls"):
        combined[name] = a.get(name, 0) + b.get(name, 0)
    combined["purchase_total"] = round(a.get("purchase_total", 0) + b.get("purchase_total", 0), 2)
    count = combined["purchase_count"]
    combined["average_order_value"] = round(combined["purchase_total"] / count, 2) if count else 0
    for name, pick in (("first_seen", min), ("last_seen", max), ("last_purchase_at", max)):
        values = [v for v in (a.get(name), b.get(name)) if v is not None]
        if values:
            combined[name] = pick(values)
    contacts = dict(a.get("last_contact", {}))
    for channel, moment in b.get("last_contact", {}).items():
        contacts[channel] = max(moment, contacts.get(channel, moment))
    combined["last_contact"] = contacts
    return combined


def _moment(value: Any) -> datetime:
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    return datetime.fromisoformat(str(value).replace("Z", "+00:00"))
