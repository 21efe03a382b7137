"""``python -m services.export migrate-hetus [--dry-run]``: the export service's read model
rewritten from plain hetus (stored before hetu protection) to what the profile service's
snapshots carry today (services.common.hetu_migration runs these rules), so no run or stream
sends a plain hetu from a profile that has not changed since.

* ``export_profiles``: ``identifiers.hetu`` as digests, hetu traits as the one ``hetu``
  trait holding the sealed copy;
* ``export_subject_index``: ``identifier:hetu:<code>`` entries become
  ``identifier:hetu:<digest>`` (their profile ids joined with an entry already there).

What partners received (``export_deliveries``, ``export_notices``) is left as it is: it is
the record of what each partner holds, which a deletion notice must name as they got it.
"""

from __future__ import annotations

from typing import Any

from services.common.hetu_migration import CollectionRule, PlainHetus
from services.common.hetu_protection import HETU
from services.common.store import pack, unpack
from services.export.export_store import PROFILE_FIELDS, PROFILES, SUBJECT_INDEX


def rewrite_profile(hetus: PlainHetus, doc: dict[str, Any]) -> dict[str, Any] | None:
    rewritten = hetus.profile_document(unpack(doc))
    return None if rewritten is None else pack(rewritten, PROFILE_FIELDS)


def rewrite_index_entry(hetus: PlainHetus, doc: dict[str, Any]) -> dict[str, Any] | None:
    key = (hetus.key(doc["_id"]) if str(doc["_id"]).startswith(f"identifier:{HETU}:")
           else None)
    return None if key is None else {**doc, "_id": key}


RULES = [CollectionRule(PROFILES, rewrite_profile),
         CollectionRule(SUBJECT_INDEX, rewrite_index_entry, owner_field=None, merge_lists=True)]
