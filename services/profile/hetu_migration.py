"""``python -m services.profile migrate-hetus [--dry-run]``: the profile service's
collections rewritten from plain hetus (stored before hetu protection) to what the projection
keeps today (services.common.hetu_migration runs these rules).

* ``profiles``: ``identifiers.hetu`` as digests; a trait ingestion takes for a hetu (named
  ``hetu``, ``henkilotunnus``, ``ssn``… or holding a hetu-shaped value) becomes the ``hetu``
  trait with the sealed copy, keeping its provenance, as the projection would have stored it
  from a protected event. A profile keeps one ``hetu`` trait (one already sealed wins, then
  the ``hetu`` trait, then the others in order); the other hetu traits, and invalid values
  under a hetu's name, are dropped, as ingestion drops them. No identifier is added: the
  graph (the identity service) decides identifiers;
* ``profile_identifiers``: the index entry ``hetu:<code>`` becomes ``hetu:<digest>``, so a
  lookup by hetu finds the profile again;
* ``profile_events``: each kept event's identifiers and traits protected as ingestion
  protects an event.
"""

from __future__ import annotations

from typing import Any

from services.common.hetu_migration import CollectionRule, PlainHetus
from services.common.hetu_protection import HETU
from services.profile.history import EVENTS
from services.profile.profile_store import IDENTIFIERS, PROFILES, pack, unpack


def rewrite_profile(hetus: PlainHetus, doc: dict[str, Any]) -> dict[str, Any] | None:
    rewritten = hetus.profile_document(unpack(doc), _value, _with_value)
    return None if rewritten is None else pack(rewritten)


def _value(trait: Any) -> Any:
    return trait.get("value") if isinstance(trait, dict) else None


def _with_value(trait: Any, sealed: str) -> dict[str, Any]:
    return {**trait, "value": sealed}


def rewrite_index_entry(hetus: PlainHetus, doc: dict[str, Any]) -> dict[str, Any] | None:
    key = hetus.key(doc["_id"]) if str(doc["_id"]).startswith(f"{HETU}:") else None
    return None if key is None else {**doc, "_id": key}


def rewrite_event(hetus: PlainHetus, doc: dict[str, Any]) -> dict[str, Any] | None:
    payload = doc.get("payload") if isinstance(doc.get("payload"), dict) else {}
    traits = payload.get("traits")
    protected = hetus.protect(doc.get("identifiers") or {},
                              traits if isinstance(traits, dict) else None)
    if not protected.changed:
        return None
    return {**doc, "identifiers": protected.identifiers,
            "payload": protected.payload(payload) if doc.get("payload") is not None else None}


RULES = [CollectionRule(PROFILES, rewrite_profile),
         CollectionRule(IDENTIFIERS, rewrite_index_entry),
         CollectionRule(EVENTS, rewrite_event)]
