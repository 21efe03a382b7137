"""``python -m services.identity migrate-hetus [--dry-run]``: the identity service's
collections rewritten from plain hetus (stored before hetu protection) to the keyed digest the
graph links today (services.common.hetu_migration runs these rules).

* ``identity_links``: ``_id`` ``hetu:<code>`` becomes ``hetu:<digest>`` (inserted, then the
  old link deleted) with its ``value``; the link keeps its profile, so resolving the hetu
  finds the same profile as before;
* ``identity_profiles``: the profile's ``identifiers.hetu`` list;
* ``identity_person_records``: the matching record's ``id_number`` (matching compares
  digests: equal hetus still match, a mistyped one no longer does);
* ``identity_log`` (merges' identifier, splits' identifiers) and ``identity_conflicts``
  (their identifier, and the ``_id`` that ends with its key).
"""

from __future__ import annotations

from typing import Any

from services.common.hetu_migration import CollectionRule, PlainHetus
from services.common.hetu_protection import HETU
from services.identity.graph_store import CONFLICTS, LINKS, LOG, PROFILES
from services.identity.suggestions import RECORDS


def rewrite_link(hetus: PlainHetus, doc: dict[str, Any]) -> dict[str, Any] | None:
    if doc.get("type") != HETU:
        return None
    digest = hetus.digest(doc.get("value"))
    if digest is None:
        return None
    return {**doc, "_id": f"{HETU}:{digest}", "value": digest}


def rewrite_profile(hetus: PlainHetus, doc: dict[str, Any]) -> dict[str, Any] | None:
    identifiers = doc.get("identifiers") or {}
    digests = hetus.digests(identifiers.get(HETU) or [])
    if digests is None:
        return None
    return {**doc, "identifiers": {**identifiers, HETU: digests}}


def rewrite_person_record(hetus: PlainHetus, doc: dict[str, Any]) -> dict[str, Any] | None:
    digest = hetus.digest(doc.get("id_number"))
    return None if digest is None else {**doc, "id_number": digest}


def _identifier(hetus: PlainHetus, identifier: Any) -> dict[str, Any] | None:
    """A ``{"type", "value"}`` identifier with its plain hetu as digest (None: unchanged)."""
    if not isinstance(identifier, dict) or identifier.get("type") != HETU:
        return None
    digest = hetus.digest(identifier.get("value"))
    return None if digest is None else {**identifier, "value": digest}


def rewrite_log_entry(hetus: PlainHetus, doc: dict[str, Any]) -> dict[str, Any] | None:
    new = dict(doc)
    merged_on = _identifier(hetus, doc.get("identifier"))
    if merged_on is not None:
        new["identifier"] = merged_on
    split = [_identifier(hetus, i) or i for i in doc.get("identifiers") or []]
    if split != (doc.get("identifiers") or []):
        new["identifiers"] = split
    return None if new == doc else new


def rewrite_conflict(hetus: PlainHetus, doc: dict[str, Any]) -> dict[str, Any] | None:
    identifier = _identifier(hetus, doc.get("identifier"))
    if identifier is None:
        return None
    return {**doc, "_id": hetus.key(doc["_id"]) or doc["_id"], "identifier": identifier}


RULES = [CollectionRule(LINKS, rewrite_link),
         CollectionRule(PROFILES, rewrite_profile),
         CollectionRule(RECORDS, rewrite_person_record),
         CollectionRule(LOG, rewrite_log_entry),
         CollectionRule(CONFLICTS, rewrite_conflict)]
