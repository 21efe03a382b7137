"""Kafka entry point of the identity service: the identity-graph consumer.

Consumes cdp.events.web / .phone / .social, resolves each event's identifiers to a profile,
emits the event stamped with its profile_id on cdp.events.resolved (keyed by profile_id, same
message_id) and every merge it caused on cdp.identity.merges.
"""

from __future__ import annotations

import dataclasses
import logging

from pymongo.database import Database

from services.common import metrics, topics
from services.common.bus import ConsumerLoop, InvalidMessage, Outgoing, Producer
from services.common.config import Settings, parse_type_limits
from services.common.envelope import Envelope
from services.common.identifiers import InvalidIdentifier, normalise
from services.common.store import ProcessedLedger, ensure_indexes
from services.identity.graph import Identifier, limits_from, resolve
from services.identity.graph_store import INDEXES, MongoGraph
from services.identity.merges import UnannouncedChanges, log_message
from services.identity.suggestions import SuggestionStore, person_record

SERVICE = "identity"
GROUP = "identity-graph"
INPUT_TOPICS = (topics.EVENTS_WEB, topics.EVENTS_PHONE, topics.EVENTS_SOCIAL)

log = logging.getLogger(__name__)


def build_consumers(settings: Settings, producer: Producer, db: Database) -> list[ConsumerLoop]:
    ensure_indexes(db, INDEXES)
    ledger = ProcessedLedger(db, GROUP)
    ledger.prepare()
    graph = MongoGraph(db)
    return [ConsumerLoop(settings=settings, service=SERVICE, group=GROUP, topics=INPUT_TOPICS,
                         handler=make_handler(graph, SuggestionStore(db), limits_from(
                             parse_type_limits(settings.identity_limits))),
                         producer=producer, ledger=ledger, relay=UnannouncedChanges(graph))]


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


def make_handler(graph: MongoGraph, people: SuggestionStore, limits: dict[str, int]):
    def handle(envelope: Envelope) -> list[Outgoing]:
        identifiers, unverified = event_identifiers(envelope)
        if not identifiers:
            raise InvalidMessage("the event carries no valid identifier to resolve")
        result = resolve(graph, [Identifier(t, v) for t, v in identifiers.items()],
                         message_id=envelope.message_id, at=envelope.received_at,
                         unverified=unverified, limits=limits)
        if result.conflicts:
            graph.record_conflicts(envelope.message_id, result.conflicts, envelope.received_at)
            for conflict in result.conflicts:
                metrics.IDENTITY_CONFLICTS.labels(SERVICE, conflict.identifier.type).inc()
        metrics.IDENTITY_MERGES.labels(SERVICE).inc(len(result.merges))
        traits = envelope.payload.get("traits")
        if isinstance(traits, dict):
            people.remember(result.profile_id, person_record(traits, identifiers),
                            envelope.occurred_at)
        resolved = dataclasses.replace(envelope, identifiers=identifiers).resolved_to(
            result.profile_id)
        # re-emit every merge this event ever caused: a crash may have kept it from Kafka
        caused = graph.caused_by(envelope.message_id) if len(identifiers) > 1 else []
        return [Outgoing(topics.EVENTS_RESOLVED, result.profile_id, resolved),
                *(log_message(entry) for entry in caused)]

    return handle
