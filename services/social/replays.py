"""Replayed webhook deliveries: an event too old to be told from a new one is refused.

Meta (``X-Hub-Signature-256``) and X (``x-twitter-webhooks-signature``) sign a delivery's
body with no time or nonce of their own, so a captured delivery verifies forever. Its events'
message ids come from the platform's ids, so a repeat is skipped downstream while the
consumers' ledger remembers them (``ProcessedLedger.RETENTION``, 14 days from when they were
applied); after that it would be ingested again as new. An event is applied after its
platform time, or at most a day before it (``event_times.AHEAD``: how far ahead of ours a
platform's clock may run), so the ledger remembers it at least 13 days past that time: a
webhook event (or Instagram mention notification) whose platform time is older than that is
refused, and nothing old enough to have left the ledger is taken in again. No platform
retries a delivery anywhere near that long (X for five minutes, Meta for hours). An event
without a usable time has nothing to judge it by and is kept. The pollers are not judged:
Muisti fetches what they read from the platform itself, and a first poll may well reach
further back.
"""

from __future__ import annotations

from datetime import datetime

from services.common.event_times import AHEAD
from services.common.store import ProcessedLedger
from services.social.messages import Normalised

OLDEST_AGE = ProcessedLedger.RETENTION - AHEAD


def without_replays(normalised: Normalised, now: datetime) -> tuple[Normalised, int]:
    """``normalised`` without the events and mention notifications whose platform time is
    more than ``OLDEST_AGE`` before ``now``, and how many were taken out."""
    oldest = now - OLDEST_AGE

    def fresh(moment: datetime | None) -> bool:
        return moment is None or moment >= oldest

    kept = Normalised(
        messages=[message for message in normalised.messages if fresh(message.created_at)],
        skipped=normalised.skipped,
        to_fetch=[mention for mention in normalised.to_fetch if fresh(mention.notified_at)])
    refused = (len(normalised.messages) - len(kept.messages)
               + len(normalised.to_fetch) - len(kept.to_fetch))
    return kept, refused
