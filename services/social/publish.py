"""Normalised social messages onto cdp.events.social, shared by the webhooks (API) and the
poller (worker): envelopes built, skips and complaints counted, produced and acknowledged.
Instagram mentions that carry only ids go to cdp.social.mentions for the worker to fetch."""

from __future__ import annotations

from services.common import metrics, topics
from services.common.bus import Outgoing, Producer
from services.social.messages import (
    Normalised,
    Skipped,
    Unattributable,
    mention_request,
    to_envelope,
)

SERVICE = "social"


def outgoing(normalised: Normalised, *, source: str | None = None) -> list[Outgoing]:
    """The messages to produce (events, then mentions to fetch); skipped and unattributable
    ones are counted, not produced."""
    skipped = list(normalised.skipped)
    messages: list[Outgoing] = []
    cards = 0
    for message in normalised.messages:
        try:
            converted = to_envelope(message, source=source)
        except Unattributable:
            skipped.append(Skipped(message.platform, "no_author"))
            continue
        cards += converted.cards_redacted
        if converted.envelope.payload["classification"]["complaint"]:
            metrics.SOCIAL_COMPLAINTS.labels(SERVICE, message.platform).inc()
        messages.append(Outgoing(topics.EVENTS_SOCIAL, converted.key, converted.envelope))
    for skip in skipped:
        metrics.SOCIAL_MESSAGES_SKIPPED.labels(SERVICE, skip.platform, skip.reason).inc()
    if cards:
        metrics.CARD_NUMBERS_REDACTED.labels(SERVICE).inc(cards)
    for mention in normalised.to_fetch:
        key, request = mention_request(mention)
        messages.append(Outgoing(topics.SOCIAL_MENTIONS, key, request))
    return messages


def publish(producer: Producer, normalised: Normalised, *, source: str | None = None) -> int:
    """Produce the messages and wait for Kafka's acknowledgement; returns how many events
    (mentions to fetch are counted once fetched)."""
    messages = outgoing(normalised, source=source)
    events = sum(message.topic == topics.EVENTS_SOCIAL for message in messages)
    if messages:
        producer.send(messages)
        metrics.EVENTS_INGESTED.labels(SERVICE, "social").inc(events)
    return events
