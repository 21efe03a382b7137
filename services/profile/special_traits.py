"""Special categories of personal data (GDPR art. 9) in the profile projection: a trait
classified in a special category (services/common/special_categories.toml) is stored only
when the profile's explicit consent for the category's purpose was on record when the event
happened. Without it the trait is withheld from the event before the projection applies it,
counted (``muisti_special_category_traits_refused_total``) and noted on the profile by name
only (``special_category_refusals``, shown in the profile view), never by value.

A consent granted later keeps such traits from the events after the grant, not the earlier
ones: the grant does not reach back. The consent states are the ones the profile service
follows on cdp.consent.changes (``profile_consents``); they are read only for an event that
carries a classified trait, so ordinary events cost nothing more.

Plain functions over plain dicts; the worker reads the states and stores the profile.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from services.common.special_categories import Classification

REFUSALS_KEPT = 50


@dataclass(frozen=True)
class Refusal:
    trait: str
    category: str
    purpose: str


def classified(event: Mapping[str, Any], classification: Classification) -> list[Refusal]:
    """The event's traits that are special categories (before looking at consent)."""
    traits = (event.get("payload") or {}).get("traits")
    if not isinstance(traits, Mapping):
        return []
    found = []
    for name in traits:
        category = classification.category_of(name) if isinstance(name, str) else None
        if category is not None:
            found.append(Refusal(name, category.name, category.purpose))
    return found


def consented(states: Mapping[str, Mapping[str, Any]], purpose: str, at: datetime) -> bool:
    """Whether explicit consent for ``purpose`` was in force at ``at``: allowed, and
    collected no later than that."""
    state = states.get(purpose) or {}
    collected = state.get("collected_at")
    return state.get("allowed") is True and isinstance(collected, datetime) and collected <= at


def withhold(event: Mapping[str, Any], candidates: list[Refusal],
             states: Mapping[str, Mapping[str, Any]],
             at: datetime) -> tuple[dict[str, Any], list[Refusal]]:
    """The event without the special-category traits its profile had no consent for at
    ``at``, and those refused."""
    refused = [c for c in candidates if not consented(states, c.purpose, at)]
    if not refused:
        return dict(event), []
    names = {r.trait for r in refused}
    payload = dict(event.get("payload") or {})
    payload["traits"] = {k: v for k, v in payload["traits"].items() if k not in names}
    return {**event, "payload": payload}, refused


def note_refusals(profile: dict[str, Any], refused: list[Refusal], message_id: str,
                  at: datetime) -> None:
    """Keep on the profile which traits were refused from which event (names, not values),
    the latest ``REFUSALS_KEPT``."""
    notes = [*profile.get("special_category_refusals", []),
             *({"trait": r.trait, "category": r.category, "purpose": r.purpose,
                "message_id": message_id, "at": at} for r in refused)]
    profile["special_category_refusals"] = notes[-REFUSALS_KEPT:]
