"""The erasure backlog as Prometheus gauges of the consent API, for operations:
``muisti_erasure_requests{state="open"|"overdue"|"partially_failed"}`` and
``muisti_erasure_oldest_open_age_seconds`` (docs/OPERATIONS.md, the Grafana overview).

Read from the store when Prometheus scrapes, so every API process reports the same current
numbers; one read serves a whole scrape (cached for a few seconds). If the store cannot be
read, the last numbers stay and a warning is logged: /metrics never fails for it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pymongo.errors

from services.common import metrics

SERVICE = "consent"
STATES = ("open", "overdue", "partially_failed")
CACHE_SECONDS = 5.0

log = logging.getLogger(__name__)


class ErasureBacklog:
    """Cached backlog numbers from ``read`` (the store's ``erasure_backlog``)."""

    def __init__(self, read: Callable[[datetime], dict[str, Any]],
                 cache_seconds: float = CACHE_SECONDS):
        self._read = read
        self._cache_seconds = cache_seconds
        self._lock = threading.Lock()
        self._numbers: dict[str, Any] = {"open": 0, "overdue": 0, "partially_failed": 0,
                                         "oldest_received_at": None}
        self._read_at = float("-inf")

    def numbers(self) -> dict[str, Any]:
        with self._lock:
            if time.monotonic() - self._read_at >= self._cache_seconds:
                try:
                    self._numbers = self._read(datetime.now(UTC))
                except pymongo.errors.PyMongoError as exc:
                    log.warning("erasure backlog unreadable", extra={"error": repr(exc)})
                self._read_at = time.monotonic()
            return dict(self._numbers)

    def count(self, state: str) -> float:
        return float(self.numbers()[state])

    def oldest_age_seconds(self) -> float:
        oldest = self.numbers()["oldest_received_at"]
        return max(0.0, (datetime.now(UTC) - oldest).total_seconds()) if oldest else 0.0


def expose(backlog: ErasureBacklog) -> None:
    """Let the backlog gauges read ``backlog`` at every scrape."""
    for state in STATES:
        metrics.ERASURE_REQUESTS.labels(SERVICE, state).set_function(
            lambda state=state: backlog.count(state))
    metrics.ERASURE_OLDEST_OPEN_AGE.labels(SERVICE).set_function(backlog.oldest_age_seconds)
