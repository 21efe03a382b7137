"""Computed traits: running aggregates folded from events, and the traits derived from them.

Pure functions over plain dicts. A profile keeps ``aggregates`` that combine commutatively
(counts, sums, per-key counters, latest-by-time values), so events may arrive in any order and
a merge simply combines two profiles' aggregates; ``derive`` then recomputes every computed
trait from the aggregates, the same way after an event, a merge or a replay.

Derived traits:

* purchases: ``purchase_count``, ``purchase_total``, ``average_order_value``,
  ``last_purchase_at``; ``calls``; ``first_seen`` / ``last_seen``; ``last_contact`` per channel;
* RFM: ``rfm_recency``, ``rfm_frequency``, ``rfm_monetary`` (scores 1–5 from fixed,
  configurable thresholds, not quintiles, so a score never changes because *other* customers
  bought something), ``rfm_score`` ("545") and ``rfm_segment`` from ``RFM_SEGMENTS``;
* ``favourite_product_groups`` (top 3 by purchased quantity, then by views),
  ``preferred_store`` (most purchases), ``preferred_channel`` (most contacts);
* ``open_complaints`` (count) and ``complaints`` (the open ones, newest first): a social
  message with ``complaint: true`` (or ``classification.complaint: true``) or a
  ``Feedback Submitted`` of kind ``complaint`` opens one;
  a ``Complaint Resolved`` event closes the one named by ``complaint_id`` or, without it,
  every complaint opened before it;
* ``satisfaction``: the latest ``Survey Answered`` {survey, score, scale, at};
* ``campaign_reactions``: sent / opened / clicked / converted counts.

Aggregate counters are keyed by names from events (categories, stores, event types); those
names are made safe as document keys with ``safe_key``.

RFM segments, from the recency and frequency scores (the widely used R×F grid):

| R \\ F | 1 | 2 | 3 | 4 | 5 |
|---|---|---|---|---|---|
| 5 | new | potential_loyalist | potential_loyalist | champions | champions |
| 4 | promising | potential_loyalist | potential_loyalist | loyal | loyal |
| 3 | about_to_sleep | about_to_sleep | need_attention | loyal | loyal |
| 2 | hibernating | hibernating | at_risk | at_risk | cannot_lose |
| 1 | hibernating | hibernating | at_risk | at_risk | cannot_lose |

A profile without purchases has no RFM scores and the segment ``prospect``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from services.common.documents import copied

PURCHASE_EVENTS = {"Order Completed"}
VIEW_EVENTS = {"Product Viewed", "Product Clicked", "Product Added"}
COMPLAINT_RESOLVED_EVENTS = {"Complaint Resolved", "Complaint Closed"}
SURVEY_EVENTS = {"Survey Answered"}
CAMPAIGN_REACTIONS = {
    "Email Sent": "sent", "Campaign Sent": "sent", "Email Delivered": "sent",
    "Email Opened": "opened", "Email Link Clicked": "clicked", "Campaign Converted": "converted",
}
REACTIONS = ("sent", "opened", "clicked", "converted")
DAILY_COUNT_DAYS = 400  # the longest window an event rule may look back
COMPLAINTS_KEPT = 50
COUNTER_KEYS_KEPT = 100
MAX_AMOUNT = 1e9  # a plausible order value only: an absurd one would overflow the totals

RFM_SEGMENTS = {
    5: ("new", "potential_loyalist", "potential_loyalist", "champions", "champions"),
    4: ("promising", "potential_loyalist", "potential_loyalist", "loyal", "loyal"),
    3: ("about_to_sleep", "about_to_sleep", "need_attention", "loyal", "loyal"),
    2: ("hibernating", "hibernating", "at_risk", "at_risk", "cannot_lose"),
    1: ("hibernating", "hibernating", "at_risk", "at_risk", "cannot_lose"),
}


@dataclass(frozen=True)
class RfmThresholds:
    """Score boundaries. Recency: days since the last purchase at most ``recency_days[0]``
    scores 5, at most ``[1]`` 4 … beyond ``[3]`` 1. Frequency (purchases) and monetary (total)
    score 5 from ``[3]`` up, 4 from ``[2]``, 3 from ``[1]``, 2 from ``[0]``, else 1."""

    recency_days: tuple[float, ...] = (30, 90, 180, 365)
    frequency: tuple[float, ...] = (2, 3, 5, 8)
    monetary: tuple[float, ...] = (50, 200, 500, 1000)

    @classmethod
    def parse(cls, text: str) -> RfmThresholds:
        """``recency=30,90,180,365;frequency=2,3,5,8;monetary=50,200,500,1000`` (any part may
        be left out). Raises ValueError on a malformed or non-increasing list."""
        values: dict[str, tuple[float, ...]] = {}
        names = {"recency": "recency_days", "frequency": "frequency", "monetary": "monetary"}
        for part in filter(None, (p.strip() for p in text.split(";"))):
            name, _, numbers = part.partition("=")
            if name.strip() not in names:
                raise ValueError(f"unknown RFM part {name.strip()!r}")
            bounds = tuple(float(n) for n in numbers.split(","))
            if len(bounds) != 4 or list(bounds) != sorted(set(bounds)):
                raise ValueError(f"{name.strip()} needs four increasing numbers")
            values[names[name.strip()]] = bounds
        return cls(**values)


DEFAULT_THRESHOLDS = RfmThresholds()


def empty_aggregates() -> dict[str, Any]:
    return {"purchase_count": 0, "purchase_total": 0.0, "calls": 0, "first_seen": None,
            "last_seen": None, "last_purchase_at": None, "last_contact": {},
            "channels": {}, "stores": {}, "groups_bought": {}, "groups_viewed": {},
            "complaints": {}, "resolved_complaints": [], "complaints_resolved_until": None,
            "satisfaction": None, "reactions": {}, "daily_counts": {}}


def add_event(aggregates: Mapping[str, Any] | None, event: Mapping[str, Any],
              at: datetime) -> dict[str, Any]:
    """The aggregates after one event (an envelope as a dict, ``at`` its occurrence)."""
    agg = copied(dict(aggregates)) if aggregates else empty_aggregates()
    type_, channel = event["type"], event["channel"]
    payload = event.get("payload") or {}
    properties = payload.get("properties") if isinstance(payload.get("properties"),
                                                         Mapping) else {}
    details = {**properties, **payload}
    _latest(agg["last_contact"], channel, at)
    agg["first_seen"] = min(agg["first_seen"] or at, at)
    agg["last_seen"] = max(agg["last_seen"] or at, at)
    if channel != "system":
        _count(agg["channels"], channel)
    day = at.astimezone(UTC).date().isoformat()
    _count(agg["daily_counts"].setdefault(safe_key(type_), {}), day)

    if type_ in PURCHASE_EVENTS:
        agg["purchase_count"] += 1
        total = details.get("total", details.get("revenue"))
        if _is_amount(total):
            agg["purchase_total"] = round(agg["purchase_total"] + float(total), 2)
        agg["last_purchase_at"] = max(agg["last_purchase_at"] or at, at)
        store = details.get("store_id") or details.get("store")
        if isinstance(store, str | int) and not isinstance(store, bool):
            _count(agg["stores"], safe_key(str(store)))
        elif channel == "store":
            _count(agg["stores"], "store")
        for product in details.get("products") or ():
            if isinstance(product, Mapping) and isinstance(product.get("category"), str):
                quantity = product.get("quantity", 1)
                quantity = quantity if isinstance(quantity, int) and 0 < quantity < 10_000 else 1
                _count(agg["groups_bought"], safe_key(product["category"]), quantity)
        if isinstance(_campaign(payload, details), str):
            _count(agg["reactions"], "converted")
    elif type_ in VIEW_EVENTS and isinstance(details.get("category"), str):
        _count(agg["groups_viewed"], safe_key(details["category"]))
    if channel == "phone" and type_ == "Call Started":
        agg["calls"] += 1
    if _opens_complaint(type_, channel, details):
        complaint_id = safe_key(str(details.get("complaint_id") or event["message_id"]))
        agg["complaints"][complaint_id] = {
            "at": at, "channel": channel, "type": type_,
            "text": str(details.get("text") or "")[:280]}
        _keep_newest_complaints(agg["complaints"])
    if type_ in COMPLAINT_RESOLVED_EVENTS:
        complaint_id = details.get("complaint_id")
        if complaint_id:
            resolved = agg["resolved_complaints"]
            if safe_key(str(complaint_id)) not in resolved:
                resolved.append(safe_key(str(complaint_id)))
                del resolved[:-COMPLAINTS_KEPT]
        else:
            until = agg["complaints_resolved_until"]
            agg["complaints_resolved_until"] = max(until or at, at)
    if type_ in SURVEY_EVENTS and _is_amount(details.get("score")):
        answer = {"survey": str(details.get("survey") or ""), "score": details["score"],
                  "scale": details.get("scale") if isinstance(details.get("scale"),
                                                              str | int | float) else None,
                  "at": at, "message_id": event["message_id"]}
        current = agg["satisfaction"]
        if current is None or (at, answer["message_id"]) > (current["at"],
                                                              current["message_id"]):
            agg["satisfaction"] = answer
    reaction = CAMPAIGN_REACTIONS.get(type_)
    if reaction:
        _count(agg["reactions"], reaction)
    return agg


def combine(a: Mapping[str, Any], b: Mapping[str, Any]) -> dict[str, Any]:
    """Two profiles' aggregates as one (commutative, used by merges)."""
    a, b = {**empty_aggregates(), **a}, {**empty_aggregates(), **b}
    result = copied(a)
    for name in ("purchase_count", "calls"):
        result[name] = a[name] + b[name]
    result["purchase_total"] = round(a["purchase_total"] + b["purchase_total"], 2)
    for name, pick in (("first_seen", min), ("last_seen", max), ("last_purchase_at", max),
                       ("complaints_resolved_until", max)):
        values = [v for v in (a[name], b[name]) if v is not None]
        result[name] = pick(values) if values else None
    for channel, moment in b["last_contact"].items():
        _latest(result["last_contact"], channel, moment)
    for name in ("channels", "stores", "groups_bought", "groups_viewed", "reactions"):
        for key, n in b[name].items():
            _count(result[name], key, n)
    for type_, days in b["daily_counts"].items():
        mine = result["daily_counts"].setdefault(type_, {})
        for day, n in days.items():
            mine[day] = mine.get(day, 0) + n
    result["complaints"].update(copied(b["complaints"]))
    _keep_newest_complaints(result["complaints"])
    result["resolved_complaints"] = sorted(set(a["resolved_complaints"])
                                           | set(b["resolved_complaints"]))[-COMPLAINTS_KEPT:]
    answers = [s for s in (a["satisfaction"], b["satisfaction"]) if s]
    result["satisfaction"] = copied(max(answers, key=lambda s: (s["at"], s["message_id"]))
                                           ) if answers else None
    return result


def prune(aggregates: dict[str, Any], as_of: datetime) -> None:
    """Drop daily event counts older than any rule may look back (keeps documents small)."""
    oldest = (as_of - timedelta(days=DAILY_COUNT_DAYS)).date().isoformat()
    for type_ in list(aggregates["daily_counts"]):
        days = {d: n for d, n in aggregates["daily_counts"][type_].items() if d >= oldest}
        if days:
            aggregates["daily_counts"][type_] = days
        else:
            del aggregates["daily_counts"][type_]


def derive(aggregates: Mapping[str, Any], as_of: datetime,
           thresholds: RfmThresholds = DEFAULT_THRESHOLDS) -> dict[str, Any]:
    """Every computed trait from the aggregates, as of ``as_of`` (recency depends on it)."""
    agg = {**empty_aggregates(), **aggregates}
    count = agg["purchase_count"]
    computed: dict[str, Any] = {
        "purchase_count": count, "purchase_total": agg["purchase_total"],
        "average_order_value": round(agg["purchase_total"] / count, 2) if count else 0,
        "calls": agg["calls"], "last_contact": dict(agg["last_contact"]),
    }
    for name in ("first_seen", "last_seen", "last_purchase_at"):
        if agg[name] is not None:
            computed[name] = agg[name]
    computed.update(rfm(agg, as_of, thresholds))
    bought, viewed = agg["groups_bought"], agg["groups_viewed"]
    computed["favourite_product_groups"] = sorted(
        set(bought) | set(viewed), key=lambda g: (-bought.get(g, 0), -viewed.get(g, 0), g))[:3]
    computed["preferred_store"] = _most(agg["stores"])
    computed["preferred_channel"] = _most(agg["channels"])
    open_complaints = open_complaint_list(agg)
    computed["open_complaints"] = len(open_complaints)
    computed["complaints"] = open_complaints
    satisfaction = agg["satisfaction"]
    computed["satisfaction"] = ({k: v for k, v in satisfaction.items() if k != "message_id"}
                                if satisfaction else None)
    computed["campaign_reactions"] = {r: agg["reactions"].get(r, 0) for r in REACTIONS}
    return computed


def rfm(aggregates: Mapping[str, Any], as_of: datetime,
        thresholds: RfmThresholds = DEFAULT_THRESHOLDS) -> dict[str, Any]:
    """RFM scores and segment (see the module docstring's table)."""
    if not aggregates["purchase_count"] or aggregates["last_purchase_at"] is None:
        return {"rfm_recency": None, "rfm_frequency": None, "rfm_monetary": None,
                "rfm_score": None, "rfm_segment": "prospect"}
    days = max((as_of - aggregates["last_purchase_at"]).total_seconds() / 86400, 0)
    recency = 5 - sum(days > bound for bound in thresholds.recency_days)
    frequency = 1 + sum(aggregates["purchase_count"] >= b for b in thresholds.frequency)
    monetary = 1 + sum(aggregates["purchase_total"] >= b for b in thresholds.monetary)
    return {"rfm_recency": recency, "rfm_frequency": frequency, "rfm_monetary": monetary,
            "rfm_score": f"{recency}{frequency}{monetary}",
            "rfm_segment": RFM_SEGMENTS[recency][frequency - 1]}


def open_complaint_list(aggregates: Mapping[str, Any]) -> list[dict[str, Any]]:
    resolved = set(aggregates["resolved_complaints"])
    until = aggregates["complaints_resolved_until"]
    open_ = [{"complaint_id": cid, **c} for cid, c in aggregates["complaints"].items()
             if cid not in resolved and (until is None or c["at"] > until)]
    return sorted(open_, key=lambda c: (c["at"], c["complaint_id"]), reverse=True)


def event_count(aggregates: Mapping[str, Any], type_: str, within_days: int,
                as_of: datetime) -> int:
    """How many ``type_`` events happened in the ``within_days`` days up to ``as_of``
    (whole UTC days, today included)."""
    since = (as_of.astimezone(UTC) - timedelta(days=within_days - 1)).date().isoformat()
    until = as_of.astimezone(UTC).date().isoformat()
    days = (aggregates.get("daily_counts") or {}).get(safe_key(type_), {})
    return sum(n for day, n in days.items() if since <= day <= until)


def safe_key(name: str) -> str:
    """A name from an event usable as a document key: no ``.``, no leading ``$``, bounded."""
    key = name.replace(".", "_").lstrip("$").strip()[:80]
    return key or "_"


def _opens_complaint(type_: str, channel: str, details: Mapping[str, Any]) -> bool:
    classification = details.get("classification")
    flagged = details.get("complaint") is True or (
        isinstance(classification, Mapping) and classification.get("complaint") is True)
    if channel == "social" and flagged:
        return True
    return type_ == "Feedback Submitted" and details.get("kind") == "complaint"


def _campaign(payload: Mapping[str, Any], details: Mapping[str, Any]) -> Any:
    context = payload.get("context") if isinstance(payload.get("context"), Mapping) else {}
    campaign = details.get("campaign_id") or context.get("campaign")
    if isinstance(campaign, Mapping):
        campaign = campaign.get("name") or campaign.get("id")
    return campaign


def _keep_newest_complaints(complaints: dict) -> None:
    if len(complaints) > COMPLAINTS_KEPT:
        oldest_first = sorted(complaints, key=lambda cid: (complaints[cid]["at"], cid))
        for cid in oldest_first[:len(complaints) - COMPLAINTS_KEPT]:
            del complaints[cid]


def _count(counter: dict, key: str, n: int = 1) -> None:
    if key in counter or len(counter) < COUNTER_KEYS_KEPT:
        counter[key] = counter.get(key, 0) + n


def _latest(moments: dict, key: str, at: datetime) -> None:
    if key not in moments or at > moments[key]:
        moments[key] = at


def _most(counter: Mapping[str, int]) -> str | None:
    return min(counter, key=lambda k: (-counter[k], k)) if counter else None


def _is_amount(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and abs(
        value) < MAX_AMOUNT
