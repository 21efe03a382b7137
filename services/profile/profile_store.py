"""Profiles in MongoDB: one document per profile, the identifier and name indexes, the
consent states the profile service follows, erasure tombstones and the access log.

Reads and writes go by ``_id`` (FerretDB 1.x pushes nothing else down to SQLite). A profile is
written with a version check, so two workers can never lose each other's update.

A profile is stored packed: ``_id``, ``version`` and ``merged_into`` as fields, everything else
as one BSON binary (``pack`` / ``unpack``). FerretDB 1.x over SQLite converts a stored document
to BSON field by field at about 1 ms of CPU per KB: reading a 4.3 KB profile cost it 5.4 ms,
the same profile packed 0.9 ms, and the lookup API reads one profile per request. Nothing
queries a profile's inner fields (all reads are by ``_id``). A profile stored unpacked, before
this, still reads; its next save packs it.

The name index serves agents' prefix search: a small document per profile and name order,
``_id = "<first+last>|<profile_id>"`` and ``"<last+first>|<profile_id>"`` (normalised, a
space written ``+``), holding the display name. A search is one ``_id`` prefix range
(``store.id_prefix``), read from the ``_id`` index and only as far as the answer needs: 201
entries in 10 ms whether 300 or 30,000 names match (measured at 200k entries). A new profile
costs two small upserts. (Earlier versions kept a bucket document per name prefix, up to 200
names each: every new name read and rewrote a dozen or more such buckets, and seeding 20,000
named profiles ran at 148/s against 662/s unnamed. The profile worker's housekeeping builds the
new index from the profiles and drops the buckets, ``rebuild_name_index``; until then searches
and erasures consult both.)
"""

from __future__ import annotations

import string
import unicodedata
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator
from datetime import datetime, timedelta
from typing import Any

import pymongo.errors
from pymongo import DeleteOne, InsertOne, ReplaceOne, UpdateOne
from pymongo.database import Database

from services.common.erasure_counts import ErasureCounts
from services.common.store import (
    LISTING_BATCH,
    EarlierCollection,
    Index,
    bulk_write,
    delete_by_ids,
    delete_older,
    documents_after,
    find_by_ids,
    id_prefix,
    insert_new,
    paced,
    raise_write_errors,
    unpack,
)
from services.common.store import pack as store_pack
from services.profile import access_log

PROFILES = "profiles"
IDENTIFIERS = "profile_identifiers"
ACCESS_LOG = "profile_access_log"
NAMES = "profile_names"
LEGACY_NAMES = "profile_name_index"  # earlier versions' prefix buckets
CONSENTS = "profile_consents"
ERASED = "profile_erasures"
ERASURE_COUNTS = "profile_erasure_counts"  # services.common.erasure_counts
# where earlier versions listed each profile's access-log entry ids (adopt_listed_accesses)
LISTED_ACCESSES = "profile_access_index"

INDEXES = [Index(ACCESS_LOG, [("profile_id", 1), ("at", -1)]),
           Index(IDENTIFIERS, [("profile_id", 1)])]

NAME_PREFIX_MIN = 2
LEGACY_PREFIX_MAX = 12
NAME_REBUILD_CHUNK = 100  # profiles indexed between two pauses of a rebuild
NAME_REBUILD_ROUNDS = 5  # re-reads of a chunk's profiles while the projection changes them
KEY_CHARACTERS = frozenset(string.ascii_lowercase + string.digits + "-'")
ADOPTION_CHUNK = 50  # profiles whose listed access-log entries are re-keyed between pauses
ERASED_SWEEP_PAGE = 1000  # index entries whose profiles are checked for tombstones in one read
# how long an erased profile still stored is left to its erasure (a retry of one cut short)
ERASING_GRACE = timedelta(days=1)


def normalise_name(text: str) -> str:
    """Case- and accent-folded, single-spaced: "Hämäläinen" and "hamalainen" meet."""
    decomposed = unicodedata.normalize("NFKD", text.casefold())
    folded = "".join(c for c in decomposed if not unicodedata.combining(c))
    return " ".join(folded.replace(".", " ").replace("$", " ").split())


def name_key(text: str) -> str:
    """A normalised name as the index writes it: ``+`` for a space, a letter, digit, ``-``
    and ``'`` as themselves, any other character as ``%`` and six hex digits. Each
    character maps on its own, so a prefix of a name is a prefix of its key; and the key is
    plain ASCII, which FerretDB's ``_id`` range reads from its index (store.id_prefix), where
    a character such as ``ø`` would have it scan every entry."""
    return "".join("+" if c == " " else c if c in KEY_CHARACTERS else f"%{ord(c):06x}"
                   for c in text)


def name_entries(profile_id: str, first: str, last: str) -> set[str]:
    """The ``_id``s listing a person with this name: first name first, and last name first."""
    first, last = normalise_name(first), normalise_name(last)
    tokens = {t for t in (f"{first} {last}".strip(), f"{last} {first}".strip()) if t}
    return {f"{name_key(token)}|{profile_id}" for token in tokens}


def legacy_prefixes(first: str, last: str) -> set[str]:
    """The buckets of earlier versions' index a person with this name was listed in."""
    first, last = normalise_name(first), normalise_name(last)
    tokens = {t for t in (first, last, f"{first} {last}".strip(), f"{last} {first}".strip())
              if t}
    return {token[:n] for token in tokens
            for n in range(NAME_PREFIX_MIN, min(len(token), LEGACY_PREFIX_MAX) + 1)}


class VersionConflict(Exception):
    """Someone else wrote the profile since it was read; read again and retry."""


UNPACKED_FIELDS = ("_id", "version", "merged_into")


def pack(doc: dict) -> dict:
    """The profile as stored: ``UNPACKED_FIELDS`` as fields, the rest one BSON binary."""
    return store_pack(doc, UNPACKED_FIELDS)


class ProfileStore:
    def __init__(self, db: Database):
        self.profiles = db[PROFILES]
        self.identifiers = db[IDENTIFIERS]
        self.access_log = db[ACCESS_LOG]
        self.names = db[NAMES]
        self.earlier_names = EarlierCollection(db, LEGACY_NAMES)
        self.listed_accesses = EarlierCollection(db, LISTED_ACCESSES)
        self.consents = db[CONSENTS]
        self.erased = db[ERASED]
        self.erasure_counts = ErasureCounts(db[ERASURE_COUNTS])

    def load(self, profile_id: str) -> dict | None:
        return unpack(self.profiles.find_one({"_id": profile_id}))

    def load_current(self, profile_id: str) -> dict | None:
        """The profile, following merges to the one that absorbed it."""
        seen = set()
        doc = self.load(profile_id)
        while doc and doc.get("merged_into") and doc["_id"] not in seen:
            seen.add(doc["_id"])
            doc = self.load(doc["merged_into"]) or doc
        return doc

    def pages_after(self, after: str | None) -> Iterator[list[dict]]:
        """Every profile with ``_id`` above ``after``, in ``_id`` order, a page at a time
        (``store.documents_after``)."""
        for page in documents_after(self.profiles, after):
            yield [unpack(doc) for doc in page]

    def load_many(self, profile_ids: Iterable[str]) -> dict[str, dict]:
        """{requested id: current profile} (merges followed) for those stored."""
        found = {doc["_id"]: unpack(doc)
                 for doc in find_by_ids(self.profiles, sorted(set(profile_ids)))}
        for profile_id, doc in found.items():
            if doc.get("merged_into"):
                found[profile_id] = self.load_current(profile_id) or doc
        return found

    def stored(self, profile_ids: Iterable[str]) -> list[dict]:
        """The profiles stored under these ids, as stored (merges not followed)."""
        return [unpack(doc) for doc in find_by_ids(self.profiles, sorted(set(profile_ids)))]

    def erased_at(self, profile_ids: Iterable[str]) -> dict[str, datetime | None]:
        """{erased profile id: when it was marked} for those of ``profile_ids`` erased."""
        return {doc["_id"]: doc.get("at") for doc in find_by_ids(
            self.erased, sorted(set(profile_ids)), {"at": 1})}

    def erased_among(self, profile_ids: Iterable[str]) -> set[str]:
        return {doc["_id"] for doc in find_by_ids(self.erased, sorted(set(profile_ids)),
                                                  {"_id": 1})}

    def save_many(self, docs: list[dict]) -> None:
        """``save`` for several profiles in one round trip. Raises VersionConflict when any
        was changed meanwhile (the others may be stored: retry them all from a new read)."""
        if not docs:
            return
        if len(docs) == 1:
            self.save(docs[0])
            return
        writes = [InsertOne(pack({**doc, "version": 1})) if not doc.get("version")
                  else ReplaceOne({"_id": doc["_id"], "version": doc["version"]},
                                  pack({**doc, "version": doc["version"] + 1})) for doc in docs]
        done, errors = bulk_write(self.profiles, writes)
        if any(error.get("code") != 11000 for error in errors):
            raise pymongo.errors.BulkWriteError({"writeErrors": errors})
        if errors or done != len(docs):
            raise VersionConflict(docs[0]["_id"])
        for doc in docs:
            doc["version"] = doc.get("version", 0) + 1

    def save(self, doc: dict) -> None:
        """Insert a new profile or replace the stored one if nobody changed it meanwhile.

        Raises VersionConflict otherwise."""
        version = doc.get("version", 0)
        new = pack({**doc, "version": version + 1})
        if version == 0:
            try:
                self.profiles.insert_one(new)
            except pymongo.errors.DuplicateKeyError:
                raise VersionConflict(doc["_id"]) from None
        elif self.profiles.replace_one({"_id": doc["_id"], "version": version},
                                       new).matched_count != 1:
            raise VersionConflict(doc["_id"])
        doc["version"] = version + 1

    def index(self, profile_id: str, identifiers: dict[str, list[str]]) -> None:
        for type_, values in identifiers.items():
            for value in values:
                self.identifiers.update_one({"_id": f"{type_}:{value}"},
                                            {"$set": {"profile_id": profile_id}}, upsert=True)

    def index_entries(self, entries: dict[str, str]) -> None:
        """Point each identifier key ("type:value") at its profile: one insert (the keys are
        mostly new), and a replace for each key that was stored already."""
        insert_new(self.identifiers, [{"_id": key, "profile_id": profile_id}
                                      for key, profile_id in sorted(entries.items())],
                   taken=_replacing)

    def unindex(self, type_: str, value: str, profile_id: str) -> None:
        self.identifiers.delete_one({"_id": f"{type_}:{value}", "profile_id": profile_id})

    def find_by_identifier(self, type_: str, value: str) -> dict | None:
        entry = self.identifiers.find_one({"_id": f"{type_}:{value}"})
        return self.load_current(entry["profile_id"]) if entry else None

    def index_name(self, profile_id: str, before: tuple[str, str] | None,
                   after: tuple[str, str] | None) -> None:
        """Move the profile in the name index from the ``before`` (first, last) name to
        ``after`` (None: not listed)."""
        self.index_names([(profile_id, before, after)])

    def index_names(self, changes: Iterable[tuple[str, tuple[str, str] | None,
                                              tuple[str, str] | None]]) -> None:
        """``index_name`` for several (profile_id, before, after) at once, in one round trip
        (a profile changed twice ends as its last change says)."""
        wanted: dict[str, dict | None] = {}  # entry _id -> its document, None to delete
        legacy_removals: dict[str, set[str]] = defaultdict(set)
        legacy = self.earlier_names.there()
        for profile_id, before, after in changes:
            old = name_entries(profile_id, *before) if before else set()
            new = name_entries(profile_id, *after) if after else set()
            wanted.update(dict.fromkeys(old - new))
            wanted.update({entry: {"profile_id": profile_id, "name": list(after)}
                           for entry in new})
            if before and legacy:
                for prefix in legacy_prefixes(*before):
                    legacy_removals[prefix].add(profile_id)
        raise_write_errors(bulk_write(self.names, [
            DeleteOne({"_id": entry}) for entry, doc in sorted(wanted.items()) if doc is None]))
        insert_new(self.names, [{"_id": entry, **doc} for entry, doc in sorted(wanted.items())
                                if doc is not None], taken=_replacing)
        if legacy_removals:
            self._unlist_legacy(legacy_removals)

    def _unlist_legacy(self, removals: dict[str, set[str]]) -> None:
        """Take profiles out of earlier versions' buckets (a rename, an erasure) while they
        are there: a name must not outlive its profile's erasure anywhere."""
        writes = []
        for prefix, profile_ids in sorted(removals.items()):
            writes.append(UpdateOne({"_id": prefix}, {"$unset": {
                f"entries.{profile_id}": "" for profile_id in sorted(profile_ids)}}))
            writes.append(DeleteOne({"_id": prefix, "entries": {}}))
        raise_write_errors(bulk_write(self.earlier_names.collection, writes, ordered=True))

    def search_names(self, query: str, limit: int) -> tuple[dict[str, str], bool]:
        """Up to ``limit`` profiles whose name starts with ``query`` (normalised), in name
        order, as {profile_id: name}, and whether more match."""
        wanted = normalise_name(query)
        if not wanted:
            return {}, False
        # a profile is listed twice; both of its entries match only if both names start so
        read = 2 * limit + 1
        entries = list(self.names.find(id_prefix(name_key(wanted)), limit=read,
                                       batch_size=read))
        found: dict[str, str] = {}
        for entry in entries:
            if _name_matches(entry["name"], wanted):
                found.setdefault(entry["profile_id"], " ".join(filter(None, entry["name"])))
        more = len(entries) == read
        if self.earlier_names.there():
            bucket = self.earlier_names.collection.find_one(
                {"_id": wanted[:LEGACY_PREFIX_MAX]}) or {}
            for profile_id, name in (bucket.get("entries") or {}).items():
                if _name_matches(name, wanted):
                    found.setdefault(profile_id, " ".join(filter(None, name)))
            more = more or bool(bucket.get("overflow"))
        listed = dict(list(found.items())[:limit])
        return listed, more or len(found) > limit

    def rebuild_name_index(self, listed_name: Callable[[dict], tuple[str, str] | None],
                           pause: Callable[[float], bool] | None = None) -> int:
        """List every profile in the name index from the profiles themselves, then drop
        earlier versions' buckets; returns how many profiles were listed. Runs (from the
        housekeeping) only while those buckets exist, ``NAME_REBUILD_CHUNK`` profiles at a
        time with ``pause`` between chunks. ``listed_name`` says under which name a profile
        is listed (None: not listed).

        The projection may rename, restrict or erase a profile while its entries are
        written here. It saves the profile (or its tombstone) before it changes the index,
        so each chunk's profiles are read again afterwards: those changed meanwhile have
        their entries set to what they go by now, and are read again, until a read finds
        none changed (at most ``NAME_REBUILD_ROUNDS`` times). An earlier version's worker
        must not run meanwhile: its erasures do not remove these entries."""
        if not self.earlier_names.there(refresh=True):
            return 0
        # emptied, or made again by a late removal of a process that had not seen it go
        if self.earlier_names.drop_if_empty():
            return 0
        listed = 0
        for page in self.pages_after(None):
            for chunk in paced(page, NAME_REBUILD_CHUNK, pause):
                seen = {doc["_id"]: doc.get("version") for doc in chunk}
                erased = self.erased_among(seen)
                names = {doc["_id"]: None if doc["_id"] in erased else listed_name(doc)
                         for doc in chunk}
                self.index_names([(pid, None, name) for pid, name in names.items() if name])
                listed += sum(1 for name in names.values() if name)
                self._settle_names(names, seen, erased, listed_name)
            if pause is not None and pause(0):
                return listed
        self.earlier_names.drop()
        return listed

    def _settle_names(self, names: dict[str, tuple[str, str] | None],
                      seen: dict[str, int | None], erased: set[str],
                      listed_name: Callable[[dict], tuple[str, str] | None]) -> None:
        """Read the profiles whose entries were just written (``names``, as of versions
        ``seen``) again and set the entries of any changed meanwhile, until none did."""
        for _ in range(NAME_REBUILD_ROUNDS):
            docs = {doc["_id"]: doc for doc in
                    map(unpack, find_by_ids(self.profiles, sorted(names)))}
            now_erased = self.erased_among(names)
            changed = [pid for pid in names
                       if (docs[pid].get("version") if pid in docs else None) != seen[pid]
                       or (pid in now_erased) != (pid in erased)]
            if not changed:
                return
            moves = []
            for pid in changed:
                gone = pid in now_erased or pid not in docs
                now = None if gone else listed_name(docs[pid])
                moves.append((pid, names[pid], now))
                names[pid], seen[pid] = now, None if gone else docs[pid].get("version")
            erased = now_erased
            self.index_names(moves)

    def unindex_keys(self, keys: Iterable[str], profile_ids: Iterable[str]) -> int:
        """Remove the identifier index entries ("type:value" keys) that point at one of
        ``profile_ids`` (an entry since taken by another profile stays)."""
        ours = {"$in": sorted(set(profile_ids))}
        return sum(self.identifiers.delete_one({"_id": key, "profile_id": ours}).deleted_count
                   for key in sorted(set(keys)))

    # consent states from cdp.consent.changes, keyed by profile_id or "id:<type>:<value>"

    def record_consents(self, records: list[tuple[str, str, dict]]) -> list[bool]:
        """Keep each (subject, purpose, state) unless a later-collected state is stored or came
        earlier in ``records``; returns, per record, whether it was kept. Two round trips
        however many there are: read the subjects' states, write the kept ones."""
        stored = {doc["_id"]: doc.get("purposes") or {} for doc in find_by_ids(
            self.consents, [subject for subject, _, _ in records], {"purposes": 1})}
        written: dict[str, dict[str, dict]] = {}
        kept = []
        for subject, purpose, state in records:
            current = (written.get(subject, {}).get(purpose)
                       or stored.get(subject, {}).get(purpose))
            if current and (current["collected_at"], current["receipt_id"]) > (
                    state["collected_at"], state["receipt_id"]):
                kept.append(False)
                continue
            written.setdefault(subject, {})[purpose] = state
            kept.append(True)
        raise_write_errors(bulk_write(self.consents, [
            UpdateOne({"_id": subject}, {"$set": {f"purposes.{purpose}": state
                                                  for purpose, state in purposes.items()}},
                      upsert=True)
            for subject, purposes in sorted(written.items())]))
        return kept

    def consent_states(self, subject: str) -> dict[str, dict]:
        return (self.consents.find_one({"_id": subject}) or {}).get("purposes") or {}

    def delete_consents(self, subjects: Iterable[str]) -> int:
        # one _id delete each: FerretDB answers _id equality from its index, $in by a scan
        return sum(self.consents.delete_one({"_id": s}).deleted_count for s in set(subjects))

    # erasure

    def mark_erased(self, profile_ids: Iterable[str], request_id: str, at: datetime) -> None:
        """Tombstones, so an event still in flight for an erased profile does not recreate
        it (they hold no personal data). Each names the profiles erased with it: an event of
        a profile merged away was stored under the one absorbing it."""
        profile_ids = sorted(set(profile_ids))
        for profile_id in profile_ids:
            self.erased.update_one({"_id": profile_id},
                                   {"$setOnInsert": {"request_id": request_id, "at": at},
                                    "$addToSet": {"together": {"$each": profile_ids}}},
                                   upsert=True)

    def erased_together(self, profile_ids: Iterable[str]) -> dict[str, set[str]]:
        """{erased profile id: it and the profiles erased with it} for those of
        ``profile_ids`` erased."""
        return {doc["_id"]: {doc["_id"], *doc.get("together", ())}
                for doc in find_by_ids(self.erased, sorted(set(profile_ids)),
                                       {"together": 1})}

    def unindex_erased(self, now: datetime, erase_left: Callable[[list[str]], Any],
                       pause: Callable[[float], bool] | None = None) -> dict[str, int]:
        """Remove the name and identifier index entries still pointing at an erased profile;
        returns how many of each. The daily backstop of the erasure's own deletes: a crash
        that cuts short both an event run and its clean-up leaves the entries only the stored
        profile knew (a name the event completed). Every entry is read once,
        ``ERASED_SWEEP_PAGE`` at a time with ``pause`` between pages (``store.paced``).

        An erased profile still stored is its erasure's, in progress or to be retried (the
        retry finds it through these entries), for ``ERASING_GRACE`` after its tombstone;
        after that ``erase_left`` is called with its id, to erase it and all it keeps."""
        stopped = False

        def pausing(took: float) -> bool:
            nonlocal stopped
            stopped = pause is not None and pause(took)
            return stopped

        since = now - ERASING_GRACE
        names = self._unindex_erased(self.names, since, erase_left, pausing)
        return {"names": names, "identifiers": 0 if stopped else self._unindex_erased(
            self.identifiers, since, erase_left, pausing)}

    def _unindex_erased(self, index, erasing_since: datetime,
                        erase_left: Callable[[list[str]], Any],
                        pause: Callable[[float], bool]) -> int:
        listing = index.find({}, {"profile_id": 1}).batch_size(LISTING_BATCH)
        removed = 0
        for page in paced(listing, ERASED_SWEEP_PAGE, pause):
            erased = self.erased_at(entry["profile_id"] for entry in page)
            stored = {doc["_id"] for doc in find_by_ids(self.profiles, sorted(erased),
                                                        {"_id": 1})}
            left = sorted(p for p in stored if erased[p] is None or erased[p] <= erasing_since)
            if left:
                erase_left(left)
            for profile_id in sorted(set(erased) - stored):
                # only while it still points there: an identifier may have moved on since
                removed += delete_by_ids(index, [entry["_id"] for entry in page
                                                 if entry["profile_id"] == profile_id],
                                         {"profile_id": profile_id})
        return removed

    def count_erased(self, request_id: str, kind: str, count: int,
                     at: datetime) -> dict[str, int]:
        """Add ``count`` to how much of ``kind`` the erasure ``request_id`` deleted; returns
        every count of that erasure, over all its handlings."""
        return self.erasure_counts.add(request_id, {kind: count}, at)

    def expire_erasure_counts(self, before: datetime,
                              pause: Callable[[float], bool] | None = None) -> int:
        """Delete the erasure counts last handled before ``before`` (the retention sweep)."""
        return self.erasure_counts.expire(before, pause)

    def is_erased(self, profile_id: str) -> bool:
        return self.erased.find_one({"_id": profile_id}) is not None

    def delete_profiles(self, profile_ids: Iterable[str]) -> int:
        return sum(self.profiles.delete_one({"_id": p}).deleted_count for p in set(profile_ids))

    def delete_accesses(self, profile_ids: Iterable[str]) -> int:
        """Delete the profiles' access-log entries, and any an earlier version listed."""
        deleted = 0
        for profile_id in sorted(set(profile_ids)):
            # by _id, 50 a command: FerretDB deletes a whole filter's matches in one statement,
            # past SQLite's limit on bound parameters for a profile read 32k times
            ranged = [entry["_id"] for entry in self.access_log.find(_accesses_of(profile_id),
                                                                     {"_id": 1})]
            deleted += delete_by_ids(self.access_log, ranged + self._listed_ids(profile_id))
            if self.listed_accesses.there():
                self.listed_accesses.collection.delete_one({"_id": profile_id})
        return deleted

    def add_accesses(self, entries: list[dict]) -> None:
        """Store access-log entries (access_log.stored_entry) in one insert. Storing one
        again changes nothing."""
        insert_new(self.access_log, entries)

    def expire_accesses(self, before: datetime,
                        pause: Callable[[float], bool] | None = None) -> int:
        """Delete the entries older than ``before`` (the retention sweep)."""
        return delete_older(self.access_log, "at", before, pause)

    def accesses(self, profile_id: str, limit: int) -> list[dict]:
        """The profile's newest ``limit`` access-log entries (one ``_id`` range: a filter on
        ``profile_id`` would scan the whole log on FerretDB), with any an earlier version
        listed and the housekeeping has not re-keyed yet."""
        entries = {entry["_id"]: entry for entry in self.access_log.find(
            _accesses_of(profile_id))}
        entries.update((entry["_id"], entry) for entry in find_by_ids(
            self.access_log, self._listed_ids(profile_id)))
        newest = sorted(entries.values(), key=lambda entry: entry["at"], reverse=True)
        return [{name: value for name, value in entry.items() if name != "_id"}
                for entry in newest[:limit]]

    def adopt_listed_accesses(self, pause: Callable[[float], bool] | None = None) -> int:
        """Re-key the entries earlier versions stored under their message id alone and listed
        per profile in ``LISTED_ACCESSES``, then drop the lists; returns how many moved.
        The housekeeping runs it, ``ADOPTION_CHUNK`` profiles at a time with ``pause``
        between chunks (``store.paced``; it returns True to stop). A profile's entries are
        copied before they and its list are deleted, so a stop or crash midway loses none;
        an erased profile's are deleted, not copied. An earlier version still running writes
        lists again: the next run takes them."""
        if not self.listed_accesses.there(refresh=True):
            return 0
        listed = self.listed_accesses.collection
        moved = 0
        for page in documents_after(listed, None):
            for chunk in paced(page, ADOPTION_CHUNK, pause):
                erased = self.erased_among(profile_list["_id"] for profile_list in chunk)
                for profile_list in chunk:
                    old = find_by_ids(self.access_log, profile_list.get("entries") or [])
                    if profile_list["_id"] not in erased:
                        insert_new(self.access_log, [{**entry, "_id": access_log.entry_id(
                            entry["profile_id"], entry["_id"])} for entry in old])
                        moved += len(old)
                    delete_by_ids(self.access_log, [entry["_id"] for entry in old])
                    listed.delete_one({"_id": profile_list["_id"]})
            if pause is not None and pause(0):
                return moved
        self.listed_accesses.drop_if_empty()
        return moved

    def _listed_ids(self, profile_id: str) -> list[str]:
        if not self.listed_accesses.there():
            return []
        listed = self.listed_accesses.collection.find_one({"_id": profile_id})
        return (listed or {}).get("entries") or []


def _accesses_of(profile_id: str) -> dict:
    return id_prefix(access_log.entry_id(profile_id, ""))


def _name_matches(name: list[str], wanted: str) -> bool:
    first, last = (normalise_name(part) for part in name)
    tokens = (first, last, f"{first} {last}".strip(), f"{last} {first}".strip())
    return any(token.startswith(wanted) for token in tokens)


def _replacing(doc: dict) -> ReplaceOne:
    return ReplaceOne({"_id": doc["_id"]}, doc, upsert=True)
