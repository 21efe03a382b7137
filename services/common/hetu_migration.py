"""Migrating hetus stored in the clear by versions before hetu protection
(services.common.hetu_protection) to the forms ingestion gives them today: the keyed digest
(``hmac:…``) where a hetu is matched or looked up, the sealed copy (``sealed1:…``) where it is
shown.

Each service migrates its own collections (``python -m services.<name> migrate-hetus
[--dry-run]``): it lists them as :class:`CollectionRule`\\ s, each a pure function that rewrites
one document with the help of :class:`PlainHetus` (returning None when the document holds no
plain hetu, so a second run changes nothing). :func:`migrate` is the thin store adapter:

* a document whose ``_id`` stays is replaced, guarded by its ``version`` when it has one (the
  profile store's optimistic lock: a worker that read it before cannot write the old
  hetu back);
* a document whose ``_id`` holds the hetu (``hetu:<code>`` links and index entries) is
  inserted under the digest form first and the old one deleted after, so a run stopped
  half-way leaves both, never neither, and the next run finishes it. When the new ``_id`` is
  already taken, by the same owner (``owner_field``) the old document is just deleted; by
  another it is a conflict: left as it is and counted, for a person to resolve (the exit
  status is 1).

The JSON summary counts per collection; it never names a hetu. A dry run counts what would
change and writes nothing, not even the data keys the sealed copies would need.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import pymongo.errors
from pymongo.database import Database

from services.common import store
from services.common.config import ConfigError, Settings
from services.common.hetu_protection import (
    HETU,
    HETU_TRAIT_NAMES,
    HetuProtector,
    Protected,
    is_sealed_hetu,
    may_hold_hetu,
)
from services.common.identifiers import InvalidIdentifier, is_hetu_digest, normalise
from services.common.shredding import MongoWrappedKeys, WrappedKeyStore

KEY_SEPARATOR = f"{HETU}:"
PAGE = 500


class PlainHetus:
    """What ingestion makes of a plain hetu today, for the collection rules."""

    def __init__(self, protector: HetuProtector):
        self._protector = protector

    def digest(self, value: Any) -> str | None:
        """The digest of a plain, valid hetu; None for anything else (a digest already, an
        invalid code, not a string): that is left as it is."""
        code = _code(value)
        return None if code is None else self._protector.digest(code)

    def digests(self, values: Iterable[Any]) -> list[Any] | None:
        """``values`` with each plain hetu as its digest, duplicates dropped; None when none
        was plain."""
        values = list(values)
        rewritten = [self.digest(value) or value for value in values]
        return None if rewritten == values else list(dict.fromkeys(rewritten))

    def key(self, key: Any) -> str | None:
        """A key ending in ``hetu:<code>`` (``hetu:<code>``, ``<message>:hetu:<code>``) with
        the digest in place of the code; None when it holds no plain hetu."""
        if not isinstance(key, str):
            return None
        head, separator, tail = key.rpartition(KEY_SEPARATOR)
        digest = self.digest(tail) if separator else None
        return None if digest is None else f"{head}{separator}{digest}"

    def sealed(self, value: Any) -> str | None:
        """The sealed copy of a plain, valid hetu, under its digest's data key; None for
        anything else."""
        code = _code(value)
        return None if code is None else self._protector.seal(self._protector.digest(code),
                                                               code)

    def profile_document(self, doc: dict[str, Any],
                         value_of: Callable[[Any], Any] = lambda trait: trait,
                         with_value: Callable[[Any, str], Any] = lambda trait, sealed: sealed,
                         ) -> dict[str, Any] | None:
        """A profile-shaped document (``identifiers`` by type, ``traits``) with its hetus
        protected; None when none is in the clear. ``value_of``/``with_value`` as for
        ``traits``."""
        identifiers = doc.get("identifiers") or {}
        digests = self.digests(identifiers.get(HETU) or [])
        traits = self.traits(doc.get("traits") or {}, value_of, with_value)
        if digests is None and traits is None:
            return None
        new = dict(doc)
        if digests is not None:
            new["identifiers"] = {**identifiers, HETU: digests}
        if traits is not None:
            new["traits"] = traits
        return new

    def traits(self, traits: Mapping[str, Any],
               value_of: Callable[[Any], Any] = lambda trait: trait,
               with_value: Callable[[Any, str], Any] = lambda trait, sealed: sealed,
               ) -> dict[str, Any] | None:
        """``traits`` with every trait ingestion takes for a hetu replaced by the one
        ``hetu`` trait holding the sealed copy; None when none is in the clear. A hetu trait
        already sealed wins, then one named ``hetu``, then the others in order; the rest, and
        invalid values under a hetu's name, are dropped, as ingestion drops them.
        ``value_of`` reads a trait's value and ``with_value`` makes the new trait from the old
        one, for stores that keep more than the value (provenance)."""
        held = [name for name, trait in traits.items()
                if self.is_hetu_trait(name, value_of(trait))]
        if not held:
            return None
        kept = {name: trait for name, trait in traits.items() if name not in held}
        for name in sorted(held, key=lambda n: n != HETU):  # the hetu trait first
            sealed = self.sealed(value_of(traits[name]))
            if sealed is not None and not (HETU in kept and is_sealed_hetu(value_of(kept[HETU]))):
                kept[HETU] = with_value(traits[name], sealed)
        return kept

    def protect(self, identifiers: Mapping[str, Any],
                traits: Mapping[str, Any] | None) -> Protected:
        """An event's identifiers and traits as ingestion protects them."""
        return self._protector.protect(identifiers, traits)

    @staticmethod
    def is_hetu_trait(trait: str, value: Any) -> bool:
        """Whether ingestion takes this trait out of the traits as a hetu in the clear: a
        hetu's trait name (an invalid value is dropped) or a valid hetu under any name."""
        return may_hold_hetu(trait, value) and (trait in HETU_TRAIT_NAMES
                                                or _code(value) is not None)


def _code(value: Any) -> str | None:
    if not isinstance(value, str) or is_hetu_digest(value.strip()):
        return None
    try:
        return normalise(HETU, value)
    except InvalidIdentifier:
        return None


Rewrite = Callable[[PlainHetus, dict[str, Any]], dict[str, Any] | None]


@dataclass(frozen=True)
class CollectionRule:
    """One collection's migration: ``rewrite`` gives a document's new form (None when it
    holds no plain hetu); ``owner_field`` names what must agree for a document already
    stored under a rewritten ``_id`` to be the same one (None: any such document is). With
    ``merge_lists`` such a document instead gets the list fields of the rewritten one added
    (an index entry listing ids: both entries' ids end up under the digest)."""

    collection: str
    rewrite: Rewrite
    owner_field: str | None = "profile_id"
    merge_lists: bool = False


def migrate(db: Database, rules: Iterable[CollectionRule], hetus: PlainHetus, *,
            dry_run: bool) -> dict[str, Any]:
    """Run every rule over its whole collection; returns the summary (see the module)."""
    summary: dict[str, Any] = {"dry_run": dry_run, "collections": {}}
    for rule in rules:
        summary["collections"][rule.collection] = _migrate_collection(
            db[rule.collection], rule, hetus, dry_run)
    counts = summary["collections"].values()
    summary["changed"] = sum(c["rewritten"] + c["rekeyed"] for c in counts)
    summary["conflicts"] = sum(c["conflicts"] for c in counts)
    return summary


def _migrate_collection(collection, rule: CollectionRule, hetus: PlainHetus,
                        dry_run: bool) -> dict[str, int]:
    counts = {"scanned": 0, "rewritten": 0, "rekeyed": 0, "conflicts": 0,
              "changed_meanwhile": 0}
    # the ids listed once: what is inserted meanwhile (under digest keys) is current already
    for page in store.documents_after(collection, None, PAGE):
        for doc in page:
            counts["scanned"] += 1
            new = rule.rewrite(hetus, doc)
            if new is None:
                continue
            if dry_run:
                counts["rewritten" if new["_id"] == doc["_id"] else "rekeyed"] += 1
            elif new["_id"] == doc["_id"]:
                counts["rewritten" if _replace(collection, doc, new)
                       else "changed_meanwhile"] += 1
            else:
                counts["rekeyed" if _rekey(collection, rule, doc, new) else "conflicts"] += 1
    return counts


def _replace(collection, old: dict[str, Any], new: dict[str, Any]) -> bool:
    guard = {"_id": old["_id"]}
    if "version" in old:
        guard["version"] = old["version"]
        new = {**new, "version": old["version"] + 1}
    return collection.replace_one(guard, new).matched_count == 1


def _rekey(collection, rule: CollectionRule, old: dict[str, Any],
           new: dict[str, Any]) -> bool:
    """Insert the new document, then delete the old; False (nothing changed) when the new
    ``_id`` belongs to another owner."""
    try:
        collection.insert_one(new)
    except pymongo.errors.DuplicateKeyError:
        if rule.merge_lists:
            lists = {name: {"$each": value} for name, value in new.items()
                     if isinstance(value, list)}
            if lists:
                collection.update_one({"_id": new["_id"]}, {"$addToSet": lists})
        else:
            existing = collection.find_one({"_id": new["_id"]}) or {}
            field = rule.owner_field
            if field is not None and existing.get(field) != new.get(field):
                return False
    collection.delete_one({"_id": old["_id"]})
    return True


class DryRunKeys(WrappedKeyStore):
    """The store's data keys for reading; keys a seal would create stay in memory."""

    def __init__(self, stored: WrappedKeyStore):
        self._stored = stored
        self._created: dict[str, bytes] = {}

    def get(self, key_id: str) -> bytes | None:
        return self._created.get(key_id) or self._stored.get(key_id)

    def add_if_absent(self, key_id: str, wrapped: bytes) -> None:
        if self.get(key_id) is None:
            self._created[key_id] = wrapped


def command(service: str, rules: list[CollectionRule]) -> Callable[[Settings, list[str]], int]:
    """The ``migrate-hetus`` operator command of a service (services.common.runner)."""

    def migrate_hetus(settings: Settings, argv: list[str]) -> int:
        parser = argparse.ArgumentParser(
            prog=f"python -m services.{service} migrate-hetus",
            description="Rewrite hetus stored in the clear (by versions before hetu "
                        "protection) in the collections of the service: "
                        + ", ".join(rule.collection for rule in rules) + ".")
        parser.add_argument("--dry-run", action="store_true",
                            help="count what would change, change nothing")
        args = parser.parse_args(argv)
        client = store.connect(settings)
        try:
            db = store.database(client, settings)
            keys = DryRunKeys(MongoWrappedKeys(db)) if args.dry_run else None
            try:
                protector = HetuProtector.from_settings(settings, db, service, keys)
            except ConfigError as exc:
                print(f"cannot migrate: {exc}", file=sys.stderr)
                return 2
            summary = migrate(db, rules, PlainHetus(protector), dry_run=args.dry_run)
        finally:
            client.close()
        print(json.dumps(summary, indent=2))
        return 1 if summary["conflicts"] else 0

    return migrate_hetus
