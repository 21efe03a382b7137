"""The consent ledger and its projection, as plain Python: no Flask, Kafka or Mongo.

* A **subject** is a profile (key = its profile_id) or a bare identifier not (yet) known as a
  profile, such as a do-not-call phone number (key = ``id:<type>:<value>``, the value
  normalised with services.common.identifiers).
* An **entry** is one append-only ledger line: subject, purpose, granted / denied / withdrawn,
  why (kind and reason), channel, source, when it was collected, the privacy-notice version and
  the proof (IP, user agent, TC string, agent id). Entries are never changed or deleted.
* A subject's **state** is the projection of its entries: per purpose the entry with the latest
  ``(collected_at, entry id)``, so applying entries in any order, or twice, gives the same state.
* ``check`` answers whether a purpose is allowed and why: an explicit decision, an objection,
  a state carried over by a merge, or the catalogue's default for the purpose's legal basis.

Merges follow identity: the survivor takes, per purpose, the stricter of both states (not
allowed beats allowed; a purpose only the merged profile decided is taken over as it is),
stamped with the merge time, so it holds until the customer decides again. The same rule links
a bare identifier's decisions to the profile it turns out to belong to. A split copies the
original's refusals (never its grants: they may have been the other person's) to the new
profile.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from datetime import datetime

from services.common.envelope import derived_message_id
from services.common.identifiers import normalise
from services.consent.catalogue import Catalogue

STATES = ("granted", "denied", "withdrawn")
KINDS = ("decision", "objection", "merge", "link", "split")
IDENTIFIER_PREFIX = "id:"

EXPLICIT = "explicit_decision"
OBJECTION = "objection"
MERGE = "merge_stricter"
LINKED = "identifier_linked"
SPLIT = "split_inherited"
DEFAULT = "default_by_legal_basis"
UNKNOWN_PURPOSE = "unknown_purpose"


@dataclass(frozen=True)
class Subject:
    """Whose consent: a profile or a bare identifier."""

    key: str
    profile_id: str | None = None
    identifier_type: str | None = None
    identifier_value: str | None = None

    @property
    def is_identifier(self) -> bool:
        return self.profile_id is None

    def identifiers(self) -> dict[str, str]:
        return {self.identifier_type: self.identifier_value} if self.is_identifier else {}

    def to_doc(self) -> dict:
        if self.is_identifier:
            return {"key": self.key, "identifier": {"type": self.identifier_type,
                                                    "value": self.identifier_value}}
        return {"key": self.key, "profile_id": self.profile_id}


def profile_subject(profile_id: str) -> Subject:
    return Subject(key=profile_id, profile_id=profile_id)


def identifier_subject(type_: str, value: str, region: str = "FI") -> Subject:
    """A bare-identifier subject, its value normalised; raises InvalidIdentifier."""
    canonical = normalise(type_, value, region=region)
    return Subject(key=f"{IDENTIFIER_PREFIX}{type_}:{canonical}", identifier_type=type_,
                   identifier_value=canonical)


def subject_from_key(key: str) -> Subject:
    if key.startswith(IDENTIFIER_PREFIX):
        type_, _, value = key[len(IDENTIFIER_PREFIX):].partition(":")
        return Subject(key=key, identifier_type=type_, identifier_value=value)
    return profile_subject(key)


@dataclass(frozen=True)
class Entry:
    """One ledger line. ``id`` doubles as the receipt id."""

    id: str
    subject: Subject
    purpose: str
    state: str
    kind: str
    reason: str
    channel: str
    source: str
    collected_at: datetime
    recorded_at: datetime
    cause_id: str
    notice_version: str | None = None
    proof: dict = field(default_factory=dict)
    actor: str | None = None
    receipt: dict | None = None

    def to_doc(self) -> dict:
        return {"_id": self.id, "subject": self.subject.to_doc(), "purpose": self.purpose,
                "state": self.state, "kind": self.kind, "reason": self.reason,
                "channel": self.channel, "source": self.source,
                "collected_at": self.collected_at, "recorded_at": self.recorded_at,
                "cause_id": self.cause_id, "notice_version": self.notice_version,
                "proof": self.proof, "actor": self.actor, "receipt": self.receipt}

    @classmethod
    def from_doc(cls, doc: dict) -> Entry:
        return cls(id=doc["_id"], subject=subject_from_key(doc["subject"]["key"]),
                   purpose=doc["purpose"], state=doc["state"], kind=doc["kind"],
                   reason=doc["reason"], channel=doc["channel"], source=doc["source"],
                   collected_at=doc["collected_at"], recorded_at=doc["recorded_at"],
                   cause_id=doc["cause_id"], notice_version=doc.get("notice_version"),
                   proof=doc.get("proof") or {}, actor=doc.get("actor"),
                   receipt=doc.get("receipt"))


@dataclass(frozen=True)
class Record:
    """The decision currently in force for one purpose of one subject."""

    state: str
    reason: str
    decided_at: datetime
    entry_id: str
    source: str
    notice_version: str | None = None

    @property
    def allowed(self) -> bool:
        return self.state == "granted"

    def order(self) -> tuple[datetime, str]:
        return self.decided_at, self.entry_id

    @classmethod
    def of(cls, entry: Entry) -> Record:
        return cls(entry.state, entry.reason, entry.collected_at, entry.id, entry.source,
                   entry.notice_version)


@dataclass
class SubjectState:
    """A subject's projection: current record per purpose plus how it relates to others.

    ``merged_into``: the profile this one was merged into (its checks follow it);
    ``linked``: for a profile, the bare-identifier subjects found to be its; for a bare
    identifier, the profiles it belongs to; ``applied``: ids of the entries applied, oldest
    first (the history); ``joined``: ids of the merge and link changes that named it (an
    erasure deletes them with the entries); ``version`` guards concurrent writes."""

    key: str
    purposes: dict[str, Record] = field(default_factory=dict)
    merged_into: str | None = None
    absorbed: list[str] = field(default_factory=list)
    linked: list[str] = field(default_factory=list)
    applied: list[str] = field(default_factory=list)
    joined: list[str] = field(default_factory=list)
    version: int = 0

    def apply(self, entries: Iterable[Entry]) -> bool:
        """Apply this subject's entries not applied yet; True when anything changed."""
        changed = False
        for entry in entries:
            if entry.subject.key != self.key or entry.id in self.applied:
                continue
            self.applied.append(entry.id)
            changed = True
            current = self.purposes.get(entry.purpose)
            record = Record.of(entry)
            if current is None or record.order() > current.order():
                self.purposes[entry.purpose] = record
        return changed

    def is_current(self, entry: Entry) -> bool:
        record = self.purposes.get(entry.purpose)
        return record is not None and record.entry_id == entry.id


@dataclass(frozen=True)
class CheckAnswer:
    purpose: str
    allowed: bool
    state: str  # granted | denied | withdrawn | default
    reason: str
    decided_at: datetime | None = None


def replaced_before(entries: Iterable[Entry], cutoff: datetime) -> list[str]:
    """Ids of the subject's entries whose decision stopped being in force before ``cutoff``:
    a later decision on the same purpose (in the order a state applies them) replaced it
    when that one was recorded (one collected years back but recorded today replaced it
    today), or when it was itself recorded, if later. The decision in force for each purpose
    has no later one, so it is never among them, however old: it is the proof of what holds
    now."""
    by_purpose: dict[str, list[Entry]] = {}
    for entry in entries:
        by_purpose.setdefault(entry.purpose, []).append(entry)
    replaced = []
    for decisions in by_purpose.values():
        decisions.sort(key=lambda e: Record.of(e).order())
        replaced.extend(entry.id for entry, successor in itertools.pairwise(decisions)
                        if max(entry.recorded_at, successor.recorded_at) < cutoff)
    return replaced


def check(catalogue: Catalogue, state: SubjectState | None, purpose: str) -> CheckAnswer:
    """Whether ``purpose`` is allowed for the subject whose projection is ``state`` (None when
    nothing was ever recorded for it). Never raises; an unknown purpose is not allowed."""
    spec = catalogue.purpose(purpose)
    if spec is None:
        return CheckAnswer(purpose, False, "default", UNKNOWN_PURPOSE)
    record = state.purposes.get(purpose) if state else None
    if record is None:
        return CheckAnswer(purpose, spec.default == "granted", "default", DEFAULT)
    return CheckAnswer(purpose, record.allowed, record.state, record.reason, record.decided_at)


# --- entries ---------------------------------------------------------------------------------


def entry_id(cause_id: str, subject: Subject, purpose: str) -> str:
    """Deterministic, so a retried request or re-delivered message makes the same entries."""
    return derived_message_id(cause_id, f"consent-entry:{subject.key}:{purpose}")


def decision_entries(subject: Subject, decisions: dict[str, str], *, kind: str, reason: str,
                     channel: str, source: str, collected_at: datetime, recorded_at: datetime,
                     cause_id: str, notice_version: str | None, proof: dict,
                     actor: str | None) -> list[Entry]:
    """Entries for a subject's own decisions (``decisions``: purpose → state)."""
    return [Entry(id=entry_id(cause_id, subject, purpose), subject=subject, purpose=purpose,
                  state=state, kind=kind, reason=reason, channel=channel, source=source,
                  collected_at=collected_at, recorded_at=recorded_at, cause_id=cause_id,
                  notice_version=notice_version, proof=proof, actor=actor)
            for purpose, state in sorted(decisions.items())]


def objection_decisions(catalogue: Catalogue) -> dict[str, str]:
    """An objection to direct marketing: every direct-marketing purpose denied."""
    return {purpose: "denied" for purpose in catalogue.direct_marketing}


def stricter_entries(target: Subject, target_state: SubjectState, other: SubjectState, *,
                     kind: str, reason: str, cause_id: str, at: datetime) -> list[Entry]:
    """Entries that give ``target``, per purpose, the stricter of its own and ``other``'s
    records (used for merges and for linking a bare identifier to its profile). A purpose
    only ``other`` decided is taken over as it is. An objection keeps its reason."""
    entries = []
    for purpose, theirs in sorted(other.purposes.items()):
        ours = target_state.purposes.get(purpose)
        if ours is not None and (theirs.allowed or not ours.allowed):
            continue  # ours is at least as strict
        entries.append(_carried(target, purpose, theirs, kind=kind, reason=reason,
                                cause_id=cause_id, at=at, origin=other.key))
    return entries


def split_entries(new_subject: Subject, original: SubjectState, *, cause_id: str,
                  at: datetime) -> list[Entry]:
    """Entries giving a profile split off ``original`` the original's refusals."""
    return [_carried(new_subject, purpose, record, kind="split", reason=SPLIT,
                     cause_id=cause_id, at=at, origin=original.key)
            for purpose, record in sorted(original.purposes.items()) if not record.allowed]


def propagated(entry: Entry, profile_id: str) -> Entry:
    """A bare identifier's entry applied to a profile the identifier belongs to."""
    subject = profile_subject(profile_id)
    reason = entry.reason if entry.reason == OBJECTION else LINKED
    return replace(entry, id=entry_id(entry.id, subject, entry.purpose), subject=subject,
                   kind="link", reason=reason,
                   proof={**entry.proof, "from_subject": entry.subject.key,
                          "from_entry": entry.id}, receipt=None)


def _carried(target: Subject, purpose: str, record: Record, *, kind: str, reason: str,
             cause_id: str, at: datetime, origin: str) -> Entry:
    return Entry(id=entry_id(cause_id, target, purpose), subject=target, purpose=purpose,
                 state=record.state, kind=kind,
                 reason=record.reason if record.reason == OBJECTION else reason,
                 channel="system", source=f"consent-{kind}", collected_at=at, recorded_at=at,
                 cause_id=cause_id, notice_version=record.notice_version,
                 proof={"from_subject": origin, "from_entry": record.entry_id})


def forwarded(entry: Entry, survivor: str) -> Entry:
    """An entry that reached a profile after it was merged away, moved to the survivor."""
    subject = profile_subject(survivor)
    return replace(entry, id=entry_id(entry.id, subject, entry.purpose), subject=subject,
                   proof={**entry.proof, "addressed_to": entry.subject.key})
