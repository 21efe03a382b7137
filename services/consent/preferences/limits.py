"""Rate limits of code requests: how many codes one identifier may be sent, and one client
address may ask for, per hour (fixed one-hour windows counted in a ``Counters`` store)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Protocol

WINDOW = timedelta(hours=1)


class Counters(Protocol):
    def increment(self, key: str, expires_at: datetime) -> int:
        """Add one to ``key``'s counter and return the new count."""


@dataclass(frozen=True)
class CodeLimits:
    per_identifier: int
    per_ip: int

    def allows(self, counters: Counters, *, identifier_digest: str, ip: str,
               now: datetime) -> bool:
        """Count this request against both limits; False when either is exceeded. Both are
        counted every time, so an unknown identifier is limited exactly like a known one."""
        window = int(now.timestamp() // WINDOW.total_seconds())
        expires = now + WINDOW
        by_ip = counters.increment(f"ip:{ip}:{window}", expires)
        by_identifier = counters.increment(f"id:{identifier_digest}:{window}", expires)
        return by_ip <= self.per_ip and by_identifier <= self.per_identifier
