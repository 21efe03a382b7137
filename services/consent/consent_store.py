"""The consent ledger and state in MongoDB, and how a change is made durable and announced.

Collections, all read and written by ``_id`` only (FerretDB 1.x pushes nothing else down):

* ``consent_ledger``: the append-only entries, ``_id`` = entry id = receipt id;
* ``consent_state``: one projection per subject, ``_id`` = the subject key (profile_id or
  ``id:<type>:<value>``), version-checked writes; a check is one ``_id`` read;
* ``consent_changes``: every change (its entries, and for a merge or link what it relates),
  ``_id`` = the cause (a client decision id, an API request, a Kafka message id); storing it
  is the commit point, so a retried request or re-delivered message finds it and redoes the
  rest instead of deciding anew;
* ``consent_outbox``: changes made by the API whose Consent Changed messages are not yet on
  Kafka; the worker's relay (``UnannouncedChanges``) finishes and announces them.

Every step after the commit is idempotent: ledger inserts ignore duplicates, applying an entry
twice changes nothing, message ids derive from entry ids.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import pymongo.errors
from pymongo.database import Database

from services.common import topics
from services.common.bus import Outgoing, Relay
from services.common.envelope import derived_message_id, new_envelope
from services.common.store import (
    LISTING_BATCH,
    delete_by_ids,
    find_by_ids,
    insert_new,
    paced,
)
from services.consent import ledger
from services.consent.ledger import Entry, Record, SubjectState

LEDGER = "consent_ledger"
STATE = "consent_state"
CHANGES = "consent_changes"
OUTBOX = "consent_outbox"
MAX_CONFLICT_RETRIES = 50
MAX_MERGE_HOPS = 20
SWEEP_PAGE = 500  # states the proof sweep reads between two pauses


class VersionConflict(Exception):
    """Someone wrote the state since it was read."""


@dataclass
class Change:
    """A committed change: its entries plus, for a merge or a link, the subjects it joins."""

    id: str
    entries: list[Entry]
    merge: dict | None = None  # {"survivor": key, "merged": key}
    link: dict | None = None  # {"identifier": key, "profile": key}
    at: datetime = field(default_factory=lambda: datetime.now(UTC))

    def to_doc(self) -> dict:
        return {"_id": self.id, "entries": [e.to_doc() for e in self.entries],
                "merge": self.merge, "link": self.link, "at": self.at}

    @classmethod
    def from_doc(cls, doc: dict) -> Change:
        return cls(id=doc["_id"], entries=[Entry.from_doc(e) for e in doc["entries"]],
                   merge=doc.get("merge"), link=doc.get("link"), at=doc["at"])


def _state_from_doc(doc: dict) -> SubjectState:
    return SubjectState(
        key=doc["_id"],
        purposes={p: Record(**r) for p, r in (doc.get("purposes") or {}).items()},
        merged_into=doc.get("merged_into"), absorbed=list(doc.get("absorbed") or []),
        linked=list(doc.get("linked") or []), applied=list(doc.get("applied") or []),
        joined=list(doc.get("joined") or []), version=doc.get("version", 0))


def _state_to_doc(state: SubjectState) -> dict:
    return {"_id": state.key,
            "purposes": {p: vars(r) for p, r in state.purposes.items()},
            "merged_into": state.merged_into, "absorbed": state.absorbed,
            "linked": state.linked, "applied": state.applied, "joined": state.joined,
            "version": state.version}


@dataclass
class Finished:
    """What finishing a change did: the entries applied (with any forwarded to a survivor)
    and the states of the subjects involved afterwards."""

    entries: list[Entry]
    states: list[SubjectState] = field(default_factory=list)


class ConsentStore:
    def __init__(self, db: Database):
        self.ledger = db[LEDGER]
        self.states = db[STATE]
        self.changes = db[CHANGES]
        self.outbox = db[OUTBOX]

    # reads

    def state(self, key: str) -> SubjectState | None:
        doc = self.states.find_one({"_id": key})
        return _state_from_doc(doc) if doc else None

    def subjects_with_state(self, keys: list[str]) -> set[str]:
        """Which of ``keys`` have a state stored, in one query."""
        return {doc["_id"] for doc in find_by_ids(self.states, keys, {"_id": 1})}

    def current_state(self, key: str) -> tuple[str, SubjectState | None]:
        """The subject's state following merges to the profile that absorbed it, with that
        profile's key. One read unless the profile was merged away."""
        seen = set()
        state = self.state(key)
        while state and state.merged_into and state.key not in seen and len(seen) < MAX_MERGE_HOPS:
            seen.add(state.key)
            key = state.merged_into
            state = self.state(key)
        return key, state

    def entries(self, ids: list[str]) -> list[Entry]:
        found = {doc["_id"]: doc for doc in self.ledger.find({"_id": {"$in": ids}})}
        return [Entry.from_doc(found[i]) for i in ids if i in found]

    def change(self, change_id: str) -> Change | None:
        doc = self.changes.find_one({"_id": change_id})
        return Change.from_doc(doc) if doc else None

    # writes

    def commit(self, change: Change, *, announce_later: bool) -> Change:
        """Store ``change`` unless one with its id exists; return the stored one. With
        ``announce_later`` the change is also put in the outbox for the relay."""
        if announce_later:
            self.outbox.update_one({"_id": change.id}, {"$setOnInsert": {"at": change.at}},
                                   upsert=True)
        try:
            self.changes.insert_one(change.to_doc())
            return change
        except pymongo.errors.DuplicateKeyError:
            return self.change(change.id)

    def finish(self, change: Change) -> Finished:
        """Record the change's entries in the ledger and apply them (and its merge or link)
        to every subject involved. Idempotent."""
        self._insert_entries(change.entries)
        done = Finished(entries=list(change.entries))
        if change.merge:
            done.states.append(self.update(change.merge["merged"], lambda s: set_merged_into(
                s, change.merge["survivor"])))
        by_subject: dict[str, list[Entry]] = {}
        for entry in change.entries:
            by_subject.setdefault(entry.subject.key, []).append(entry)
        related = [(change.merge or {}).get("survivor"), (change.link or {}).get("identifier"),
                   (change.link or {}).get("profile")]
        keys = [*by_subject, *(k for k in related if k and k not in by_subject)]
        for key in keys:
            entries = by_subject.get(key, [])
            state = self.update(key, lambda s, e=entries: _apply_change(s, e, change))
            done.states.append(state)
            if state.merged_into and entries:
                # merged away after the entries were made: they belong to the survivor now
                survivor, _ = self.current_state(state.merged_into)
                moved = [ledger.forwarded(e, survivor) for e in entries]
                self._insert_entries(moved)
                done.entries.extend(moved)
                done.states.append(self.update(survivor, lambda s, m=moved: s.apply(m)))
        return done

    def erase(self, state: SubjectState, entry_ids: list[str], change_ids: list[str],
              unannounced: list[Change]) -> int:
        """Delete a subject's state, ledger entries and changes (data-subject erasure, the
        one exception to the append-only ledger). Returns how many entries went.

        The changes go first, then the entries, the state last: each is found through the
        next, so an erasure cut short and delivered again still finds what is left. Of
        ``unannounced`` (the outbox, read once per erasure), those naming the subject go too,
        also for a subject with no state yet (``state`` then empty): the relay would
        otherwise finish one and bring the subject back. Their entries naming the subject,
        which a finish cut short may have put in the ledger, are found only through them,
        so they go before them."""
        unfinished = [change for change in unannounced if _names(change, state.key)]
        deleted = sum(self.ledger.delete_one({"_id": entry.id}).deleted_count
                      for change in unfinished for entry in change.entries
                      if entry.subject.key == state.key)
        for change_id in dict.fromkeys([*change_ids, *state.joined,
                                        *(change.id for change in unfinished)]):
            self.changes.delete_one({"_id": change_id})
            self.outbox.delete_one({"_id": change_id})
        deleted += sum(self.ledger.delete_one({"_id": i}).deleted_count for i in entry_ids)
        self.states.delete_one({"_id": state.key})
        return deleted

    def sweep_replaced_proof(self, cutoff: datetime, *, apply: bool,
                             pause: Callable[[float], bool] | None = None) -> tuple[int, int]:
        """Ledger entries whose decision was replaced by a later one on the same purpose
        before ``cutoff`` (the consent_proof retention): how many, and with ``apply`` how
        many were deleted, with their copies in the changes and their place in the
        subject's history. One streamed pass over the states, ``pause`` between pages
        (``store.paced``); only a subject that decided on a purpose more than once has its
        entries read."""
        expired = deleted = 0
        listing = self.states.find({}, {"applied": 1, "purposes": 1}).batch_size(LISTING_BATCH)
        for page in paced(listing, SWEEP_PAGE, pause):
            for doc in page:
                applied = doc.get("applied") or []
                if len(applied) <= len(doc.get("purposes") or {}):
                    continue  # at most one decision per purpose: none was replaced
                entries = [Entry.from_doc(d) for d in find_by_ids(self.ledger, applied)]
                replaced = set(ledger.replaced_before(entries, cutoff))
                # entries a sweep cut short deleted before it could drop them from the history
                gone = set(applied) - {entry.id for entry in entries}
                expired += len(replaced)
                if apply and (replaced or gone):
                    deleted += self._forget_entries(
                        doc["_id"], [e for e in entries if e.id in replaced], gone)
        return expired, deleted

    def _forget_entries(self, key: str, entries: list[Entry], gone: set[str]) -> int:
        """Delete ``entries`` of subject ``key``: from their changes first, then the ledger,
        the subject's history last (with ``gone``, ids whose entries were deleted already),
        each found through the next (a sweep cut short finds the rest the next time)."""
        ids = {entry.id for entry in entries}
        for change in find_by_ids(self.changes, sorted({e.cause_id for e in entries})):
            kept = [e for e in change["entries"] if e["_id"] not in ids]
            if kept or change.get("merge") or change.get("link"):
                self.changes.update_one({"_id": change["_id"]}, {"$set": {"entries": kept}})
            else:
                self.changes.delete_one({"_id": change["_id"]})
        deleted = delete_by_ids(self.ledger, ids)
        self.update(key, lambda state: _drop_applied(state, ids | gone))
        return deleted

    def announced(self, change_ids: list[str]) -> None:
        for change_id in change_ids:
            self.outbox.delete_one({"_id": change_id})

    def unannounced(self, before: datetime | None = None) -> list[Change]:
        """The changes in the outbox (committed before ``before``, when given)."""
        ids = [doc["_id"] for doc in self.outbox.find({}, {"_id": 1, "at": 1})
               if before is None or _aware(doc["at"]) < before]
        return [change for change in map(self.change, ids) if change]

    def update(self, key: str, mutate: Callable[[SubjectState], bool]) -> SubjectState:
        """Load (or create) the subject's state, ``mutate`` it, save it if it changed; retry
        on a concurrent write."""
        for _ in range(MAX_CONFLICT_RETRIES):
            state = self.state(key) or SubjectState(key=key)
            if not mutate(state):
                return state
            try:
                self._save(state)
                return state
            except VersionConflict:
                continue
        raise VersionConflict(key)

    def _save(self, state: SubjectState) -> None:
        version = state.version
        state.version = version + 1
        doc = _state_to_doc(state)
        if version == 0:
            try:
                self.states.insert_one(doc)
            except pymongo.errors.DuplicateKeyError:
                raise VersionConflict(state.key) from None
        elif self.states.replace_one({"_id": state.key, "version": version},
                                     doc).matched_count != 1:
            raise VersionConflict(state.key)

    def _insert_entries(self, entries: list[Entry]) -> None:
        insert_new(self.ledger, [e.to_doc() for e in entries])


def _drop_applied(state: SubjectState, ids: set[str]) -> bool:
    kept = [entry_id for entry_id in state.applied if entry_id not in ids]
    changed, state.applied = len(kept) != len(state.applied), kept
    return changed


def _aware(moment: datetime) -> datetime:
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def set_merged_into(state: SubjectState, survivor: str) -> bool:
    if state.merged_into == survivor:
        return False
    state.merged_into = survivor
    return True


def _names(change: Change, key: str) -> bool:
    merge, link = change.merge or {}, change.link or {}
    return (any(entry.subject.key == key for entry in change.entries)
            or key in (merge.get("survivor"), merge.get("merged"), *merge.get("linked", []))
            or key in link.values())


def _apply_change(state: SubjectState, entries: list[Entry], change: Change) -> bool:
    changed = state.apply(entries)
    if (change.merge or change.link) and change.id not in state.joined:
        state.joined.append(change.id)  # it names the subject's key, with or without entries
        changed = True
    if change.merge and state.key == change.merge["survivor"]:
        merged = change.merge["merged"]
        if merged not in state.absorbed:
            state.absorbed.append(merged)
            changed = True
        for key in change.merge.get("linked", []):
            if key not in state.linked:
                state.linked.append(key)
                changed = True
    if change.link and state.key in (change.link["identifier"], change.link["profile"]):
        other = (change.link["profile"] if state.key == change.link["identifier"]
                 else change.link["identifier"])
        if other not in state.linked:
            state.linked.append(other)
            changed = True
    return changed


# --- messages --------------------------------------------------------------------------------


def change_messages(done: Finished) -> list[Outgoing]:
    """Consent Changed for each entry still in force after the change (an entry older than
    the subject's current decision changes nothing and announces nothing)."""
    latest = {state.key: state for state in done.states}  # later states of a key win
    messages = []
    for entry in done.entries:
        state = latest.get(entry.subject.key)
        if state is not None and state.is_current(entry):
            messages.append(consent_changed(entry.subject, entry.purpose,
                                            state.purposes[entry.purpose],
                                            derived_message_id(entry.id, "consent-change")))
    return messages


def consent_changed(subject: ledger.Subject, purpose: str, record: Record,
                    message_id: str) -> Outgoing:
    """The cdp.consent.changes message for a subject's record of one purpose."""
    envelope = new_envelope(
        "Consent Changed", "system", message_id=message_id, identifiers=subject.identifiers(),
        occurred_at=record.decided_at,
        payload={"purpose": purpose, "state": record.state, "allowed": record.allowed,
                 "reason": record.reason, "receipt_id": record.entry_id,
                 "notice_version": record.notice_version,
                 "collected_at": _aware(record.decided_at).isoformat().replace("+00:00", "Z"),
                 "source": record.source})
    if not subject.is_identifier:
        envelope = envelope.resolved_to(subject.profile_id)
    return Outgoing(topics.CONSENT_CHANGES, subject.key, envelope)


class UnannouncedChanges(Relay):
    """Changes the API stored but could not announce (Kafka away: the caller got 503, the
    decision still holds): the consent worker finishes and announces them."""

    GRACE = timedelta(seconds=30)  # leave the API time to announce them itself

    def __init__(self, store: ConsentStore):
        self.store = store
        self._pending: dict[str, str] = {}  # message id → change id

    def pending(self) -> list[Outgoing]:
        messages = []
        self._pending = {}
        for change in self.store.unannounced(datetime.now(UTC) - self.GRACE):
            announcements = change_messages(self.store.finish(change))
            for message in announcements:
                self._pending[message.value.message_id] = change.id
            messages.extend(announcements)
            if not announcements:
                self.store.announced([change.id])
        return messages

    def sent(self, messages: list[Outgoing]) -> None:
        self.store.announced(sorted({self._pending[m.value.message_id] for m in messages
                                     if m.value.message_id in self._pending}))
