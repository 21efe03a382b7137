"""Kafka entry point of the profile service.

Four consumer groups and one background loop:

* ``profile-projection``: cdp.events.resolved (apply the event to its profile, keep it in the
  full history, re-evaluate the profile's segments) and cdp.identity.merges (merge, split,
  release);
* ``profile-consents``: cdp.consent.changes into the profile-side consent states that
  purpose-bound reads consult, a poll's worth together;
* ``profile-privacy``: cdp.privacy.requests (erasure, access, rectification, restriction),
  each answered by one ack on cdp.privacy.acks (an erasure's counts what all its handlings
  deleted);
* ``profile-accesses``: cdp.profile.accesses, the API's record of every read, into the access
  log (access_log.py);
* housekeeping: the resumable segment-membership pass over all profiles (whenever a
  definition changes, and daily, since rules over time windows and recency drift), history
  past retention where the store has no TTL index, the retention of the access log and of
  erasures' counts, and the move of what earlier versions kept (name buckets, access lists,
  history month pages).

Every change is announced on cdp.profile.changes keyed by profile_id, carrying the profile's
snapshot (docs/EVENTS.md).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any

from pymongo.database import Database

from services.common import metrics, retention, topics
from services.common.background import BackgroundLoop
from services.common.bus import ConsumerLoop, InvalidMessage, Outgoing, Producer
from services.common.config import Settings
from services.common.consent_changes import parse_consent_change
from services.common.envelope import Envelope, derived_message_id, new_envelope
from services.common.privacy_requests import InvalidRequest, PrivacyRequest, ack_payload
from services.common.special_categories import Classification, load_classification
from services.common.store import ProcessedLedger, ensure_indexes
from services.profile import access_log, projection, special_traits
from services.profile.computed import RfmThresholds, safe_key
from services.profile.history import HistoryStore
from services.profile.privacy import parse_request
from services.profile.profile_store import (
    INDEXES,
    ProfileStore,
    VersionConflict,
)
from services.profile.segments import members_of, membership_changes
from services.profile.segments_store import (
    SEGMENT_INDEXES,
    SegmentStore,
    pass_key,
)

log = logging.getLogger(__name__)

SERVICE = "profile"
GROUP = "profile-projection"
CONSENT_GROUP = "profile-consents"
PRIVACY_GROUP = "profile-privacy"
ACCESS_GROUP = "profile-accesses"
ACCESS_GATHER_MS = 500
MAX_CONFLICT_RETRIES = 20
SEGMENT_LOG_KEPT = 20
DEFAULT_HISTORY_DAYS = 395
PRIVACY_REQUEST_TYPES = {"Erasure Requested", "Access Requested", "Restriction Requested",
                         "Restriction Lifted", "Rectification Requested"}
ACK_TYPE = "Privacy Request Acknowledged"


@dataclass
class Context:
    """What the handlers share: the stores and the rules' settings."""

    db: Database
    store: ProfileStore
    history: HistoryStore
    segments: SegmentStore
    thresholds: RfmThresholds
    policy: dict[str, timedelta]
    clock: Callable[[], datetime] = field(default=lambda: datetime.now(UTC))
    special_categories: Classification = field(default_factory=load_classification)

    @classmethod
    def build(cls, settings: Settings, db: Database) -> Context:
        policy = retention.parse_policy(settings.retention_days)
        keep = policy.get("event_history", timedelta(days=DEFAULT_HISTORY_DAYS))
        return cls(db=db, store=ProfileStore(db), history=HistoryStore(db, keep),
                   segments=SegmentStore(db),
                   thresholds=RfmThresholds.parse(settings.profile_rfm_thresholds),
                   policy=policy)


def build_consumers(settings: Settings, producer: Producer, db: Database) -> list:
    """The profile worker's consumer loops and its housekeeping loop (same run/stop
    contract)."""
    ensure_indexes(db, INDEXES + SEGMENT_INDEXES)
    context = Context.build(settings, db)
    store_expires_history = context.history.prepare()
    loops: list = []
    for group, topic_names, handler, batch_handler in (
            (GROUP, [topics.EVENTS_RESOLVED, topics.IDENTITY_MERGES], make_handler(context),
             make_batch_handler(context)),
            (CONSENT_GROUP, [topics.CONSENT_CHANGES], make_consent_handler(context),
             partial(store_consents, context)),
            (PRIVACY_GROUP, [topics.PRIVACY_REQUESTS], make_privacy_handler(context), None)):
        ledger = ProcessedLedger(db, group)
        ledger.prepare()
        loops.append(ConsumerLoop(settings=settings, service=SERVICE, group=group,
                                  topics=topic_names, handler=handler, producer=producer,
                                  ledger=ledger, batch_handler=batch_handler))
    # an entry is stored under its profile and message_id, so storing it twice changes nothing
    # and the group needs no ledger; its cost is per poll, so polls gather up to half a second
    loops.append(ConsumerLoop(settings=settings, service=SERVICE, group=ACCESS_GROUP,
                              topics=[topics.PROFILE_ACCESSES],
                              handler=make_access_handler(context), producer=producer,
                              ledger=None, batch_handler=partial(store_accesses, context),
                              gather_ms=ACCESS_GATHER_MS))
    loops.append(Housekeeping(context, producer, sweep_history=not store_expires_history))
    return loops


def _retrying(action: Callable[[Any], list[Outgoing]]):
    def handle(message: Any) -> list[Outgoing]:
        for _ in range(MAX_CONFLICT_RETRIES):
            try:
                return action(message)
            except VersionConflict as exc:
                conflict = exc
        raise conflict

    return handle


# --- the access log ------------------------------------------------------------------------


def store_accesses(context: Context, envelopes: list[Envelope]) -> list[Outgoing]:
    """Store the API's read entries, but none of an erased profile: an entry can reach the
    worker after the profile's erasure, which must leave no trace of the subject."""
    store = context.store
    entries = [entry for envelope in envelopes for entry in access_log.stored_entries(envelope)]
    erased = store.erased_among(entry["profile_id"] for entry in entries)
    kept = [entry for entry in entries if entry["profile_id"] not in erased]
    store.add_accesses(kept)
    # an erasure running meanwhile may have deleted the log before these were added: the
    # tombstone is written before that delete, so looking again after adding catches it
    late = store.erased_among(entry["profile_id"] for entry in kept)
    if late:
        store.delete_accesses(late)
    return []


def make_access_handler(context: Context):
    def handle(envelope: Envelope) -> list[Outgoing]:
        return store_accesses(context, [envelope])

    return handle


# --- the projection ------------------------------------------------------------------------


def make_handler(context: Context):
    return _retrying(lambda envelope: _project(context, [envelope]))


def make_batch_handler(context: Context):
    """The projection of a whole poll: consecutive events share one read and one write of
    each profile they touch and bulk writes of history and indexes; merges and splits
    between them are applied one by one, in order."""
    return _retrying(lambda envelopes: _project(context, envelopes))


def _project(context: Context, envelopes: list[Envelope]) -> list[Outgoing]:
    outgoing: list[Outgoing] = []
    definitions = context.segments.all()
    run: list[Envelope] = []
    for envelope in [*envelopes, None]:
        if envelope is not None and not _is_graph_change(envelope):
            if not envelope.profile_id:
                raise InvalidMessage("a resolved event needs a profile_id")
            run.append(envelope)
            continue
        if run:
            outgoing.extend(_EventRun(context, definitions).apply(run))
            run = []
        if envelope is not None:
            change = _merge if envelope.type == "Profiles Merged" else _split
            outgoing.extend(change(context, envelope))
    return outgoing


def _is_graph_change(envelope: Envelope) -> bool:
    return envelope.channel == "system" and envelope.type in (
        "Profiles Merged", "Profile Split", "Identifier Released")


class _EventRun:
    """Events applied in order to the profiles they name, held in memory, then stored
    together: each profile read once and written once (with its version check), history
    and indexes in bulk. Everything is stored before the loop records the events applied;
    a re-delivered event (already among the profile's recent ids) repeats its writes."""

    def __init__(self, context: Context, definitions: list[dict]):
        self.context, self.store, self.now = context, context.store, context.clock()
        self.definitions = definitions
        self.profiles: dict[str, dict] = {}  # current profile id -> the profile
        self.loaded: dict[str, dict] = {}  # current profile id -> the profile as read
        self.current_of: dict[str, str | None] = {}  # event's profile id -> current (None: erased)
        self.changed: set[str] = set()
        self.reindex_name: set[str] = set()
        self.history: list[tuple[str, dict, dict]] = []
        self.identifiers: dict[str, str] = {}
        self.memberships: list[tuple[str, list[str], list[str]]] = []

    def apply(self, envelopes: list[Envelope]) -> list[Outgoing]:
        self._load({envelope.profile_id for envelope in envelopes})
        outgoing = [message for envelope in envelopes for message in self._apply(envelope)]
        try:
            self._store()
        except BaseException:
            self._take_back_erased()  # the retry will not know what this attempt wrote
            raise
        erased = self._take_back_erased()
        self._forget_erased([e for e in envelopes if self.current_of[e.profile_id] is None])
        return [message for message in outgoing if message.key not in erased]

    def _load(self, profile_ids: set[str]) -> None:
        found = self.store.load_many(profile_ids)
        erased = self.store.erased_among(profile_ids)
        for profile_id in sorted(profile_ids):
            if profile_id in erased:
                # in flight when the profile was erased (or is being): it must not come back
                self.current_of[profile_id] = None
                continue
            doc = found.get(profile_id) or projection.new_profile(profile_id)
            self.current_of[profile_id] = doc["_id"]
            if doc["_id"] not in self.profiles:
                self.profiles[doc["_id"]] = self.loaded[doc["_id"]] = doc

    def _apply(self, envelope: Envelope) -> list[Outgoing]:
        profile_id = self.current_of[envelope.profile_id]
        if profile_id is None:
            return []
        current = self.profiles[profile_id]
        event = {**envelope.to_dict(), "profile_id": profile_id,
                 "occurred_at": envelope.occurred_at}
        event, refused = _without_special_traits(self.context, event)
        cause = envelope.message_id
        fresh = not projection.applied(current, cause)
        updated = (projection.apply_event(current, event, self.now, self.context.thresholds)
                   if fresh else current)
        keys = {f"{t}:{v}" for t, v in envelope.identifiers.items()}
        if fresh:
            _note_refusals(updated, refused, cause, self.now)
            entered, left = _reevaluate_segments(self.context, updated, self.now, cause,
                                                 self.definitions)
            self.profiles[profile_id] = updated
            self.changed.add(profile_id)
            # those the profile listed were indexed by the event that linked them (or will
            # be by its re-delivery)
            keys -= {f"{t}:{v}" for t, values in current["identifiers"].items()
                     for v in values}
        else:
            # a re-delivery: repeat what may not have reached the store or Kafka the first time
            entered, left = _logged_changes(updated, cause)
            if not updated.get("restricted"):
                self.reindex_name.add(profile_id)
        self.history.append((profile_id, event, projection.timeline_entry(event)))
        self.identifiers.update(dict.fromkeys(keys, profile_id))
        self.memberships.append((profile_id, entered, left))
        return [_change(profile_id, cause, "event_applied", envelope, updated),
                *_segment_changes(updated, cause, entered, left, envelope)]

    def _store(self) -> None:
        self.store.save_many([self.profiles[p] for p in sorted(self.changed)])
        names = []
        for profile_id in sorted(self.changed | self.reindex_name):
            profile = self.profiles[profile_id]
            if profile_id in self.changed:
                names.extend(_name_change(profile_id, self.loaded[profile_id], profile))
            if profile_id in self.reindex_name and not profile.get("restricted"):
                names.append((profile_id, None, projection.name_of(profile)))
        self.store.index_names(names)
        self.context.history.record_many(self.history, self.now)
        self.store.index_entries(self.identifiers)
        for profile_id, entered, left in self.memberships:
            _sync_members(self.context, profile_id, entered, left, self.now)

    def _take_back_erased(self) -> set[str]:
        """Delete what this run stored for profiles erased while it ran, and return them.
        The erasure marks a profile erased before it reads what to delete: a run that stored
        before the mark had its writes read and deleted by the erasure; one that stores
        after finds the mark here."""
        written = {*self.changed, *self.reindex_name, *self.identifiers.values(),
                   *(profile_id for profile_id, _, _ in self.memberships)}
        erased = self.store.erased_among(written)
        if erased:
            # its events by their own keys: the erasure may have deleted the pages listing
            # them (the identifiers the run indexed are among those its profiles hold)
            self.context.history.forget(
                (profile_id, entry["message_id"], entry["at"])
                for profile_id, _, entry in self.history if profile_id in erased)
            _delete_erased(self.context,
                           [self.profiles[p] for p in sorted(erased) if p in self.profiles],
                           sorted(erased))
            log.info("events applied to profiles erased meanwhile taken back",
                     extra={"profiles": sorted(erased)})
        return erased

    def _forget_erased(self, envelopes: list[Envelope]) -> None:
        """Delete what an earlier attempt at these events, interrupted before it could take
        its writes back, may have stored for their erased profiles: their history, the
        identifier entries they carry, the name they give, the memberships. The attempt
        stored under whichever profile held the event's then, which the erasure took too."""
        if not envelopes:
            return
        together = self.store.erased_together({e.profile_id for e in envelopes})
        holders = {e.message_id: sorted(together.get(e.profile_id, {e.profile_id}))
                   for e in envelopes}
        erased = sorted({p for ids in holders.values() for p in ids})
        self.context.history.forget(
            (holder, e.message_id, projection.event_moment({"occurred_at": e.occurred_at}))
            for e in envelopes for holder in holders[e.message_id])
        self.store.unindex_keys(sorted({f"{t}:{v}" for e in envelopes
                                        for t, v in e.identifiers.items()}), erased)
        self.store.index_names([(holder, name, None) for e in envelopes
                                if (name := _name_given(e, self.now, self.context.thresholds))
                                for holder in holders[e.message_id]])
        self.context.segments.remove_profiles(erased)
        # a document the attempt stored after the erasure had deleted what it found
        _erase_stored(self.context, erased)


def _name_given(envelope: Envelope, now: datetime, thresholds: RfmThresholds
                ) -> tuple[str, str] | None:
    """The name an event alone gives its profile (None: it gives none)."""
    event = {**envelope.to_dict(), "occurred_at": envelope.occurred_at}
    return projection.name_of(projection.apply_event(
        projection.new_profile(envelope.profile_id), event, now, thresholds))


def _without_special_traits(context: Context, event: dict) -> tuple[dict, list]:
    """The event without the special-category traits its profile has no explicit consent
    for (special_traits.py); consent states are read only when the event carries one."""
    candidates = special_traits.classified(event, context.special_categories)
    if not candidates:
        return event, []
    states = context.store.consent_states(event["profile_id"])
    return special_traits.withhold(event, candidates, states,
                                   projection.event_moment(event))


def _note_refusals(profile: dict, refused: list, cause: str, now: datetime) -> None:
    if refused:
        special_traits.note_refusals(profile, refused, cause, now)
        for refusal in refused:
            metrics.SPECIAL_TRAITS_REFUSED.labels(SERVICE, refusal.category).inc()
        log.info("special-category traits withheld without explicit consent", extra={
            "profile_id": profile["_id"], "traits": [r.trait for r in refused]})


def _merge(context: Context, envelope: Envelope) -> list[Outgoing]:
    """Absorb the merged profile into the survivor, unless either is erased. The identity
    graph found them to be one person before any erasure of theirs (an erased profile is
    not merged again), so then that person's erasure takes the other profile too: whichever
    of the merge and the erasure comes second erases both."""
    store = context.store
    ids = {envelope.payload["survivor"], envelope.payload["merged"]}
    if not store.erased_among(ids):
        outgoing, combined_id = _absorb(context, envelope)
        ids.add(combined_id)
        if not store.erased_among(ids):
            return outgoing
    current = store.load_current(envelope.payload["survivor"])
    if current:
        ids.add(current["_id"])  # the survivor may have been merged on since
    erased = store.erased_among(ids)
    tombstone = store.erased.find_one({"_id": sorted(erased)[0]})
    request = PrivacyRequest(request_id=tombstone["request_id"], kind="erasure",
                             profile_ids=tuple(sorted(ids)), identifiers=(), fields={})
    outgoing, summary, _ = _erase(context, request, envelope)
    log.info("merge of an erased profile: both erased",
             extra={"profile_ids": sorted(ids), "request_id": request.request_id, **summary})
    return outgoing


def _absorb(context: Context, envelope: Envelope) -> tuple[list[Outgoing], str]:
    """The merge itself; returns what it emits and the id of the profile absorbing."""
    store, now, cause = context.store, context.clock(), envelope.message_id
    survivor_id, merged_id = envelope.payload["survivor"], envelope.payload["merged"]
    merged = store.load(merged_id) or projection.new_profile(merged_id)
    if merged.get("merged_into") != survivor_id:
        # freeze the merged profile first: from now on its events go to the survivor, so the
        # state absorbed below is final
        merged_left = list(merged.get("segments", []))
        merged["merged_into"] = survivor_id
        merged["segments"] = []
        _log_segment_changes(merged, cause, [], merged_left)
        store.save(merged)
        _index_name(store, merged_id, merged, None)
    else:
        merged_left = _logged_changes(merged, cause)[1]
    # the survivor may itself have been merged on since (merges of one event travel on
    # different partitions): absorb into whichever profile holds it now
    survivor = store.load_current(survivor_id) or projection.new_profile(survivor_id)
    context.history.copy(merged_id, survivor["_id"], merged.get("history_months", []))
    if merged_id not in survivor.get("absorbed", []):
        combined = projection.merge(survivor, merged, now, context.thresholds)
        entered, left = _reevaluate_segments(context, combined, now, cause)
        store.save(combined)
        _index_name(store, combined["_id"], survivor, combined)
    else:
        combined = survivor
        entered, left = _logged_changes(combined, cause)
    store.index(combined["_id"], combined["identifiers"])
    context.segments.remove_profiles([merged_id])
    _sync_members(context, combined["_id"], entered, left, now)
    away = new_envelope(
        "Profile Changed", "system", message_id=derived_message_id(cause, "profile-merged-away"),
        payload={"kind": "merged_away", "cause_message_id": cause, "event_type": envelope.type,
                 "channel": envelope.channel, "profile": None,
                 "merged_into": combined["_id"]})
    return [_change(combined["_id"], cause, "merged", envelope, combined),
            Outgoing(topics.PROFILE_CHANGES, merged_id, away.resolved_to(merged_id)),
            *_segment_changes(merged, cause, [], merged_left, envelope),
            *_segment_changes(combined, cause, entered, left, envelope)], combined["_id"]


def _split(context: Context, envelope: Envelope) -> list[Outgoing]:
    store, now, cause = context.store, context.clock(), envelope.message_id
    profile = store.load_current(envelope.payload["profile_id"])
    if profile is None:
        return []
    new_id = envelope.payload.get("new_profile_id")
    moved = envelope.payload["identifiers"]
    for identifier in moved:
        values = profile["identifiers"].get(identifier["type"], [])
        if identifier["value"] in values:
            values.remove(identifier["value"])
        store.unindex(identifier["type"], identifier["value"], profile["_id"])
    entered, left = _reevaluate_segments(context, profile, now, cause)
    store.save(profile)
    _sync_members(context, profile["_id"], entered, left, now)
    outgoing = [_change(profile["_id"], cause, "split", envelope, profile),
                *_segment_changes(profile, cause, entered, left, envelope)]
    # the split-off profile is another person's: an erasure of it (the graph had split it
    # before the erasure resolved its subject) must not be undone by the split arriving after
    if new_id and not store.erased_among([new_id]):
        fresh = store.load(new_id) or projection.new_profile(new_id)
        for identifier in moved:
            values = fresh["identifiers"].setdefault(identifier["type"], [])
            if identifier["value"] not in values:
                values.append(identifier["value"])
        store.save(fresh)
        store.index(new_id, fresh["identifiers"])
        if store.erased_among([new_id]):  # erased while this wrote it, after its read
            _erase_stored(context, [new_id])
        else:
            outgoing.append(_change(new_id, cause, "split", envelope, fresh, step="split-new"))
    return outgoing


# --- segments ------------------------------------------------------------------------------


def _reevaluate_segments(context: Context, profile: dict, now: datetime, cause: str,
                         definitions: list[dict] | None = None) -> tuple[list[str], list[str]]:
    """Set the profile's segments from the live definitions (read now unless given) and log
    what changed under ``cause`` (so a re-delivery can announce it again)."""
    if definitions is None:
        definitions = context.segments.all()
    after = members_of(definitions, profile, now)
    entered, left = membership_changes(profile.get("segments", []), after)
    profile["segments"] = after
    if entered or left:
        _log_segment_changes(profile, cause, entered, left)
    return entered, left


def _log_segment_changes(profile: dict, cause: str, entered: list[str],
                         left: list[str]) -> None:
    entry = {"cause": cause, "entered": entered, "left": left}
    profile["segment_log"] = [*profile.get("segment_log", []), entry][-SEGMENT_LOG_KEPT:]


def _logged_changes(profile: dict, cause: str) -> tuple[list[str], list[str]]:
    for entry in profile.get("segment_log", []):
        if entry["cause"] == cause:
            return entry["entered"], entry["left"]
    return [], []


def _sync_members(context: Context, profile_id: str, entered: list[str], left: list[str],
                  now: datetime) -> None:
    for segment_id in entered:
        context.segments.add_member(segment_id, profile_id, now)
    for segment_id in left:
        context.segments.remove_member(segment_id, profile_id)


def _segment_changes(profile: dict, cause: str, entered: list[str], left: list[str],
                     envelope: Envelope | None, *, event_type: str | None = None,
                     channel: str = "system") -> list[Outgoing]:
    outgoing = []
    for kind, segment_ids in (("segment_entered", entered), ("segment_left", left)):
        for segment_id in segment_ids:
            change = new_envelope(
                "Profile Changed", "system",
                message_id=derived_message_id(cause, f"{kind}:{profile['_id']}:{segment_id}"),
                payload={"kind": kind, "segment_id": segment_id, "cause_message_id": cause,
                         "event_type": envelope.type if envelope else event_type,
                         "channel": envelope.channel if envelope else channel,
                         "profile": None if profile.get("merged_into")
                         else projection.snapshot(profile)})
            outgoing.append(Outgoing(topics.PROFILE_CHANGES, profile["_id"],
                                     change.resolved_to(profile["_id"])))
    return outgoing


def _index_name(store: ProfileStore, profile_id: str, before: dict | None,
                after: dict | None) -> None:
    store.index_names(_name_change(profile_id, before, after))


def _listed_name(profile: dict) -> tuple[str, str] | None:
    """The name a profile is found by in name search: none while restricted or once merged
    into another."""
    if profile.get("restricted") or profile.get("merged_into"):
        return None
    return projection.name_of(profile)


def _name_change(profile_id: str, before: dict | None, after: dict | None) -> list[tuple]:
    """The name index move from ``before`` to ``after`` (restricted profiles are not
    listed), if any."""
    old = projection.name_of(before) if before else None
    new = projection.name_of(after) if after and not after.get("restricted") else None
    if old != new or (before and before.get("restricted")) != (after and after.get(
            "restricted")):
        return [(profile_id, old, new)]
    return []


def _change(profile_id: str, cause: str, kind: str, envelope: Envelope, profile: dict | None,
            step: str = "profile-change") -> Outgoing:
    change = new_envelope(
        "Profile Changed", "system", message_id=derived_message_id(cause, step),
        payload={"kind": kind, "cause_message_id": cause, "event_type": envelope.type,
                 "channel": envelope.channel,
                 "profile": projection.snapshot(profile) if profile else None})
    return Outgoing(topics.PROFILE_CHANGES, profile_id, change.resolved_to(profile_id))


# --- consent states ------------------------------------------------------------------------


def make_consent_handler(context: Context):
    def handle(envelope: Envelope) -> list[Outgoing]:
        return store_consents(context, [envelope])

    return handle


def store_consents(context: Context, envelopes: list[Envelope]) -> list[Outgoing]:
    """Consent Changed messages' states, a poll's worth in two round trips; a state
    collected before the one stored for its subject and purpose changes nothing."""
    records = [_consent_record(envelope) for envelope in envelopes
               if envelope.type == "Consent Changed"]
    if records:
        context.store.record_consents(records)
    return []


def _consent_record(envelope: Envelope) -> tuple[str, str, dict]:
    """(subject, purpose, state) of a Consent Changed; the subject is the profile, or for a
    consent given before any profile existed, ``id:<type>:<value>``."""
    change = parse_consent_change(envelope)
    subject = change.profile_id or "id:{}:{}".format(*change.identifier)
    return subject, safe_key(change.purpose), {
        "allowed": change.allowed, "state": change.state, "reason": change.reason,
        "receipt_id": change.receipt_id, "collected_at": change.collected_at,
        "message_id": change.message_id}


# --- data-subject requests -----------------------------------------------------------------


def make_privacy_handler(context: Context):
    def handle(envelope: Envelope) -> list[Outgoing]:
        if envelope.type not in PRIVACY_REQUEST_TYPES:
            return []
        try:
            request = parse_request(envelope.payload)
        except InvalidRequest as exc:
            raise InvalidMessage(str(exc)) from None
        act = {"erasure": _erase, "access": _access, "rectification": _rectify,
               "restriction": _restrict, "restriction_lifted": _restrict}[request.kind]
        outgoing, summary, data = act(context, request, envelope)
        ack = new_envelope(ACK_TYPE, "system",
                           message_id=derived_message_id(envelope.message_id,
                                                         f"privacy-ack-{SERVICE}"),
                           payload=ack_payload(request, SERVICE, summary, data))
        return [*outgoing, Outgoing(topics.PRIVACY_ACKS, request.request_id, ack)]

    return _retrying(handle)


def _identified(context: Context, request: PrivacyRequest) -> list[str]:
    """The profiles a request names, and those its identifiers' index entries point at
    (stored or not)."""
    ids = list(request.profile_ids)
    for type_, value in request.identifiers:
        entry = context.store.identifiers.find_one({"_id": f"{type_}:{value}"})
        if entry:
            ids.append(entry["profile_id"])
    return ids


def _subject_profiles(context: Context, request: PrivacyRequest,
                      also: Iterable[str] = ()) -> list[dict]:
    """The stored profiles a request is about: those named, those its identifiers lead to,
    ``also``, and those merged into any of them."""
    store = context.store
    ids = [*_identified(context, request), *also]
    found: dict[str, dict] = {}
    while ids:
        profile_id = ids.pop()
        if profile_id in found:
            continue
        doc = store.load(profile_id)
        if doc:
            found[profile_id] = doc
            ids.extend(doc.get("absorbed", []))
    return [found[k] for k in sorted(found)]


def _deleting(context: Context, docs: list[dict], ids: list[str],
              named: set[str]) -> Iterator[tuple[str, int]]:
    """Delete the erased profiles ``ids`` (those stored, as ``docs``) and all they keep, one
    kind at a time as the caller iterates, yielding (kind, how many) after each. By ``_id``
    only (no scan of a big collection), through what the profile documents list: they are
    deleted after what they list, so a repeated deletion still finds what a crash left.
    ``named``: the identifier keys an erasure request names, whose index entries go last: an
    erasure cut short before is delivered again and finds its profiles through them."""
    store = context.store
    for doc in docs:
        store.index_name(doc["_id"], projection.name_of(doc), None)
    held = {f"{t}:{v}" for d in docs for t, values in d["identifiers"].items() for v in values}
    # every id over every month any of them lists: a merge may have copied pages into a
    # profile already deleted
    yield "history_events", context.history.erase(
        dict.fromkeys(ids, sorted({m for d in docs for m in d.get("history_months", [])})))
    yield "segment_memberships", context.segments.remove_profiles(ids)
    yield "access_log_entries", store.delete_accesses(ids)
    yield "consent_states", store.delete_consents(
        [*ids, *(f"id:{key}" for key in sorted(named | held))])
    yield "identifier_index_entries", store.unindex_keys(held - named, ids)
    yield "profiles", store.delete_profiles(ids)
    yield "identifier_index_entries", store.unindex_keys(named, ids)


def _delete_erased(context: Context, docs: list[dict], ids: list[str]) -> None:
    """All of ``_deleting``, counted for no request: what a run stored for profiles erased
    meanwhile, or what is still stored under erased profiles."""
    for _ in _deleting(context, docs, ids, set()):
        pass


def _erase_stored(context: Context, profile_ids: list[str]) -> None:
    """Erase what is still stored under these erased profiles: a document written after
    the erasure had deleted what it found, or one an erasure cut short left."""
    docs = context.store.stored(profile_ids)
    if docs:
        ids = [doc["_id"] for doc in docs]
        log.warning("erased profiles still stored, erased again", extra={"profiles": ids})
        _delete_erased(context, docs, ids)


def _erase(context: Context, request: PrivacyRequest, envelope: Envelope):
    store, now = context.store, context.clock()
    # those identified whether stored or not (an erasure cut short after deleting them,
    # delivered again), and those an earlier attempt erased with them: a profile merged into
    # one it deleted is listed by no profile stored
    identified = set(_identified(context, request))
    ids = sorted(identified.union(*store.erased_together(identified).values()))
    while True:
        store.mark_erased(ids, request.request_id, now)
        # read after the mark: events stored for these profiles before it are in what is
        # read now, and an event run storing after it takes its own writes back (_EventRun)
        docs = _subject_profiles(context, request, ids)
        if not {d["_id"] for d in docs} - set(ids):
            break
        ids = sorted({*ids, *(d["_id"] for d in docs)})
    # each count kept as soon as it is deleted: the ack reports what every handling of the
    # erasure deleted, where a retry or a redelivery after a crash alone finds nothing left
    summary: dict[str, int] = {}
    for kind, count in _deleting(context, docs, ids,
                                 {f"{t}:{v}" for t, v in request.identifiers}):
        summary = store.count_erased(request.request_id, kind, count, now)
    outgoing = []
    for profile_id in ids:
        change = new_envelope(
            "Profile Changed", "system",
            message_id=derived_message_id(envelope.message_id, f"profile-erased:{profile_id}"),
            payload={"kind": "erased", "cause_message_id": envelope.message_id,
                     "event_type": envelope.type, "channel": envelope.channel,
                     "profile": None})
        outgoing.append(Outgoing(topics.PROFILE_CHANGES, profile_id,
                                 change.resolved_to(profile_id)))
    return outgoing, summary, None


def _access(context: Context, request: PrivacyRequest, _envelope: Envelope):
    store, now = context.store, context.clock()
    docs = _subject_profiles(context, request)
    history_count, recent = 0, []
    for doc in docs:
        months = doc.get("history_months", [])
        history_count += context.history.count(doc["_id"], months, now)
        recent.extend(context.history.page(doc["_id"], months, now, limit=50)[0])
    recent.sort(key=lambda e: (e["at"], e["message_id"]), reverse=True)
    accesses = [a for doc in docs for a in store.accesses(doc["_id"], 500)]
    data = {
        "profiles": [projection.view(doc, unmasked=True, recent=0) for doc in docs],
        "history": {"count": history_count, "recent": projection.plain(recent[:50])},
        "segments": sorted({s for doc in docs for s in doc.get("segments", [])}),
        "access_log": projection.plain(accesses),
        "consents": projection.plain({doc["_id"]: store.consent_states(doc["_id"])
                                      for doc in docs}),
    }
    summary = {"profiles": len(docs), "history_events": history_count,
               "access_log_entries": len(accesses)}
    return [], summary, data


def _rectify(context: Context, request: PrivacyRequest, envelope: Envelope):
    store, now, cause = context.store, context.clock(), envelope.message_id
    docs = [store.load_current(d["_id"]) for d in _subject_profiles(context, request)]
    target = next((d for d in docs if d), None)
    if target is None:
        return [], {"profiles": 0, "fields": sorted(request.fields)}, None
    updated = projection.rectify(target, request.fields, cause, now, now, context.thresholds)
    if not projection.applied(target, cause):
        entered, left = _reevaluate_segments(context, updated, now, cause)
        store.save(updated)
        _index_name(store, updated["_id"], target, updated)
    else:
        entered, left = _logged_changes(updated, cause)
    _sync_members(context, updated["_id"], entered, left, now)
    outgoing = [_change(updated["_id"], cause, "rectified", envelope, updated),
                *_segment_changes(updated, cause, entered, left, envelope)]
    return outgoing, {"profiles": 1, "fields": sorted(request.fields)}, None


def _restrict(context: Context, request: PrivacyRequest, envelope: Envelope):
    store, now = context.store, context.clock()
    restricting = request.kind == "restriction"
    outgoing, changed = [], 0
    for doc in _subject_profiles(context, request):
        before = dict(doc)
        if restricting and not doc.get("restricted"):
            doc["restricted"] = {"request_id": request.request_id, "at": now}
        elif not restricting and doc.get("restricted"):
            doc.pop("restricted")
        else:
            continue
        store.save(doc)
        _index_name(store, doc["_id"], before, doc)  # restricted profiles are not searchable
        changed += 1
    for doc in _subject_profiles(context, request):
        kind = "restricted" if restricting else "restriction_lifted"
        outgoing.append(_change(doc["_id"], envelope.message_id, kind, envelope,
                                doc, step=f"profile-{kind}:{doc['_id']}"))
    return outgoing, {"profiles": changed, "restricted": restricting}, None


# --- housekeeping --------------------------------------------------------------------------


class Housekeeping(BackgroundLoop):
    """The background loop beside the consumers: the segment membership pass, history sweeps
    where the store has no TTL, access-log and erasure-count retention, index entries left to
    erased profiles, the move of what earlier versions kept."""

    group = "profile-housekeeping"
    SWEEP_SECONDS = 3600.0
    # a retention sweep reads every event, timeline entry and access-log entry (the store
    # cannot find the expired ones by an index): once a day, so it costs the store a
    # twenty-fourth of what it did hourly, and nothing is kept more than a day too long
    RETENTION_SECONDS = 86400.0

    def __init__(self, context: Context, producer: Producer, *, sweep_history: bool):
        super().__init__()
        self.context = context
        self.producer = producer
        self.sweep_history = sweep_history
        self._sweep_due = self._retention_due = 0.0

    def step(self) -> None:
        self.membership_pass()
        now = time.monotonic()
        if now >= self._sweep_due:
            self._sweep_due = now + self.SWEEP_SECONDS
            retention = now >= self._retention_due
            self.sweep(retention=retention)
            if retention:  # once done: a sweep that failed is tried again within the hour
                self._retention_due = now + self.RETENTION_SECONDS

    def membership_pass(self) -> int:
        """Bring every profile's segments up to date with the definitions and today's date,
        resuming where a previous pass stopped. Returns how many profiles it looked at."""
        segments, now = self.context.segments, self.context.clock()
        definitions = segments.all()
        key = pass_key(definitions, now.date().isoformat())
        state = segments.pass_state()
        if state["key"] == key and state["done"]:
            return 0
        after = state["after"] if state["key"] == key else None
        seen = 0
        started = time.monotonic()
        for page in self.context.store.pages_after(after):
            for profile in page:
                if not profile.get("merged_into"):
                    self._reevaluate(profile, definitions, key, now)
            after, seen = page[-1]["_id"], seen + len(page)
            segments.save_pass_state(key, after, False)
            # a pass reads every profile: leave the store at least half its time for lookups
            # and the projection
            if self.pause(time.monotonic() - started):
                return seen
            started = time.monotonic()
        segments.save_pass_state(key, after, True)
        segments.purge_deleted({d["_id"]: d["version"] for d in definitions if d.get("deleted")})
        return seen

    def _reevaluate(self, profile: dict, definitions: list[dict], key: str,
                    now: datetime) -> None:
        store = self.context.store
        for _ in range(MAX_CONFLICT_RETRIES):
            refreshed = projection.refresh_computed(profile, now, self.context.thresholds)
            after = members_of(definitions, refreshed, now)
            entered, left = membership_changes(profile.get("segments", []), after)
            if not entered and not left and refreshed["computed"] == profile["computed"]:
                return
            cause = f"segment-pass:{key}:{profile['_id']}"
            refreshed["segments"] = after
            # announced before stored: a crash in between announces again (same ids)
            changes = _segment_changes(refreshed, cause, entered, left, None,
                                       event_type="Segment Membership Recomputed")
            if changes:
                self.producer.send(changes)
            try:
                store.save(refreshed)
            except VersionConflict:
                profile = store.load(profile["_id"])
                if profile is None or profile.get("merged_into"):
                    return
                continue
            _sync_members(self.context, profile["_id"], entered, left, now)
            return

    def sweep(self, retention: bool = True) -> dict[str, Any]:
        """One round of the hourly work; with ``retention`` (daily), what expired is deleted
        too, and so are the index entries left pointing at erased profiles."""
        now = self.context.clock()
        # deletes take turns with pauses as long, leaving the store at least half its time
        pause = self.pause
        deleted = (self.context.history.sweep(now, pause)
                   if self.sweep_history and retention else 0)
        adopted = self.context.store.adopt_listed_accesses(pause)
        keep_accesses = self.context.policy.get("access_log")
        accesses = (self.context.store.expire_accesses(now - keep_accesses, pause)
                    if keep_accesses is not None and retention else 0)
        # what an erasure deleted is part of its request's proof: kept as long as the
        # consent service keeps a closed request, counted from the erasure's latest handling
        keep_requests = self.context.policy.get("privacy_requests")
        erasure_counts = (self.context.store.expire_erasure_counts(now - keep_requests, pause)
                          if keep_requests is not None and retention else 0)
        names = self.context.store.rebuild_name_index(_listed_name, pause)
        moved = self.context.history.migrate_month_pages(self.context.store.erased_among, now,
                                                         pause)
        unindexed = (self.context.store.unindex_erased(
            now, partial(_erase_stored, self.context), pause) if retention
                     else {"names": 0, "identifiers": 0})
        summary = {"history_events": deleted, "access_log": accesses,
                   "erasure_counts": erasure_counts,
                   "access_log_rekeyed": adopted, "names_indexed": names,
                   "timeline_entries_moved": moved,
                   "erased_names_unindexed": unindexed["names"],
                   "erased_identifiers_unindexed": unindexed["identifiers"]}
        log.info("housekeeping sweep", extra=summary)
        return summary
