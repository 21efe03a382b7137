"""Identity-log entries (merges, splits, releases) as messages on cdp.identity.merges.

The log in the store is the outbox: the worker re-emits the entries an event caused every time
it handles that event, so a crash between storing a merge and producing it loses nothing, and
the entry id as message_id lets consumers drop the repeats.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from services.common import topics
from services.common.bus import Outgoing, Relay
from services.common.envelope import Envelope

EVENT_TYPES = {"merge": "Profiles Merged", "unmerge": "Profile Split",
               "release": "Identifier Released"}


def log_message(entry: dict) -> Outgoing:
    """The cdp.identity.merges message for one identity-log entry, keyed by the surviving
    (or remaining) profile."""
    kind = entry["kind"]
    at = entry["at"] if entry["at"].tzinfo else entry["at"].replace(tzinfo=UTC)
    if kind == "merge":
        key = entry["survivor"]
        payload = {"kind": kind, "survivor": entry["survivor"], "merged": entry["merged"],
                   "identifier": entry.get("identifier"),
                   "cause_message_id": entry["cause_message_id"]}
    else:
        key = entry["profile_id"]
        payload = {"kind": kind, "profile_id": entry["profile_id"],
                   "new_profile_id": entry.get("new_profile_id"),
                   "identifiers": entry["identifiers"], "reason": entry["reason"],
                   "actor": entry["actor"]}
    envelope = Envelope(message_id=entry["_id"], type=EVENT_TYPES[kind], channel="system",
                        occurred_at=at, received_at=at, payload=payload, profile_id=key)
    return Outgoing(topics.IDENTITY_MERGES, key, envelope)


class UnannouncedChanges(Relay):
    """Splits, releases and accepted suggestions stored by the API whose announcement did
    not reach Kafka (the caller got 503): the identity worker announces them."""

    GRACE = timedelta(seconds=30)  # leave the API time to announce them itself

    def __init__(self, graph):
        self.graph = graph

    def pending(self) -> list[Outgoing]:
        entries = self.graph.unannounced(datetime.now(UTC) - self.GRACE)
        return [log_message(entry) for entry in entries]

    def sent(self, messages: list[Outgoing]) -> None:
        self.graph.mark_announced([m.value.message_id for m in messages])
