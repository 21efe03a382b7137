"""The export service's own collections in MongoDB.

The service reads no other service's collections: its read model (profile snapshots, consent
states, restrictions) is fed from Kafka by the worker. Besides it: partner contracts (their
secrets sealed, services.export.sealing), runs (one at a time per partner, through the
partner's run slot; claimed by one worker at a time through a lease), each run's batches
(the exact bytes sent, so a resumed run re-sends a batch unchanged under the same
idempotency key), the changes waiting for a streaming partner (kept, once settled, for
their retention: services.export.housekeeping) and each such partner's stream (leased like
a run, its batches stored like a run's), the record of what each partner received about
each profile, and the deletion notices waiting to go out.

Reads and writes go by ``_id`` wherever a hot path allows: FerretDB 1.x pushes little else
down to SQLite.

So that an erasure finds a subject's rows without scanning, ``export_subject_index`` keeps,
by ``_id``: ``identifier:<type>:<value>`` → the read-model profiles that held it
(``profile_ids``), ``delivered:<partner>|<field>|<value>`` → the deliveries that sent it
(``delivery_ids``), and ``profile:<id>`` → the profile's consent purposes, stream changes and
the profiles merged into it (``merged_profiles``).
Each entry is added before the row it points to is written (a crash leaves at most an entry
pointing at nothing), lookups check the row still holds what the entry says, and an erasure
removes the subject's entries (the retention sweep takes out the stream changes it deletes).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pymongo
import pymongo.errors
from pymongo import ReplaceOne, UpdateOne
from pymongo.database import Database

from services.common.store import (
    IDS_PER_QUERY,
    bulk_write,
    delete_by_ids,
    find_by_ids,
    insert_new,
    older_than,
    paced,
    pack,
    raise_write_errors,
    unpack,
)
from services.export.contracts import PartnerContract, from_document, to_document
from services.export.rendering import ConsentState
from services.export.sealing import SecretBox, SecretUnreadable

PARTNERS = "export_partners"
PROFILES = "export_profiles"
# a snapshot's fields the store filters on (incremental runs, segment scopes); the rest is
# packed: a run reads every row of its scope, and a packed row converts at a fraction
PROFILE_FIELDS = ("_id", "segments", "changed_at")
CONSENTS = "export_consents"
RESTRICTIONS = "export_restrictions"
RUNS = "export_runs"
BATCHES = "export_batches"
DELIVERIES = "export_deliveries"
NOTICES = "export_notices"
STREAM_CHANGES = "export_stream_changes"
STREAMS = "export_streams"
SUBJECT_INDEX = "export_subject_index"
# erased profiles' ids (no personal data): a snapshot still on its way is not stored again
ERASURES = "export_erasures"
# per erasure (its message id), the partners it sent deletion notices to: the ack reports
# them however often the erasure is handled
ERASURE_PARTNERS = "export_erasure_partners"

# the lists an index entry may hold: an entry is deleted only once none holds anything
INDEX_LISTS = ("profile_ids", "delivery_ids", "consent_purposes", "stream_changes",
               "merged_profiles")

# per partner, its latest run: a new run takes it only from a run that ended
RUN_SLOTS = "export_run_slots"
# a slot whose run is not stored yet is held this long (a request that died meanwhile frees it)
RUN_SLOT_GRACE = timedelta(seconds=60)

RUN_ACTIVE = ("queued", "running")
CHANGE_STATES = ("pending", "sent", "not_sent", "cancelled")
# settled changes deleted between two pauses of the retention sweep
SETTLED_CHANGES_CHUNK = 500
NOTICE_STATES = ("pending", "sent", "failed", "abandoned")


def now() -> datetime:
    return datetime.now(UTC)


def _progress_increments(counts: dict[str, Any]) -> dict[str, int]:
    """What an acknowledged batch adds to its run's or stream's progress counters."""
    increments = {"progress.considered": counts["considered"],
                  "progress.exported": counts["exported"],
                  "progress.batches_sent": 1 if counts["exported"] else 0}
    for reason, number in counts["excluded"].items():
        increments[f"progress.excluded.{_key(reason)}"] = number
    for name, number in counts["invalid_values"].items():
        increments[f"progress.invalid_values.{_key(name)}"] = number
    return increments


def _key(text: str) -> str:
    """A safe document field name (purpose names come from another service)."""
    return text.replace(".", "_").replace("$", "_")


@dataclass(frozen=True)
class ConsentDecision:
    """One Consent Changed message's decision, as the read model keeps it."""
    profile_id: str
    purpose: str
    allowed: bool
    state: str
    decided_at: datetime


def _counts_by_status(collection, partner_id: str, states: Iterable[str]) -> dict[str, int]:
    """How many of the partner's documents are in each of ``states`` (those with any), in one
    pass: each filter on status would scan the collection on FerretDB."""
    found = Counter(doc["status"] for doc in collection.find({"partner_id": partner_id},
                                                             {"status": 1}))
    return {status: found[status] for status in states if found[status]}


class RunInProgress(Exception):
    """Another run of the partner is queued or running."""


def _aware(moment: datetime | None) -> datetime | None:
    if moment is not None and moment.tzinfo is None:
        return moment.replace(tzinfo=UTC)
    return moment


def stream_id(partner_id: str) -> str:
    """The run id under which a streaming partner's batches are stored."""
    return f"stream:{partner_id}"


class ExportStore:
    def __init__(self, db: Database, secrets: SecretBox):
        self.db = db
        self.secrets = secrets

    # --- partners ------------------------------------------------------------------------

    def save_partner(self, contract: PartnerContract) -> None:
        doc = to_document(contract)
        owner, destination = contract.partner_id, doc["destination"]
        for name in ("signing_secret", "authorization"):
            destination[name] = self.secrets.seal(owner, name, destination[name])
        doc["pseudonym_key"] = self.secrets.seal(owner, "pseudonym_key", doc["pseudonym_key"])
        self.db[PARTNERS].update_one(
            {"_id": contract.partner_id},
            {"$set": {**doc, "updated_at": now(), "deleted_at": None},
             "$setOnInsert": {"created_at": now()}}, upsert=True)
        if contract.mode != "streaming":
            self._cancel_waiting_changes(contract.partner_id, "the contract no longer streams")

    def _contract(self, doc: dict[str, Any]) -> PartnerContract:
        owner, destination = doc["_id"], dict(doc["destination"])
        for name in ("signing_secret", "authorization"):
            destination[name] = self.secrets.open(owner, name, destination.get(name))
        pseudonym_key = self.secrets.open(owner, "pseudonym_key", doc.get("pseudonym_key"))
        return from_document({**doc, "destination": destination,
                              "pseudonym_key": pseudonym_key})

    def rewrap_partner_secrets(self) -> dict[str, Any]:
        """Re-seal every stored partner's secrets (retired partners' too) under the current
        master key: a master-key rotation's step for the export service. Idempotent; a
        secret changed meanwhile (the contract was saved again) is left to its new value.
        Returns counts and the secrets neither master key opens (``partner/name``)."""
        report: dict[str, Any] = {"partners": 0, "resealed": 0, "already_current": 0,
                                  "changed_meanwhile": 0, "unreadable": []}
        for doc in self.db[PARTNERS].find({}, {"destination": 1, "pseudonym_key": 1}):
            report["partners"] += 1
            owner = doc["_id"]
            held = {f"destination.{name}": (doc.get("destination") or {}).get(name)
                    for name in ("signing_secret", "authorization")}
            held["pseudonym_key"] = doc.get("pseudonym_key")
            for path, sealed in held.items():
                if sealed is None:
                    continue
                name = path.rpartition(".")[2]
                try:
                    fresh = self.secrets.resealed(owner, name, sealed)
                except SecretUnreadable:
                    report["unreadable"].append(f"{owner}/{name}")
                    continue
                if fresh is None:
                    report["already_current"] += 1
                    continue
                replaced = self.db[PARTNERS].update_one(
                    {"_id": owner, f"{path}.ciphertext": sealed["ciphertext"]},
                    {"$set": {path: fresh}}).modified_count
                report["resealed" if replaced else "changed_meanwhile"] += 1
        return report

    def partner(self, partner_id: str, *, include_deleted: bool = False
                ) -> PartnerContract | None:
        doc = self.db[PARTNERS].find_one({"_id": partner_id})
        if doc is None or (doc.get("deleted_at") and not include_deleted):
            return None
        return self._contract(doc)

    def delete_partner(self, partner_id: str) -> bool:
        """Retire a contract: no new runs, and its queued or running one is cancelled at its
        next batch, its stream's waiting changes at once; deletion notices to the partner
        still go out."""
        result = self.db[PARTNERS].update_one(
            {"_id": partner_id, "deleted_at": None}, {"$set": {"deleted_at": now()}})
        self._cancel_waiting_changes(partner_id, "the partner was retired")
        return result.modified_count == 1

    def _cancel_waiting_changes(self, partner_id: str, reason: str) -> None:
        """Settle the changes waiting for a partner that streams no more: no stream sends
        them, and settled they go with their retention."""
        self.db[STREAM_CHANGES].update_many(
            {"partner_id": partner_id, "status": "pending"},
            {"$set": {"status": "cancelled", "reason": reason, "settled_at": now()}})

    def partner_retired(self, partner_id: str) -> bool:
        """Whether the contract was retired (or is gone): one read by ``_id``, made before
        each batch of a run."""
        doc = self.db[PARTNERS].find_one({"_id": partner_id}, {"deleted_at": 1})
        return doc is None or doc.get("deleted_at") is not None

    def partners_requiring(self, purpose: str) -> list[PartnerContract]:
        return [self._contract(doc) for doc in self.db[PARTNERS].find({})
                if purpose in doc.get("required_purposes", [])]

    def all_partners(self) -> list[PartnerContract]:
        """Every contract, retired ones too (they may still hold data to be deleted)."""
        return [self._contract(doc) for doc in self.db[PARTNERS].find({})]

    def streaming_partners(self) -> list[PartnerContract]:
        return [self._contract(doc)
                for doc in self.db[PARTNERS].find({"mode": "streaming", "deleted_at": None})]

    def partner_names(self, partner_ids: Iterable[str]) -> dict[str, str]:
        return {doc["_id"]: doc["name"]
                for doc in self.db[PARTNERS].find({"_id": {"$in": list(partner_ids)}})}

    # --- read model ----------------------------------------------------------------------

    def upsert_profiles(self, snapshots: list[Mapping[str, Any]], changed_at: datetime) -> None:
        """Store the snapshots (the last one of a profile wins) in three round trips however
        many there are: read the stored rows' identifiers, index the new ones, replace."""
        latest = {snapshot["profile_id"]: snapshot for snapshot in snapshots}
        stored = {doc["_id"]: doc.get("identifiers") or {}
                  for doc in self.profiles(list(latest))}
        # a value the stored row holds is indexed already (entries are written first)
        additions: dict[str, dict[str, list[str]]] = {}
        for profile_id, snapshot in latest.items():
            held = stored.get(profile_id, {})
            for type_, values in (snapshot.get("identifiers") or {}).items():
                for value in values:
                    if value not in held.get(type_, []):
                        entry = additions.setdefault(f"identifier:{type_}:{value}",
                                                     {"profile_ids": []})
                        entry["profile_ids"].append(profile_id)
        self._index_add(additions)
        raise_write_errors(bulk_write(self.db[PROFILES], [ReplaceOne({"_id": profile_id}, pack({
            "_id": profile_id, "identifiers": snapshot.get("identifiers") or {},
            "traits": snapshot.get("traits") or {}, "computed": snapshot.get("computed") or {},
            "segments": snapshot.get("segments") or [], "changed_at": changed_at},
            PROFILE_FIELDS), upsert=True) for profile_id, snapshot in latest.items()]))

    def profiles(self, profile_ids: list[str]) -> list[dict[str, Any]]:
        """The read model's snapshots of ``profile_ids`` that exist, in id order."""
        docs = map(unpack, find_by_ids(self.db[PROFILES], profile_ids))
        return sorted(({**doc, "profile_id": doc["_id"]} for doc in docs),
                      key=lambda doc: doc["_id"])

    def profiles_holding(self, identifiers: Iterable[tuple[str, str]]) -> list[str]:
        """Ids of the read model's profiles holding one of ``identifiers`` (type, value)."""
        found: set[str] = set()
        for type_, value in identifiers:
            entry = self.db[SUBJECT_INDEX].find_one({"_id": f"identifier:{type_}:{value}"})
            candidates = sorted(set((entry or {}).get("profile_ids") or []) - found)
            found.update(doc["_id"] for doc in self.profiles(candidates)
                         if value in (doc.get("identifiers") or {}).get(type_, []))
        return sorted(found)

    def forget_identifiers(self, profile_ids: list[str],
                           identifiers: Iterable[tuple[str, str]]) -> None:
        """Take an erased subject out of the identifier index: the entries of its
        ``identifiers`` (type, value) go whole (whoever held one of them is the subject,
        erased now or gone before); from those of the identifiers its profiles hold in the
        read model, its profiles are taken out (an entry left empty goes)."""
        identifiers = set(identifiers)
        for type_, value in sorted(identifiers):
            self.db[SUBJECT_INDEX].delete_one({"_id": f"identifier:{type_}:{value}"})
        held = {(type_, value) for doc in self.profiles(profile_ids)
                for type_, values in (doc.get("identifiers") or {}).items() for value in values}
        self._index_pull({f"identifier:{type_}:{value}" for type_, value in held - identifiers},
                         "profile_ids", profile_ids)

    def mark_erased(self, profile_ids: Iterable[str]) -> None:
        raise_write_errors(bulk_write(self.db[ERASURES], [
            UpdateOne({"_id": profile_id}, {"$setOnInsert": {"at": now()}}, upsert=True)
            for profile_id in sorted(set(profile_ids))]))

    def note_erasure_partners(self, cause: str, partner_ids: Iterable[str]) -> list[str]:
        """Add ``partner_ids`` to those erasure ``cause`` notified; returns them all."""
        doc = self.db[ERASURE_PARTNERS].find_one_and_update(
            {"_id": cause}, {"$addToSet": {"partner_ids": {"$each": sorted(set(partner_ids))}}},
            upsert=True, return_document=pymongo.ReturnDocument.AFTER)
        return sorted(doc.get("partner_ids") or [])

    def note_merged(self, merged_id: str, survivor_id: str) -> None:
        """Remember that ``merged_id`` (with the profiles merged into it before) lives on in
        ``survivor_id``: a partner holding one of them hears of the survivor's withdrawals and
        erasure."""
        absorbed = [merged_id, *(self._profile_entry(merged_id).get("merged_profiles") or [])]
        self._index_add({f"profile:{survivor_id}": {"merged_profiles": absorbed}})

    def with_merged(self, profile_ids: Iterable[str]) -> list[str]:
        """``profile_ids`` and the profiles merged into them, at any depth, in id order: the
        merges of a chain (A into B, B into C) may be noted in either order, so C's entry
        alone may not name A."""
        found, unread = set(profile_ids), list(profile_ids)
        while unread:
            for merged in self._profile_entry(unread.pop()).get("merged_profiles") or []:
                if merged not in found:
                    found.add(merged)
                    unread.append(merged)
        return sorted(found)

    def erased_among(self, profile_ids: Iterable[str]) -> set[str]:
        return {doc["_id"] for doc in find_by_ids(self.db[ERASURES], sorted(set(profile_ids)),
                                                  {"_id": 1})}

    def delete_profiles(self, profile_ids: list[str]) -> int:
        # one _id delete each: FerretDB answers _id equality from its index, $in by a scan
        return sum(self.db[PROFILES].delete_one({"_id": profile_id}).deleted_count
                   for profile_id in set(profile_ids))

    def profile_ids(self, changed_since: datetime | None, segment: str | None) -> list[str]:
        """The ids of the snapshots changed since ``changed_since`` (incremental runs) and in
        ``segment``, when given, in id order: one pass over the collection."""
        query: dict[str, Any] = {}
        if segment is not None:
            query["segments"] = segment
        if changed_since is not None:
            query["changed_at"] = {"$gt": changed_since}
        return sorted(doc["_id"] for doc in self.db[PROFILES].find(query, {"_id": 1}))

    def set_consents(self, decisions: list[ConsentDecision]) -> list[bool]:
        """Record consent states in order, each unless a later one is already stored (or came
        earlier in ``decisions``); returns, per decision, whether the stored state changed.
        A profile a decision allows a purpose for is marked changed after the write, so that
        the next incremental run considers it (every such decision, not only one that changes
        the state: one delivered again after a crash between the write and the mark still
        marks). Four round trips at most however many there are: read the stored states,
        index the profiles' new purposes, replace, mark."""
        stored = {doc["_id"]: doc for doc in find_by_ids(
            self.db[CONSENTS], [f"{d.profile_id}|{d.purpose}" for d in decisions])}
        written: dict[str, dict[str, Any]] = {}
        new_purposes: dict[str, dict[str, list[str]]] = {}
        allowed: set[str] = set()
        changed = []
        for decision in decisions:
            key = f"{decision.profile_id}|{decision.purpose}"
            current = written.get(key) or stored.get(key)
            if current is not None and _aware(current["decided_at"]) > decision.decided_at:
                changed.append(False)
                continue
            if current is None:
                new_purposes.setdefault(f"profile:{decision.profile_id}",
                                        {"consent_purposes": []})["consent_purposes"].append(
                                            decision.purpose)
            if decision.allowed:
                allowed.add(decision.profile_id)
            written[key] = {"_id": key, "profile_id": decision.profile_id,
                            "purpose": decision.purpose, "allowed": decision.allowed,
                            "state": decision.state, "decided_at": decision.decided_at}
            changed.append(True)
        self._index_add(new_purposes)
        raise_write_errors(bulk_write(self.db[CONSENTS], [
            ReplaceOne({"_id": key}, doc, upsert=True) for key, doc in sorted(written.items())]))
        self._mark_changed(allowed)
        return changed

    def _mark_changed(self, profile_ids: Iterable[str]) -> None:
        """Move the rows' ``changed_at`` to now: incremental runs select by it, and a profile
        that became exportable (a consent given, a restriction lifted) must be sent by the
        next one although its snapshot did not change."""
        ids, moment = sorted(set(profile_ids)), now()
        # an _id $in is answered from the index (deploy/local's FerretDB, up to 1000 ids)
        for start in range(0, len(ids), IDS_PER_QUERY):
            self.db[PROFILES].update_many({"_id": {"$in": ids[start:start + IDS_PER_QUERY]}},
                                          {"$set": {"changed_at": moment}})

    def consents(self, profile_ids: list[str], purposes: Iterable[str]
                 ) -> dict[str, dict[str, ConsentState]]:
        keys = [f"{p}|{purpose}" for p in profile_ids for purpose in purposes]
        out: dict[str, dict[str, ConsentState]] = {}
        for doc in self.db[CONSENTS].find({"_id": {"$in": keys}}):
            out.setdefault(doc["profile_id"], {})[doc["purpose"]] = ConsentState(
                doc["allowed"], doc["state"])
        return out

    def delete_consents(self, profile_ids: list[str]) -> int:
        deleted = 0
        for profile_id in set(profile_ids):
            entry = self._profile_entry(profile_id)
            deleted += sum(self.db[CONSENTS].delete_one({"_id": f"{profile_id}|{p}"})
                           .deleted_count for p in entry.get("consent_purposes") or [])
        return deleted

    def _profile_entry(self, profile_id: str) -> dict[str, Any]:
        return self.db[SUBJECT_INDEX].find_one({"_id": f"profile:{profile_id}"}) or {}

    def forget_profiles(self, profile_ids: list[str]) -> None:
        """Drop the erased profiles' own index entries (once their rows are gone)."""
        for profile_id in set(profile_ids):
            self.db[SUBJECT_INDEX].delete_one({"_id": f"profile:{profile_id}"})

    def _index_add(self, additions: Mapping[str, Mapping[str, list[str]]]) -> None:
        """Add ids to index entries ({entry id: {field: ids}}): the entries are mostly new,
        so one insert, and an ``$addToSet`` for each entry that was stored already."""
        def add_to_stored(entry: dict[str, Any]) -> UpdateOne:
            return UpdateOne({"_id": entry["_id"]}, {"$addToSet": {
                field: {"$each": ids} for field, ids in entry.items() if field != "_id"}},
                upsert=True)

        insert_new(self.db[SUBJECT_INDEX], [
            {"_id": key, **{field: list(dict.fromkeys(ids)) for field, ids in fields.items()}}
            for key, fields in sorted(additions.items())], taken=add_to_stored)

    def _index_pull(self, keys: Iterable[str], field: str, ids: list[str]) -> None:
        """Take ``ids`` out of each entry's ``field``; an entry left holding nothing is
        deleted (a profile's entry holding its consent purposes or merged profiles stays)."""
        for key in sorted(set(keys)):
            entry = self.db[SUBJECT_INDEX].find_one_and_update(
                # $pullAll: FerretDB 1.x ignores a $pull with a condition ({"$in": ...})
                {"_id": key}, {"$pullAll": {field: ids}},
                return_document=pymongo.ReturnDocument.AFTER)
            if entry is not None and not any(entry.get(name) for name in INDEX_LISTS):
                # only while still empty: an id added meanwhile, to any list, keeps the entry
                self.db[SUBJECT_INDEX].delete_one({"_id": key, **{
                    name: [] if name in entry else {"$exists": False} for name in INDEX_LISTS}})

    def set_restricted(self, profile_ids: list[str], restricted: bool) -> None:
        """Restrict the profiles, or lift their restrictions (the profiles are then marked
        changed, for the next incremental run; whether or not a restriction was still there,
        so that a lift delivered again after a crash before the mark still marks)."""
        for profile_id in profile_ids:
            if restricted:
                self.db[RESTRICTIONS].replace_one(
                    {"_id": profile_id}, {"_id": profile_id, "since": now()}, upsert=True)
            else:
                self.db[RESTRICTIONS].delete_one({"_id": profile_id})
        if not restricted:
            self._mark_changed(profile_ids)

    def restricted(self, profile_ids: list[str]) -> set[str]:
        return {doc["_id"] for doc in self.db[RESTRICTIONS].find({"_id": {"$in": profile_ids}})}

    # --- runs ----------------------------------------------------------------------------

    def create_run(self, run: dict[str, Any]) -> tuple[dict[str, Any], bool]:
        """Insert ``run``; when its id exists (a repeated Idempotency-Key) return the stored
        one. Returns (run, created). Raises RunInProgress when another run of the partner is
        queued or running: the partner's slot names its latest run and is taken by a
        conditional write first, so two requests at once cannot both start one."""
        existing = self.run(run["_id"])
        if existing is not None:
            return existing, False
        self._take_run_slot(run["partner_id"], run["_id"])
        try:
            self.db[RUNS].insert_one(run)
            return run, True
        except pymongo.errors.DuplicateKeyError:
            return self.db[RUNS].find_one({"_id": run["_id"]}), False

    def _take_run_slot(self, partner_id: str, run_id: str) -> None:
        slots, moment = self.db[RUN_SLOTS], now()
        if insert_new(slots, [{"_id": partner_id, "run_id": run_id, "taken_at": moment}]):
            return
        slot = slots.find_one({"_id": partner_id})
        if slot["run_id"] == run_id:
            return
        holder = self.run(slot["run_id"])
        if holder is None and _aware(slot["taken_at"]) > moment - RUN_SLOT_GRACE:
            raise RunInProgress  # the run that took it is being stored
        if holder is not None and holder["status"] in RUN_ACTIVE:
            raise RunInProgress
        taken = slots.update_one({"_id": partner_id, "run_id": slot["run_id"]},
                                 {"$set": {"run_id": run_id, "taken_at": moment}})
        if taken.modified_count != 1:
            raise RunInProgress  # another request took it meanwhile

    def run(self, run_id: str) -> dict[str, Any] | None:
        return self.db[RUNS].find_one({"_id": run_id})

    def runs(self, partner_id: str, limit: int = 50) -> list[dict[str, Any]]:
        docs = self.db[RUNS].find({"partner_id": partner_id})
        return sorted(docs, key=lambda d: _aware(d["created_at"]), reverse=True)[:limit]

    def active_run(self, partner_id: str) -> dict[str, Any] | None:
        return self.db[RUNS].find_one({"partner_id": partner_id,
                                       "status": {"$in": list(RUN_ACTIVE)}})

    def last_successful_run(self, partner_id: str, before: datetime) -> dict[str, Any] | None:
        done = [doc for doc in self.db[RUNS].find({"partner_id": partner_id,
                                                   "status": "succeeded"})
                if _aware(doc["created_at"]) < before]
        return max(done, key=lambda d: _aware(d["created_at"]), default=None)

    def claim_run(self, owner: str, lease_seconds: float) -> dict[str, Any] | None:
        """Take the oldest active run whose lease is free or expired; None when there is
        none. Another worker cannot take it until ``lease_seconds`` after the last renewal."""
        moment = now()
        for candidate in self.db[RUNS].find({"status": {"$in": list(RUN_ACTIVE)}}):
            lease_until = _aware(candidate.get("lease_until"))
            if lease_until is not None and lease_until > moment:
                continue
            claimed = self.db[RUNS].find_one_and_update(
                {"_id": candidate["_id"], "lease_until": candidate.get("lease_until"),
                 "status": {"$in": list(RUN_ACTIVE)}},
                {"$set": {"lease_owner": owner, "status": "running",
                          "lease_until": moment + timedelta(seconds=lease_seconds)},
                 "$inc": {"claims": 1}},
                return_document=pymongo.ReturnDocument.AFTER)
            if claimed is not None:
                if claimed.get("started_at") is None:
                    self.db[RUNS].update_one({"_id": claimed["_id"], "started_at": None},
                                             {"$set": {"started_at": moment}})
                return claimed
        return None

    def renew_lease(self, run_id: str, owner: str, lease_seconds: float) -> bool:
        result = self.db[RUNS].update_one(
            {"_id": run_id, "lease_owner": owner, "status": "running"},
            {"$set": {"lease_until": now() + timedelta(seconds=lease_seconds)}})
        return result.matched_count == 1

    def batch(self, run_id: str, number: int) -> dict[str, Any] | None:
        return self.db[BATCHES].find_one({"_id": f"{run_id}:{number}"})

    def save_batch(self, batch: dict[str, Any]) -> dict[str, Any]:
        """Store a rendered batch once; a batch stored before (by a worker that died) wins, so
        what is re-sent is exactly what may already have reached the partner."""
        try:
            self.db[BATCHES].insert_one(batch)
            return batch
        except pymongo.errors.DuplicateKeyError:
            return self.db[BATCHES].find_one({"_id": batch["_id"]})

    def batch_acknowledged(self, run_id: str, owner: str, batch: dict[str, Any],
                           receipt: dict[str, Any]) -> bool:
        """Record a batch the partner acknowledged and move the run on to the next one. The
        run's counters grow only if its ``next_batch`` was this batch (idempotent)."""
        # the bytes are no longer needed once the partner has them: keep only their hash
        self.db[BATCHES].update_one({"_id": batch["_id"]},
                                    {"$set": {"acknowledged_at": now(), "receipt": receipt,
                                              "body": None, "sent": []}})
        counts = batch["counts"]
        increments = _progress_increments(counts)
        update: dict[str, Any] = {
            "$set": {"next_batch": batch["number"] + 1, "cursor": batch["last_profile_id"]},
            "$inc": increments}
        if counts["exported"]:
            # the audit's content hash is taken over these, in batch order
            update["$push"] = {"batch_digests": batch["sha256"]}
            update["$set"]["receipt"] = receipt  # the audit shows the partner's last receipt
        result = self.db[RUNS].update_one(
            {"_id": run_id, "lease_owner": owner, "next_batch": batch["number"]}, update)
        return result.modified_count == 1

    def finish_run(self, run_id: str, owner: str, status: str, **fields: Any) -> None:
        """End the run and drop the rendered rows of its batch in hand (failed or cancelled
        runs are never resumed): what stays of its batches is the proof (hash, counts,
        receipt), no personal data."""
        run = self.db[RUNS].find_one_and_update(
            {"_id": run_id, "lease_owner": owner},
            {"$set": {"status": status, "finished_at": now(), "lease_until": None, **fields}},
            return_document=pymongo.ReturnDocument.AFTER)
        if run is not None:
            # acknowledged batches were cleared already; later ones were never rendered
            self.db[BATCHES].update_one({"_id": f"{run_id}:{run.get('next_batch', 0)}"},
                                        {"$set": {"body": None, "sent": []}})

    # --- what each partner received ------------------------------------------------------

    def record_deliveries(self, partner_id: str, run_id: str,
                          sent: Mapping[str, Mapping[str, list[Any]]]) -> None:
        """Remember, per profile, that ``partner_id`` received these identifiers now, with
        those it received since its last deletion notice: a partner keeps what it was sent
        (an address since changed is still in its audience), so the next notice names all."""
        moment = now()
        additions: dict[str, dict[str, list[str]]] = {}
        for profile_id, identifiers in sent.items():
            for field_name, values in identifiers.items():
                for value in values:
                    additions.setdefault(_delivered_key(partner_id, field_name, value), {
                        "delivery_ids": []})["delivery_ids"].append(f"{partner_id}|{profile_id}")
        self._index_add(additions)
        _, errors = bulk_write(self.db[DELIVERIES], [UpdateOne(
            {"_id": f"{partner_id}|{profile_id}"},
            {"$set": {"partner_id": partner_id, "profile_id": profile_id,
                      "last_sent_at": moment, "last_run_id": run_id, "awaiting_notice": True},
             "$setOnInsert": {"first_sent_at": moment},
             # atomic: a stream and a run may record the same profile at once
             **({"$addToSet": {f"identifiers.{field_name}": {"$each": list(values)}
                               for field_name, values in identifiers.items()}}
                if identifiers else {})}, upsert=True)
            for profile_id, identifiers in sent.items()])
        if errors:
            raise pymongo.errors.BulkWriteError({"writeErrors": errors})

    def deliveries_of(self, profile_ids: list[str]) -> list[dict[str, Any]]:
        partner_ids = sorted(doc["_id"] for doc in self.db[PARTNERS].find({}, {"_id": 1}))
        return find_by_ids(self.db[DELIVERIES], [f"{partner_id}|{profile_id}"
                                                 for partner_id in partner_ids
                                                 for profile_id in profile_ids])

    def deliveries_holding(self, partner_id: str, field_name: str,
                           values: list[Any]) -> list[dict[str, Any]]:
        """What ``partner_id`` received under ``field_name`` with one of ``values``."""
        found: dict[str, dict[str, Any]] = {}
        for value in values:
            entry = self.db[SUBJECT_INDEX].find_one(
                {"_id": _delivered_key(partner_id, field_name, value)}) or {}
            candidates = sorted(set(entry.get("delivery_ids") or []) - set(found))
            found.update((doc["_id"], doc) for doc in find_by_ids(self.db[DELIVERIES], candidates)
                         if value in (doc.get("identifiers") or {}).get(field_name, []))
        return [found[key] for key in sorted(found)]

    def forget_delivered(self, partner_id: str, field_name: str, values: list[Any]) -> None:
        """Drop the index entries of what an erased subject was sent as (every delivery that
        holds one of ``values`` was found by the erasure and told to delete it)."""
        for value in values:
            self.db[SUBJECT_INDEX].delete_one(
                {"_id": _delivered_key(partner_id, field_name, value)})

    def delivery(self, partner_id: str, profile_id: str) -> dict[str, Any] | None:
        return self.db[DELIVERIES].find_one({"_id": f"{partner_id}|{profile_id}"})

    # --- deletion notices ----------------------------------------------------------------

    def queue_notice(self, notice_id: str, delivery: Mapping[str, Any], reason: str) -> bool:
        """Queue a deletion notice for what ``delivery`` says the partner holds and forget
        those identifiers here; returns False when this notice was queued before. A run or
        stream may record more sent to the partner meanwhile: only the identifiers the notice
        names are taken out, and the delivery stops awaiting a notice only if nothing was
        recorded since it was read, so what came in between goes in the next notice."""
        identifiers = {field_name: list(values) for field_name, values
                       in (delivery.get("identifiers") or {}).items() if values}
        try:
            self.db[NOTICES].insert_one({
                "_id": notice_id, "partner_id": delivery["partner_id"],
                "profile_id": delivery["profile_id"], "reason": reason,
                "identifiers": identifiers, "status": "pending",
                "attempts": 0, "next_attempt_at": now(), "created_at": now()})
        except pymongo.errors.DuplicateKeyError:
            return False
        update: dict[str, Any] = {"$set": {"last_notice_id": notice_id, "last_notice_at": now()}}
        if identifiers:
            update["$pullAll"] = {f"identifiers.{field_name}": values
                                  for field_name, values in identifiers.items()}
        left = self.db[DELIVERIES].find_one_and_update(
            {"_id": delivery["_id"]}, update, return_document=pymongo.ReturnDocument.AFTER)
        if left is not None and not any((left.get("identifiers") or {}).values()):
            self.db[DELIVERIES].update_one(
                {"_id": delivery["_id"], "last_sent_at": left.get("last_sent_at")},
                {"$set": {"awaiting_notice": False}})
        self._index_pull({_delivered_key(delivery["partner_id"], field_name, value)
                          for field_name, values in identifiers.items() for value in values},
                         "delivery_ids", [delivery["_id"]])
        return True

    def due_notices(self, limit: int = 50) -> list[dict[str, Any]]:
        moment = now()
        pending = self.db[NOTICES].find({"status": "pending"})
        return [doc for doc in pending if _aware(doc["next_attempt_at"]) <= moment][:limit]

    def claim_notice(self, notice: Mapping[str, Any], hold_seconds: float) -> bool:
        """Hold a due notice for this worker while it is tried (it is due again after
        ``hold_seconds`` should the worker die meanwhile); False when another worker took it
        first."""
        return self.db[NOTICES].update_one(
            {"_id": notice["_id"], "status": "pending",
             "next_attempt_at": notice["next_attempt_at"]},
            {"$set": {"next_attempt_at": now() + timedelta(seconds=hold_seconds)}}
        ).modified_count == 1

    def notice_sent(self, notice_id: str, receipt: dict[str, Any]) -> None:
        self.db[NOTICES].update_one(
            {"_id": notice_id},
            {"$set": {"status": "sent", "sent_at": now(), "receipt": receipt, "identifiers": {}},
             "$inc": {"attempts": 1}})

    def notice_failed(self, notice_id: str, error: str, retry_at: datetime | None) -> None:
        update: dict[str, Any] = {"last_error": error}
        if retry_at is None:
            update["status"] = "failed"
        else:
            update["next_attempt_at"] = retry_at
        self.db[NOTICES].update_one({"_id": notice_id},
                                    {"$set": update, "$inc": {"attempts": 1}})

    def partner_notices(self, partner_id: str, status: str | None = None,
                        limit: int = 100) -> list[dict[str, Any]]:
        """The partner's deletion notices, newest first (at most ``limit``)."""
        query: dict[str, Any] = {"partner_id": partner_id}
        if status is not None:
            query["status"] = status
        docs = self.db[NOTICES].find(query, {"identifiers": 0})
        return sorted(docs, key=lambda d: (_aware(d["created_at"]), d["_id"]),
                      reverse=True)[:limit]

    def notice_counts(self, partner_id: str) -> dict[str, int]:
        return _counts_by_status(self.db[NOTICES], partner_id, NOTICE_STATES)

    def requeue_failed_notices(self, partner_id: str) -> int:
        """Make the partner's notices that failed for good due again (its contract was
        fixed); returns how many."""
        return self.db[NOTICES].update_many(
            {"partner_id": partner_id, "status": "failed"},
            {"$set": {"status": "pending", "next_attempt_at": now(), "requeued_at": now()}}
        ).modified_count

    def abandon_notice(self, partner_id: str, notice_id: str, by: str,
                       reason: str) -> str | None:
        """Close a notice that failed for good without sending it (the partner was told
        some other way, or is gone), recording who and why, its identifiers dropped. Returns
        the notice's status before (None when the partner has no such notice); only a
        failed one is abandoned."""
        taken = self.db[NOTICES].find_one_and_update(
            {"_id": notice_id, "partner_id": partner_id, "status": "failed"},
            {"$set": {"status": "abandoned", "identifiers": {}, "abandoned_at": now(),
                      "abandoned_by": by, "abandoned_reason": reason}})
        if taken is not None:
            return taken["status"]
        found = self.db[NOTICES].find_one({"_id": notice_id, "partner_id": partner_id},
                                          {"status": 1})
        return found and found["status"]

    def notice(self, notice_id: str) -> dict[str, Any] | None:
        return self.db[NOTICES].find_one({"_id": notice_id}, {"identifiers": 0})

    def notice_backlog(self) -> dict[str, Any]:
        """Counts of pending and failed notices (every partner) and when the oldest pending
        one was queued (None when none is)."""
        # one pass: each filter on status scans the collection on FerretDB
        open_notices = list(self.db[NOTICES].find({"status": {"$in": ["pending", "failed"]}},
                                                  {"status": 1, "created_at": 1}))
        pending = [doc for doc in open_notices if doc["status"] == "pending"]
        return {"pending": len(pending), "failed": len(open_notices) - len(pending),
                "oldest_pending_at": min((_aware(d["created_at"]) for d in pending),
                                         default=None)}

    def notices_of(self, profile_ids: list[str]) -> list[dict[str, Any]]:
        return list(self.db[NOTICES].find({"profile_id": {"$in": profile_ids}}))

    # --- streaming -----------------------------------------------------------------------

    def queue_stream_change(self, change_id: str, partner_id: str, profile_id: str,
                            cause: str) -> bool:
        """Queue a profile's change for a streaming partner; False when queued before (a
        redelivered message)."""
        self._index_add({f"profile:{profile_id}": {"stream_changes": [change_id]}})
        try:
            self.db[STREAM_CHANGES].insert_one({
                "_id": change_id, "partner_id": partner_id, "profile_id": profile_id,
                "cause": cause, "status": "pending", "queued_at": now()})
        except pymongo.errors.DuplicateKeyError:
            return False
        return True

    def cancel_stream_changes(self, profile_ids: list[str], reason: str,
                              partner_id: str | None = None) -> int:
        """Drop the profiles' changes waiting for ``partner_id`` (every partner when None):
        a consent was withdrawn or the profiles erased, so nothing more of theirs goes."""
        cancelled = 0
        for profile_id in set(profile_ids):
            for change_id in self._profile_entry(profile_id).get("stream_changes") or []:
                query: dict[str, Any] = {"_id": change_id, "status": "pending"}
                if partner_id is not None:
                    query["partner_id"] = partner_id
                cancelled += self.db[STREAM_CHANGES].update_one(query, {"$set": {
                    "status": "cancelled", "reason": reason, "settled_at": now()}}
                ).modified_count
        return cancelled

    def pending_stream_changes(self, partner_id: str, limit: int) -> list[dict[str, Any]]:
        docs = self.db[STREAM_CHANGES].find({"partner_id": partner_id, "status": "pending"})
        return sorted(docs, key=lambda doc: (_aware(doc["queued_at"]), doc["_id"]))[:limit]

    def stream_change_counts(self, partner_id: str) -> dict[str, int]:
        """How many of the partner's changes are in each state: the pending ones and the
        settled ones still kept (``expire_settled_stream_changes``)."""
        return _counts_by_status(self.db[STREAM_CHANGES], partner_id, CHANGE_STATES)

    def expire_settled_stream_changes(self, before: datetime,
                                      pause: Callable[[float], bool] | None = None) -> int:
        """Delete the changes settled (sent, not sent or cancelled) before ``before``, and
        their ids from their profiles' index entries; returns how many went. Found by one
        streamed read of ``settled_at`` (a pending change has none), then
        ``SETTLED_CHANGES_CHUNK`` at a time by ``_id``, ``pause`` between chunks
        (``store.paced``; it returns True to stop). Only a pending change is ever looked up
        through the index (to cancel it), so its entries are cleared first: a sweep cut short
        leaves a change no entry names, which the next sweep deletes."""
        settled = older_than(self.db[STREAM_CHANGES], "settled_at", before, ("profile_id",))
        deleted = 0
        for chunk in paced(settled, SETTLED_CHANGES_CHUNK, pause):
            by_profile: dict[str, list[str]] = {}
            for change in chunk:
                by_profile.setdefault(change["profile_id"], []).append(change["_id"])
            for profile_id, change_ids in sorted(by_profile.items()):
                self._index_pull([f"profile:{profile_id}"], "stream_changes", change_ids)
            deleted += delete_by_ids(self.db[STREAM_CHANGES],
                                     [change["_id"] for change in chunk])
        return deleted

    def stream(self, partner_id: str) -> dict[str, Any] | None:
        return self.db[STREAMS].find_one({"_id": partner_id})

    def claim_stream(self, partner_id: str, owner: str, lease_seconds: float
                     ) -> dict[str, Any] | None:
        """The partner's stream, leased to ``owner`` (renewed when it holds it already);
        None while another worker holds it or a failed delivery waits for its retry."""
        moment = now()
        current = self.db[STREAMS].find_one({"_id": partner_id})
        if current is None:
            self.db[STREAMS].update_one(
                {"_id": partner_id},
                {"$setOnInsert": {"next_batch": 0, "lease_owner": None, "lease_until": None,
                                  "retry_at": None, "created_at": moment,
                                  "progress": {"considered": 0, "excluded": {}, "exported": 0,
                                               "batches_sent": 0, "invalid_values": {}}}},
                upsert=True)
            current = self.db[STREAMS].find_one({"_id": partner_id})
        lease_until = _aware(current.get("lease_until"))
        retry_at = _aware(current.get("retry_at"))
        if retry_at is not None and retry_at > moment:
            return None
        if current.get("lease_owner") != owner and lease_until is not None \
                and lease_until > moment:
            return None
        return self.db[STREAMS].find_one_and_update(
            {"_id": partner_id, "lease_owner": current.get("lease_owner"),
             "lease_until": current.get("lease_until")},
            {"$set": {"lease_owner": owner,
                      "lease_until": moment + timedelta(seconds=lease_seconds)},
             "$inc": {"claims": 0 if current.get("lease_owner") == owner else 1}},
            return_document=pymongo.ReturnDocument.AFTER)

    def renew_stream_lease(self, partner_id: str, owner: str, lease_seconds: float) -> bool:
        result = self.db[STREAMS].update_one(
            {"_id": partner_id, "lease_owner": owner},
            {"$set": {"lease_until": now() + timedelta(seconds=lease_seconds)}})
        return result.matched_count == 1

    def discard_unsent_batches_holding(self, profile_ids: list[str]) -> int:
        """Forget the unsent batches in hand (of active runs and of streams) that hold one of
        ``profile_ids`` (erased): they are rendered afresh without them. A batch already
        attempted is kept, to be re-sent byte for byte (the partner may hold it), and the
        executor then sends a deletion notice for each erased profile in it."""
        erased = set(profile_ids)
        in_hand = [f"{run['_id']}:{run.get('next_batch', 0)}" for run in self.db[RUNS].find(
            {"status": {"$in": list(RUN_ACTIVE)}}, {"next_batch": 1})]
        in_hand += [f"{stream_id(stream['_id'])}:{stream['next_batch']}"
                    for stream in self.db[STREAMS].find({}, {"next_batch": 1})]
        return sum(self.discard_unsent_batch(batch["_id"])
                   for batch in find_by_ids(self.db[BATCHES], in_hand)
                   if batch.get("attempted_at") is None and not batch.get("acknowledged_at")
                   and erased & {item["profile_id"] for item in batch.get("sent") or []})

    def discard_unsent_batch(self, batch_id: str) -> bool:
        """Forget a rendered batch no attempt was made to send (it is rendered afresh)."""
        result = self.db[BATCHES].delete_one({"_id": batch_id, "attempted_at": None})
        return result.deleted_count == 1

    def batch_attempted(self, batch_id: str) -> None:
        self.db[BATCHES].update_one({"_id": batch_id, "attempted_at": None},
                                    {"$set": {"attempted_at": now()}})

    def stream_batch_acknowledged(self, partner_id: str, owner: str, batch: dict[str, Any],
                                  receipt: dict[str, Any]) -> bool:
        """Mark the batch's changes sent and move the stream to its next batch; counters grow
        only if ``next_batch`` was this batch (idempotent after a crash)."""
        moment = now()
        # the changes first: a batch's ``sent`` list is cleared once it is acknowledged
        sent = [item["profile_id"] for item in batch["sent"]]
        for status, query in (("sent", {"profile_id": {"$in": sent}}), ("not_sent", {})):
            self.db[STREAM_CHANGES].update_many(
                {"_id": {"$in": batch["changes"]}, "status": "pending", **query},
                {"$set": {"status": status, "batch": batch["number"], "settled_at": moment}})
        self.db[BATCHES].update_one({"_id": batch["_id"]},
                                    {"$set": {"acknowledged_at": moment, "receipt": receipt,
                                              "body": None, "sent": []}})
        counts = batch["counts"]
        increments = _progress_increments(counts)
        update: dict[str, Any] = {"$set": {"next_batch": batch["number"] + 1, "retry_at": None,
                                           "last_error": None, "failures": 0},
                                  "$inc": increments}
        if counts["exported"]:
            update["$set"].update({"last_sent_at": moment, "last_receipt": receipt,
                                   "last_batch_sha256": batch["sha256"]})
        result = self.db[STREAMS].update_one(
            {"_id": partner_id, "lease_owner": owner, "next_batch": batch["number"]}, update)
        return result.modified_count == 1

    def stream_failed(self, partner_id: str, owner: str, error: str, permanent: bool,
                      retry_at: datetime) -> None:
        """A batch the partner did not take: the stream pauses until ``retry_at`` and then
        re-sends the same batch; nothing is dropped."""
        self.db[STREAMS].update_one(
            {"_id": partner_id, "lease_owner": owner},
            {"$set": {"retry_at": retry_at, "last_error": error,
                      "last_error_permanent": permanent, "last_error_at": now(),
                      "lease_owner": None, "lease_until": None},
             "$inc": {"failures": 1}})


def _delivered_key(partner_id: str, field_name: str, value: Any) -> str:
    return f"delivered:{partner_id}|{field_name}|{value}"
