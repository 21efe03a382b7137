"""Dead letters as the consumer loop writes them (services.common.bus ``_dead_letter``):
parsing, selection and the replay plan. No Kafka here; ``kafka_io`` reads and republishes."""

from __future__ import annotations

import base64
import binascii
import hashlib
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

import orjson


class UnreadableLetter(ValueError):
    """A record on the dead-letter topic that is not a dead letter Muisti wrote."""


@dataclass(frozen=True)
class DeadLetter:
    source_topic: str
    partition: int
    offset: int
    key: str | None
    kind: str
    reason: str
    service: str
    group: str
    failed_at: datetime
    original: bytes

    @property
    def message_id(self) -> str | None:
        """The original envelope's message_id, when the original is a JSON object with one."""
        try:
            value = orjson.loads(self.original)
        except orjson.JSONDecodeError:
            return None
        message_id = value.get("message_id") if isinstance(value, dict) else None
        return message_id if isinstance(message_id, str) else None

    @property
    def identity(self) -> str:
        """What makes two letters the same message: its message_id, else its bytes."""
        return self.message_id or "sha256:" + hashlib.sha256(self.original).hexdigest()


def parse(value: bytes) -> DeadLetter:
    """A dead letter from the bytes of a cdp.deadletter record; raises UnreadableLetter."""
    try:
        letter = orjson.loads(value)
        return DeadLetter(
            source_topic=letter["source_topic"],
            partition=int(letter["partition"]),
            offset=int(letter["offset"]),
            key=letter.get("key"),
            kind=letter.get("kind") or "unknown",
            reason=letter.get("reason") or "",
            service=letter.get("service") or "",
            group=letter.get("group") or "",
            failed_at=datetime.fromisoformat(letter["failed_at"]),
            original=base64.b64decode(letter["original_b64"], validate=True),
        )
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, binascii.Error) as exc:
        raise UnreadableLetter(f"not a Muisti dead letter: {exc!r}") from None


def select(letters: Iterable[DeadLetter], *, topic: str | None = None,
           reason_contains: str | None = None, kind: str | None = None,
           since: datetime | None = None) -> list[DeadLetter]:
    """The letters matching every filter given: source topic, a case-insensitive piece of the
    reason, the kind (invalid_envelope, invalid, handler_error), failed at or after ``since``."""
    needle = reason_contains.lower() if reason_contains else None
    return [
        letter for letter in letters
        if (topic is None or letter.source_topic == topic)
        and (needle is None or needle in letter.reason.lower())
        and (kind is None or letter.kind == kind)
        and (since is None or letter.failed_at >= since)
    ]


def replay_plan(letters: Iterable[DeadLetter]) -> list[DeadLetter]:
    """What to republish: each message once (a message dead-lettered again after an earlier
    replay, or by two consumer groups, has several letters), in its original topic order so
    per-key ordering holds."""
    unique: dict[str, DeadLetter] = {}
    for letter in letters:
        unique.setdefault(letter.identity, letter)
    return sorted(unique.values(), key=lambda letter: (letter.source_topic, letter.partition,
                                                       letter.offset))
