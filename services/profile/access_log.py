"""The access log: every profile read, who read it, when and for which stated purpose.

A read is answered once its entry is in the API's local spool (services/common/spool.py),
whose thread ships the entries to cdp.profile.accesses every 200 ms, bundled: up to
``BUNDLE_READS`` reads in one ``Profile Reads`` message (``bundled``); the profile worker
stores them in batches (consumer group ``profile-accesses``). A lookup therefore waits for
neither a store write (on FerretDB/SQLite, one writer at a time, an access-log write queued
behind the workers' took a lookup's p99 from tens to hundreds of milliseconds) nor a Kafka
acknowledgement (about a millisecond of the API's CPU per read in kafka-python, and a produce
request per read for the broker); bundled, the broker and the worker handle one message per
shipping round instead of one per read. An API process killed right after answering has lost
no entry: the spool file holds it, and the next API started on the same spool directory ships
it. While the broker is away reads go on and the spool grows; when it is full, reads are
refused with 503 rather than answered unrecorded. The data-protection officer sees an entry
once the worker stored it, normally within a second.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime

import orjson

from services.common import topics
from services.common.bus import InvalidMessage, Outgoing
from services.common.envelope import Envelope, InvalidEnvelope, from_dict, new_envelope

ENTRY_TYPE = "Profile Read"
BUNDLE_TYPE = "Profile Reads"
# a bundle ends at whichever comes first; a read is ~0.5 KB, and a message over the producer's
# 1 MB limit would never be sent: the spool would hold it, and every read behind it, for good
BUNDLE_READS = 1000
BUNDLE_BYTES = 512 * 1024
FIELDS = ("key_id", "roles", "purpose", "endpoint")


def entry_message(*, profile_id: str, key_id: str, roles: list[str], purpose: str,
                  endpoint: str, at: datetime) -> Outgoing:
    """The message recording one read of ``profile_id``, as the API spools it."""
    envelope = new_envelope(ENTRY_TYPE, "system", occurred_at=at, message_id=uuid.uuid4().hex,
                            payload={"key_id": key_id, "roles": roles, "purpose": purpose,
                                     "endpoint": endpoint})
    return Outgoing(topics.PROFILE_ACCESSES, profile_id, envelope.resolved_to(profile_id))


def entry_id(profile_id: str, message_id: str) -> str:
    """An entry's ``_id``: the profile's entries are one ``_id`` range, read and erased as one
    (store.id_prefix), with no list of them to keep."""
    return f"{profile_id}|{message_id}"


def bundled(reads: Sequence[Outgoing]) -> list[Outgoing]:
    """Spooled reads (``entry_message`` values, as dicts) as ``Profile Reads`` messages of up
    to ``BUNDLE_READS`` reads and ``BUNDLE_BYTES`` each, for the spool to ship."""
    messages: list[Outgoing] = []
    listed: list[dict] = []
    size = 0

    def ship() -> None:
        envelope = new_envelope(BUNDLE_TYPE, "system", message_id=uuid.uuid4().hex,
                                payload={"reads": listed})
        messages.append(Outgoing(topics.PROFILE_ACCESSES, envelope.message_id, envelope))

    for read in reads:
        read_size = len(orjson.dumps(read.value))
        if listed and (len(listed) == BUNDLE_READS or size + read_size > BUNDLE_BYTES):
            ship()
            listed, size = [], 0
        listed.append(read.value)
        size += read_size
    if listed:
        ship()
    return messages


def stored_entries(envelope: Envelope) -> list[dict]:
    """The access-log documents of a ``Profile Reads`` bundle or a single ``Profile Read``;
    InvalidMessage when it is neither, or a read in it is not one (the whole message is
    dead-lettered with the reason)."""
    if envelope.type != BUNDLE_TYPE:
        return [stored_entry(envelope)]
    reads = envelope.payload.get("reads")
    if not isinstance(reads, list) or not reads:
        raise InvalidMessage(f"a {BUNDLE_TYPE!r} lists its reads")
    entries = []
    for number, read in enumerate(reads):
        try:
            entries.append(stored_entry(from_dict(read)))
        except (InvalidEnvelope, InvalidMessage) as exc:
            raise InvalidMessage(f"read {number} of the bundle: {exc}") from None
    return entries


def stored_entry(envelope: Envelope) -> dict:
    """The access-log document of an entry message; InvalidMessage when it is not one."""
    payload = envelope.payload
    if envelope.type != ENTRY_TYPE or not envelope.profile_id:
        raise InvalidMessage(f"an access-log entry is a {ENTRY_TYPE!r} with a profile_id")
    if not all(isinstance(payload.get(name), str) for name in ("key_id", "purpose", "endpoint")):
        raise InvalidMessage("an access-log entry names key_id, purpose and endpoint")
    roles = payload.get("roles")
    if not isinstance(roles, list) or not all(isinstance(role, str) for role in roles):
        raise InvalidMessage("an access-log entry lists the reader's roles")
    return {"_id": entry_id(envelope.profile_id, envelope.message_id),
            "profile_id": envelope.profile_id,
            **{name: payload[name] for name in FIELDS}, "at": envelope.occurred_at}
