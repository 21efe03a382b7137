"""The profile projection: how a resolved event or a merge changes a customer's profile.

Plain functions over plain dicts (the profile document), no I/O, so replaying the same events
gives the same profile and a unit test can drive every rule.

A profile holds:

* ``traits``: each value with its provenance (``source``, ``channel``, ``at``, the event's
  ``message_id``) and kept by the trait's survivorship rule (``SURVIVORSHIP``): ``most_recent``
  (default: a late event older than the current value does not overwrite it), ``first_seen``,
  or ``most_trusted`` (by ``SOURCE_TRUST``, then most recent);
* ``identifiers`` by type;
* ``timeline``: the ``TIMELINE_LIMIT`` most recent events, newest first, summarised (what a
  lookup shows; the full history pages through services/profile/history.py);
* ``aggregates``: running, commutative aggregates of every event (services/profile/computed.py),
  and ``computed``: the traits derived from them (purchases, RFM, favourite product groups,
  preferred store and channel, last contact per channel, open complaints, satisfaction,
  campaign reactions), recomputed after every event and merge;
* ``history_months``: the months (``YYYY-MM``, newest first) the full history holds events in;
* ``segments``: the ids of the segments the profile belongs to (kept by the worker);
* ``applied_digests``: the last ``REMEMBERED_IDS`` events applied, so an event re-delivered
  after a crash is not counted twice: 8-byte BLAKE2b digests of their message ids, oldest
  first, in one byte string (a long-lived customer's list of ids was four fifths of the
  profile, read and written again on every event). Profiles written by earlier versions hold
  the ids themselves in ``recent_message_ids`` until their next change; the list stays, empty,
  so an earlier version rolled back to reads every profile (its ids add to the digests).

A trait given by the data subject (a rectification, source ``data_subject``) outranks every
other source under every rule: only another rectification replaces it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from services.common.documents import copied
from services.common.identifiers import SENSITIVE_TYPES
from services.profile import computed as computed_traits
from services.profile.computed import DEFAULT_THRESHOLDS, RfmThresholds

TIMELINE_LIMIT = 10
# a profile stored before the full history existed has only these (its timeline is read from
# them), so a merge of two such keeps as many as those versions did
PRE_HISTORY_TIMELINE_LIMIT = 50
REMEMBERED_IDS = 1000
DIGEST_SIZE = 8

SURVIVORSHIP = {
    "birthday": "first_seen",
    "first_seen_channel": "first_seen",
    "email_verified": "most_trusted",
}
DEFAULT_RULE = "most_recent"
# where a trait came from, most trusted first (the envelope's channel decides)
SOURCE_TRUST = {"store": 4, "web": 3, "phone": 2, "email": 2, "social": 1, "system": 0}
DATA_SUBJECT = "data_subject"

# Segment trait names mapped to Muisti's (anything else keeps its own name)
TRAIT_NAMES = {"firstName": "first_name", "lastName": "last_name", "postalCode": "postcode",
               "birthday": "birthday", "phone": "phone", "email": "email"}

TIMELINE_FIELDS = ("order_id", "total", "currency", "url", "name", "sku", "category", "queue",
                   "disposition", "talk_seconds", "agent_id", "text", "event", "kind", "platform",
                   "complaint", "label", "survey", "score", "scale", "complaint_id")


def new_profile(profile_id: str) -> dict[str, Any]:
    aggregates = computed_traits.empty_aggregates()
    return {"_id": profile_id, "traits": {}, "identifiers": {}, "timeline": [],
            "aggregates": aggregates,
            "computed": computed_traits.derive(aggregates, datetime.now(UTC)),
            "history_months": [], "segments": [], "applied_digests": b"", "recent_message_ids": [],
            "merged_into": None}


def apply_event(profile: Mapping[str, Any] | None, event: Mapping[str, Any],
                as_of: datetime | None = None,
                thresholds: RfmThresholds = DEFAULT_THRESHOLDS) -> dict[str, Any]:
    """The profile after one resolved event (an envelope as a dict), its computed traits
    derived as of ``as_of`` (default now). Returns the profile unchanged (a copy) if the event
    was already applied."""
    result = copied(dict(profile)) if profile else new_profile(event["profile_id"])
    if applied(result, event["message_id"]):
        return result
    at = event_moment(event)
    payload = event.get("payload") or {}
    provenance = {"source": event.get("source"), "channel": event["channel"], "at": at,
                  "message_id": event["message_id"]}

    for type_, value in (event.get("identifiers") or {}).items():
        values = result["identifiers"].setdefault(type_, [])
        if value not in values:
            values.append(value)
    for name, value in _flatten_traits(payload.get("traits") or {}).items():
        _offer_trait(result["traits"], name, value, provenance)

    _add_to_timeline(result["timeline"], timeline_entry(event))
    aggregates = computed_traits.add_event(_aggregates(result), event, at)
    as_of = as_of or datetime.now(UTC)
    computed_traits.prune(aggregates, as_of)
    result["aggregates"] = aggregates
    result["computed"] = computed_traits.derive(aggregates, as_of, thresholds)
    result["history_months"] = sorted({*result.get("history_months", []), month_of(at)},
                                      reverse=True)
    _remember(result, digest(event["message_id"]))
    return result


def merge(survivor: Mapping[str, Any], merged: Mapping[str, Any],
          as_of: datetime | None = None,
          thresholds: RfmThresholds = DEFAULT_THRESHOLDS) -> dict[str, Any]:
    """The survivor after absorbing ``merged``: traits by survivorship, identifiers united,
    timelines and history months joined, aggregates combined and computed traits derived
    again. Idempotent: merging the same profile again changes nothing (its events are
    already among the survivor's)."""
    result = copied(dict(survivor))
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
    before_history = not result.get("history_months") and not merged.get("history_months")
    result["timeline"] = sorted(joined, key=lambda e: (e["at"], e["message_id"]), reverse=True)[
        :PRE_HISTORY_TIMELINE_LIMIT if before_history else TIMELINE_LIMIT]
    aggregates = computed_traits.combine(_aggregates(result), _aggregates(merged))
    result["aggregates"] = aggregates
    result["computed"] = computed_traits.derive(aggregates, as_of or datetime.now(UTC), thresholds)
    result["history_months"] = sorted({*result.get("history_months", []),
                                       *merged.get("history_months", [])}, reverse=True)
    _remember(result, _applied_digests(merged))
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
    by_subject = (new.get("source") == DATA_SUBJECT, current.get("source") == DATA_SUBJECT)
    if any(by_subject):  # the data subject's word outranks every rule; their latest counts
        return by_subject[0] and (not by_subject[1] or new["at"] >= current["at"])
    if rule == "first_seen":
        return new["at"] < current["at"]
    if rule == "most_trusted":
        new_trust = SOURCE_TRUST.get(new["channel"], 0)
        current_trust = SOURCE_TRUST.get(current["channel"], 0)
        if new_trust != current_trust:
            return new_trust > current_trust
    return new["at"] >= current["at"]


def timeline_entry(event: Mapping[str, Any]) -> dict[str, Any]:
    """An event summarised for the timeline and the full history."""
    payload = event.get("payload") or {}
    properties = payload.get("properties") if isinstance(payload.get("properties"),
                                                         Mapping) else {}
    classification = payload.get("classification")
    flags = ({"complaint": classification.get("complaint"), "label": classification.get("label")}
             if isinstance(classification, Mapping) else {})
    details = {**properties, **flags, **payload}
    return {"message_id": event["message_id"], "type": event["type"],
            "channel": event["channel"], "at": event_moment(event),
            "summary": {k: details[k] for k in TIMELINE_FIELDS
                        if k in details and not isinstance(details[k], Mapping | list)}}


def timeline_reach(profile: Mapping[str, Any], entries: int
                   ) -> tuple[datetime, timedelta] | None:
    """The moment of the profile's newest timeline entry, and how far back ``entries``
    entries probably reach from it: twice what the spacing of its most recent ones says.
    None when it keeps fewer than ``TIMELINE_LIMIT``: all its events are these few."""
    moments = [entry["at"] for entry in profile.get("timeline", ())]
    if len(moments) < TIMELINE_LIMIT:
        return None
    return max(moments), 2 * (max(moments) - min(moments)) * entries / (len(moments) - 1)


def _add_to_timeline(timeline: list, entry: dict[str, Any]) -> None:
    timeline.append(entry)
    timeline.sort(key=lambda e: (e["at"], e["message_id"]), reverse=True)
    del timeline[TIMELINE_LIMIT:]


def rectify(profile: Mapping[str, Any], fields: Mapping[str, Any], message_id: str,
            at: datetime, as_of: datetime | None = None,
            thresholds: RfmThresholds = DEFAULT_THRESHOLDS) -> dict[str, Any]:
    """The profile with ``fields`` set as traits given by the data subject (outranking every
    other source). Idempotent on ``message_id``."""
    result = copied(dict(profile))
    if applied(result, message_id):
        return result
    provenance = {"source": DATA_SUBJECT, "channel": "system", "at": at,
                  "message_id": message_id}
    for name, value in _flatten_traits(fields).items():
        _offer_trait(result["traits"], name, value, provenance)
    _remember(result, digest(message_id))
    result["computed"] = computed_traits.derive(_aggregates(result), as_of or datetime.now(UTC),
                                                thresholds)
    return result


def digest(message_id: str) -> bytes:
    return hashlib.blake2b(message_id.encode(), digest_size=DIGEST_SIZE).digest()


def applied(profile: Mapping[str, Any], message_id: str) -> bool:
    """Whether the event (or rectification) ``message_id`` is among the last
    ``REMEMBERED_IDS`` the profile took."""
    # a match across two digests is as unlikely as two ids with one digest (about 2**-51
    # for a full list), so the byte string is searched as it is
    return (message_id in profile.get("recent_message_ids", ())
            or digest(message_id) in profile.get("applied_digests", b""))


def _applied_digests(profile: Mapping[str, Any]) -> bytes:
    # the ids came after the digests when an earlier version rolled back to added them
    return (profile.get("applied_digests", b"")
            + b"".join(map(digest, profile.get("recent_message_ids", ()))))


def _remember(profile: dict[str, Any], digests: bytes) -> None:
    """Add ``digests`` to what the profile remembers applying, its ids of an earlier version
    turned into digests."""
    remembered = _applied_digests(profile) + digests
    profile["recent_message_ids"] = []
    profile["applied_digests"] = remembered[-REMEMBERED_IDS * DIGEST_SIZE:]


def refresh_computed(profile: Mapping[str, Any], as_of: datetime,
                     thresholds: RfmThresholds = DEFAULT_THRESHOLDS) -> dict[str, Any]:
    """The profile with its time-dependent computed traits (recency) derived as of
    ``as_of``."""
    return {**profile, "computed": computed_traits.derive(_aggregates(profile), as_of,
                                                          thresholds)}


def snapshot(profile: Mapping[str, Any]) -> dict[str, Any]:
    """The profile as cdp.profile.changes carries it: plain JSON values, no provenance."""
    return {"profile_id": profile["_id"],
            "identifiers": {t: list(v) for t, v in profile["identifiers"].items()},
            "traits": {name: plain(t["value"]) for name, t in profile["traits"].items()},
            "computed": plain(profile["computed"]),
            "segments": list(profile.get("segments", [])),
            "merged_into": profile.get("merged_into")}


def view(profile: Mapping[str, Any], unmasked: bool,
         recent: int = TIMELINE_LIMIT) -> dict[str, Any]:
    """The profile as a reader sees it: plain JSON, provenance per trait, sensitive
    identifiers masked unless ``unmasked``."""
    identifiers = {t: (list(values) if unmasked or t not in SENSITIVE_TYPES
                       else [mask(t, v) for v in values])
                   for t, values in profile["identifiers"].items()}
    traits = {}
    for name, trait in profile["traits"].items():
        value = trait["value"]
        if not unmasked and name in SENSITIVE_TYPES:
            value = mask(name, str(value))
        traits[name] = {"value": value, "source": trait.get("source"),
                        "channel": trait["channel"], "at": plain(trait["at"])}
    return {"profile_id": profile["_id"], "identifiers": identifiers, "traits": traits,
            "computed": plain(profile["computed"]),
            "segments": list(profile.get("segments", [])),
            "timeline": plain(profile["timeline"][:recent]),
            "merged_from": profile.get("absorbed", []),
            # traits withheld for want of explicit consent (names only; special_traits.py)
            "special_category_refusals": plain(profile.get("special_category_refusals", []))}


def mask(type_: str, value: str) -> str:
    return value[:6] + "*****" if type_ == "hetu" else "*****"


def name_of(profile: Mapping[str, Any]) -> tuple[str, str] | None:
    """(first, last) name for the name index, or None when the profile has no name."""
    traits = profile.get("traits") or {}
    first = str((traits.get("first_name") or {}).get("value") or "").strip()
    last = str((traits.get("last_name") or {}).get("value") or "").strip()
    if not first and not last:
        first, _, last = str((traits.get("name") or {}).get("value") or "").strip().partition(" ")
    return (first, last.strip()) if first or last else None


_LEAVES = (str, int, float, type(None))  # most of a profile: returned before any other check


def plain(value: Any) -> Any:
    """``value`` with datetimes as ISO-8601 strings, all the way down."""
    if isinstance(value, _LEAVES):
        return value
    if isinstance(value, datetime):
        return _utc(value).isoformat()
    if isinstance(value, dict | Mapping):  # a dict spares the abstract class's slow check
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    return value


def in_utc(at: datetime) -> datetime:
    """``at`` in UTC (a naive datetime taken as UTC)."""
    return _utc(at).astimezone(UTC)


def month_of(at: datetime) -> str:
    return in_utc(at).strftime("%Y-%m")


def event_moment(event: Mapping[str, Any]) -> datetime:
    return _moment(event["occurred_at"])


def _aggregates(profile: Mapping[str, Any]) -> dict[str, Any]:
    """The profile's aggregates; a profile stored before aggregates existed starts from its
    computed counters."""
    if profile.get("aggregates"):
        return profile["aggregates"]
    seeded = computed_traits.empty_aggregates()
    old = profile.get("computed") or {}
    for name in ("purchase_count", "purchase_total", "calls", "first_seen", "last_seen",
                 "last_purchase_at", "last_contact"):
        if old.get(name) is not None:
            seeded[name] = old[name]
    return seeded


def _utc(moment: datetime) -> datetime:
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _moment(value: Any) -> datetime:
    """An aware datetime at millisecond precision, as the store keeps it, so a value read back
    equals the one written (history pages are sets of entries)."""
    if not isinstance(value, datetime):
        value = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    value = _utc(value)
    return value.replace(microsecond=value.microsecond // 1000 * 1000)
