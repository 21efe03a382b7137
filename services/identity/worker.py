"""Kafka entry point of the identity service: the identity-graph consumer.

Consumes cdp.events.web / .phone / .social, resolves each event's identifiers to a profile,
emits the event stamped with its profile_id on cdp.events.resolved (keyed by profile_id, same
message_id) and every merge it caused on cdp.identity.merges. An alias whose previousId the
graph holds as a user_id renames that account (``read_previous_id``). Beside it: the privacy
consumer (cdp.privacy.requests) and the daily sweep of links to erased profiles
(housekeeping.py).
"""

from __future__ import annotations

import dataclasses
import logging
from collections import Counter
from datetime import UTC, datetime

from pymongo.database import Database

from services.common import metrics, retention, topics
from services.common.bus import ConsumerLoop, InvalidMessage, Outgoing, Producer
from services.common.config import ConfigError, Settings, parse_type_limits
from services.common.envelope import Envelope, derived_message_id, new_envelope
from services.common.hetu_protection import HetuProtector
from services.common.identifiers import InvalidIdentifier, normalise
from services.common.privacy_requests import ack_payload
from services.common.store import ProcessedLedger, ensure_indexes
from services.identity import privacy
from services.identity.channels import EVENT_NAMES, protect_hetus
from services.identity.graph import (
    Arrival,
    GraphReader,
    GraphSnapshot,
    Identifier,
    Resolution,
    limits_from,
    link_straight,
    profiles_to_lock,
    resolve,
    straight_events,
)
from services.identity.graph_store import INDEXES, MongoGraph
from services.identity.housekeeping import ErasureCountsSweep, OrphanLinkSweep
from services.identity.merges import UnannouncedChanges, log_message
from services.identity.privacy_store import GraphEraser, SuppressionList
from services.identity.suggestions import SuggestionStore, person_record

SERVICE = "identity"
GROUP = "identity-graph"
PRIVACY_GROUP = "identity-privacy"
INPUT_TOPICS = (topics.EVENTS_WEB, topics.EVENTS_PHONE, topics.EVENTS_SOCIAL)
# events of a poll whose locks are taken together: another worker or the API waiting on one
# of them waits at most as long as these events take, not the whole poll
LOCK_AHEAD_EVENTS = 50
# an erasure is done again while its request's identifiers reach a profile once it is done
ERASURE_PASSES = 5

log = logging.getLogger(__name__)


def build_consumers(settings: Settings, producer: Producer, db: Database) -> list:
    if not settings.privacy_digest_key:
        raise ConfigError(["CDP_PRIVACY_DIGEST_KEY: the identity worker keeps the suppression "
                           "list of erased identifiers and needs this secret"])
    ensure_indexes(db, INDEXES)
    graph = MongoGraph(db)
    suppressions = SuppressionList(db, settings.privacy_digest_key.encode())
    limits = limits_from(parse_type_limits(settings.identity_limits))
    loops = []
    handler, batch_handler = make_handlers(graph, SuggestionStore(db), limits, suppressions,
                                           HetuProtector.from_settings(settings, db, SERVICE))
    for group, input_topics, handlers, relay in (
        (GROUP, INPUT_TOPICS, {"handler": handler, "batch_handler": batch_handler},
         UnannouncedChanges(graph)),
        (PRIVACY_GROUP, (topics.PRIVACY_REQUESTS,),
         {"handler": make_privacy_handler(graph, GraphEraser(db), suppressions)}, None),
    ):
        ledger = ProcessedLedger(db, group)
        ledger.prepare()
        loops.append(ConsumerLoop(settings=settings, service=SERVICE, group=group,
                                  topics=input_topics, producer=producer, ledger=ledger,
                                  relay=relay, **handlers))
    loops.append(OrphanLinkSweep(graph))
    loops.append(ErasureCountsSweep(GraphEraser(db).counts,
                                    retention.parse_policy(settings.retention_days)))
    return loops


def event_identifiers(envelope: Envelope) -> tuple[dict[str, str], set[Identifier]]:
    """The envelope's identifiers normalised (invalid ones dropped and counted) and the set of
    them the channel marked unverified (caller-id numbers)."""
    normalised = {}
    for type_, value in envelope.identifiers.items():
        try:
            normalised[type_] = normalise(type_, value)
        except InvalidIdentifier:
            metrics.IDENTIFIERS_DROPPED.labels(SERVICE, type_, "invalid").inc()
    unverified_types = set(envelope.payload.get("unverified_identifiers") or ())
    unverified = {Identifier(t, v) for t, v in normalised.items() if t in unverified_types}
    return normalised, unverified


@dataclasses.dataclass(frozen=True)
class _Event:
    envelope: Envelope  # its hetus protected
    identifiers: dict[str, str]  # normalised
    unverified: set[Identifier]
    # an alias's previousId taken for the user_id it was (``read_previous_id``): outside
    # ``identifiers``, which hold one value of a type, the userId
    earlier_user_id: Identifier | None = None

    @property
    def keys(self) -> list[Identifier]:
        keys = [Identifier(t, v) for t, v in self.identifiers.items()]
        if self.earlier_user_id:
            keys.append(self.earlier_user_id)
        return keys

    @property
    def renamed(self) -> frozenset[Identifier]:
        """The earlier user_id, when the event carries the one it became (graph.resolve)."""
        return frozenset({self.earlier_user_id}) \
            if self.earlier_user_id and "user_id" in self.identifiers else frozenset()

    @property
    def arrival(self) -> Arrival:
        return Arrival(self.envelope.message_id, self.envelope.received_at, tuple(self.keys),
                       frozenset(self.unverified), self.renamed)


def previous_user_id(event: _Event) -> Identifier | None:
    """The user_id an alias's previousId would be. Segment's previousId is "an Anonymous ID
    assigned to that user or a User ID you previously identified them with", and
    ``channels.from_segment`` passes it on as the anonymous_id (user_ids and anonymous ids
    normalise alike); only the graph can tell which it is."""
    previous = event.identifiers.get("anonymous_id")
    if event.envelope.type != EVENT_NAMES["alias"] or previous is None \
            or previous == event.identifiers.get("user_id"):
        return None
    return Identifier("user_id", previous)


def read_previous_id(event: _Event, reader: GraphReader,
                     suppressions: SuppressionList) -> _Event:
    """The event, an alias whose previousId is a user_id the graph holds (or erased) and not
    an anonymous id it holds, with that user_id in place of the anonymous id: an account
    renamed, whose profile the userId's joins. Any other event comes back as it is, without
    a read; an alias reads the two links, from the poll's snapshot (which asked for them)
    when in a batch. As the graph stands when the poll begins: the alias and the events of
    its previousId are keyed by different user_ids, so which is handled first is not fixed
    anyway."""
    earlier = previous_user_id(event)
    if earlier is None:
        return event
    as_anonymous = Identifier("anonymous_id", earlier.value)
    known = reader.links([earlier, as_anonymous])
    if as_anonymous in known or not (earlier in known or suppressions.any_suppressed([earlier])):
        return event
    return dataclasses.replace(event, earlier_user_id=earlier, identifiers={
        t: v for t, v in event.identifiers.items() if t != "anonymous_id"})


def make_handlers(graph: MongoGraph, people: SuggestionStore, limits: dict[str, int],
                  suppressions: SuppressionList, hetus: HetuProtector):
    """The per-event handler and the batch handler. The batch handler reads what the poll's
    events will look at together (the suppression list's version, their links and profiles,
    an alias's previousId as a user_id as well, their merge outboxes), links the events that
    only link unknown identifiers together, and resolves the other events one by one, in
    order."""

    def prepare(envelope: Envelope) -> _Event:
        # a producer writing to Kafka directly may send a hetu in the clear: from here on
        # only its digest and sealed copy travel (what the HTTP API sent is unchanged)
        envelope = protect_hetus(envelope, hetus)
        identifiers, unverified = event_identifiers(envelope)
        if not identifiers:
            raise InvalidMessage("the event carries no valid identifier to resolve")
        return _Event(envelope, identifiers, unverified)

    def resolve_event(event: _Event, given: dict, snapshot: GraphSnapshot | None = None,
                      caused: list[dict] | None = None, repo: MongoGraph = graph,
                      resolved: Resolution | None = None) -> list[Outgoing]:
        """The event's messages (``resolved``: its resolution, if the batch found it);
        what the customer gave about themselves is added to ``given`` (by message id) for
        the suggestion store."""
        envelope, identifiers = event.envelope, event.identifiers
        if suppressions.any_suppressed(event.keys):
            # erased on request: dropped, not dead-lettered (that would keep the data)
            metrics.EVENTS_SUPPRESSED.labels(SERVICE, envelope.channel).inc()
            return []
        result = resolved or resolve(repo, event.keys, message_id=envelope.message_id,
                                     at=envelope.received_at, unverified=event.unverified,
                                     limits=limits, first_look=snapshot,
                                     renamed=event.renamed)
        if result.conflicts:
            repo.record_conflicts(envelope.message_id, result.conflicts, envelope.received_at)
            for conflict in result.conflicts:
                metrics.IDENTITY_CONFLICTS.labels(SERVICE, conflict.identifier.type).inc()
        metrics.IDENTITY_MERGES.labels(SERVICE).inc(len(result.merges))
        traits = envelope.payload.get("traits")
        if isinstance(traits, dict):
            given[envelope.message_id] = (result.profile_id, person_record(traits, identifiers),
                                          envelope.occurred_at)
        # what merge protection held back stays off the profile downstream too, or a lookup
        # by it would find this customer instead of the one the graph links it to
        held_back = {conflict.identifier for conflict in result.conflicts}
        linked = {t: v for t, v in identifiers.items() if Identifier(t, v) not in held_back}
        resolved = dataclasses.replace(envelope, identifiers=linked).resolved_to(
            result.profile_id)
        # re-emit every merge this event ever caused: a crash may have kept it from Kafka
        if len(event.keys) < 2:
            caused = []  # one identifier links nothing to anything
        elif caused is None or result.merges:
            caused = graph.caused_by(envelope.message_id)
        return [Outgoing(topics.EVENTS_RESOLVED, result.profile_id, resolved),
                *(log_message(entry) for entry in caused)]

    def without_erased(outcome: list[tuple[_Event, list[Outgoing]]], given: dict
                       ) -> list[Outgoing]:
        """The poll's messages, less those of events carrying an identifier erased on
        request. The list is read again: an erasure finished while the poll resolved finds
        its events resolved against the list as it was before (and an attempt a crash cut
        short may have linked them). What such an event left is undone: links to its erased
        identifiers, its conflicts, what the customer gave; the merges it caused stand
        (other identifiers made them too) and are announced without an erased identifier."""
        suppressions.refresh()
        erased = {event.envelope.message_id: event for event, _ in outcome
                  if suppressions.any_suppressed(event.keys)}
        announced: dict[str, list[dict]] = {}
        naming_erased: set[str] = set()
        if erased:
            privacy.unlink_erased(graph, {key for event in erased.values() for key in event.keys
                                          if suppressions.any_suppressed([key])},
                                  graph.merged_into)
            # a link its earlier attempt made but never listed may point at a profile erased
            # since: later events would resolve to that profile again
            privacy.unlink_orphans(graph, {key for event in erased.values()
                                           for key in event.keys})
            graph.drop_conflicts({message_id: event.keys for message_id, event in erased.items()})
            announced = graph.caused_by_each([message_id for message_id, event in erased.items()
                                              if len(event.keys) > 1])
            naming_erased = {entry["_id"] for entries in announced.values()
                             for entry in entries if _names_erased(entry, suppressions)}
            graph.anonymise_log(sorted(naming_erased))
        messages = []
        for event, event_messages in outcome:
            message_id = event.envelope.message_id
            if message_id not in erased:
                messages += event_messages
                continue
            given.pop(message_id, None)
            if event_messages:  # resolved before the list said otherwise
                metrics.EVENTS_SUPPRESSED.labels(SERVICE, event.envelope.channel).inc()
            messages += [log_message({**entry, "identifier": None}
                                     if entry["_id"] in naming_erased else entry)
                         for entry in announced.get(message_id, ())]
        # after the list was read again: an erasure now deletes what this writes, or the
        # profile is gone already and the store deletes it again
        people.remember(list(given.values()))
        return messages

    def handle(envelope: Envelope) -> list[Outgoing]:
        suppressions.refresh()
        given: dict = {}
        event = read_previous_id(prepare(envelope), graph, suppressions)
        return without_erased([(event, resolve_event(event, given))], given)

    def handle_batch(envelopes: list[Envelope]) -> list[Outgoing]:
        suppressions.refresh()
        prepared = [prepare(envelope) for envelope in envelopes]
        # an alias's previousId read as a user_id too, in the same query
        snapshot = graph.snapshot([*(key for event in prepared for key in event.keys),
                                   *filter(None, map(previous_user_id, prepared))])
        events = [read_previous_id(event, snapshot, suppressions) for event in prepared]
        caused = graph.caused_by_each([event.envelope.message_id for event in events
                                       if len(event.keys) > 1])
        given: dict = {}
        outcome: list[tuple[_Event, list[Outgoing]]] = []
        for start in range(0, len(events), LOCK_AHEAD_EVENTS):
            chunk = events[start:start + LOCK_AHEAD_EVENTS]
            # what these events will change, locked in one write: the profiles of customers
            # gaining identifiers or merging, and those new customers would create
            to_lock = [profile_id for event in chunk
                       for profile_id in profiles_to_lock(snapshot, event.keys,
                                                          event.envelope.message_id,
                                                          event.renamed)]
            with graph.locking_ahead(to_lock) as batch_graph:
                # the events that only link new identifiers (to a new customer, or one
                # known) are linked together: five round trips for the chunk (two reads
                # under the locks, three writes), not two to four each; with no lock held
                # (known customers only) there is nothing to link
                held = batch_graph.held_ahead()
                created = {}
                if held:
                    snapshot.reread([key for event in chunk for key in event.keys], to_lock)
                    straight = [s for s in straight_events(
                        snapshot, [event.arrival for event in chunk
                                   if not suppressions.any_suppressed(event.keys)], limits)
                        if s.target_id in held]
                    created = link_straight(batch_graph, straight, snapshot)
                outcome += [(event, resolve_event(event, given, snapshot,
                                                  caused.get(event.envelope.message_id),
                                                  batch_graph,
                                                  created.get(event.envelope.message_id)))
                            for event in chunk]
        # before the poll's messages go out and its offsets are committed
        return without_erased(outcome, given)

    return handle, handle_batch


def make_privacy_handler(graph: MongoGraph, eraser: GraphEraser, suppressions: SuppressionList):
    """Erase or collect what the graph holds about a data subject; acknowledge on
    cdp.privacy.acks. A re-delivered request finds less to do and sends the same ack id."""

    def erase(request: privacy.PrivacyRequest) -> dict:
        summary: Counter = Counter()
        for _ in range(ERASURE_PASSES):
            with privacy.locked_subject(graph, request, graph.merged_into) as subject:
                # noted before anything is deleted: an attempt a crash cut short after the
                # links and profiles went still erases their traces when the request returns
                profile_ids, identifiers = eraser.note_erasing(
                    request.request_id, subject.profile_ids, subject.identifiers)
                # suppress first: the identifiers are only known while their links exist
                summary["suppressed"] += suppressions.add(subject.identifiers,
                                                          request.request_id, datetime.now(UTC))
                summary.update(eraser.erase_graph(subject.profile_ids, subject.identifiers))
            summary.update(eraser.erase_traces(profile_ids, identifiers))
            # one of the request's identifiers linked between the locked read and the
            # suppression is found now; one linked later, its worker unlinks (it reads the
            # list again before its messages go out)
            if not privacy.expand_subject(graph, request, graph.merged_into).profile_ids:
                # what every handling of the request deleted: a retry finds little left
                totals = eraser.counts.add(request.request_id, summary, datetime.now(UTC),
                                           highest={"identifiers": len(identifiers)})
                eraser.erased(request.request_id)
                return totals
        raise TimeoutError("the subject kept gaining profiles while it was erased")

    def handle(envelope: Envelope) -> list[Outgoing]:
        try:
            request = privacy.parse_request(envelope.payload)
        except privacy.InvalidRequest as error:
            raise InvalidMessage(str(error)) from None
        if request.kind == "erasure":
            return [_ack(envelope, request, erase(request), None)]
        subject = privacy.expand_subject(graph, request, graph.merged_into)
        summary, data = _subject_summary(subject), None
        if request.kind == "access":
            data = eraser.access(subject.profile_ids, subject.identifiers)
        else:
            summary["note"] = "the identity graph holds identifiers only; nothing to change"
        return [_ack(envelope, request, summary, data)]

    return handle


def _names_erased(entry: dict, suppressions: SuppressionList) -> bool:
    """Whether an identity-log entry's merge went through an identifier erased on request."""
    identifier = entry.get("identifier")
    return bool(identifier) and suppressions.any_suppressed(
        [Identifier(identifier["type"], identifier["value"])])


def _subject_summary(subject: privacy.Subject) -> dict:
    return {"profiles": len(subject.profile_ids), "identifiers": len(subject.identifiers)}


def _ack(envelope: Envelope, request: privacy.PrivacyRequest, summary: dict, data) -> Outgoing:
    ack = new_envelope("Privacy Request Acknowledged", "system",
                       payload=ack_payload(request, SERVICE, summary, data),
                       message_id=derived_message_id(envelope.message_id, f"privacy-ack-{SERVICE}"))
    return Outgoing(topics.PRIVACY_ACKS, request.request_id, ack)
