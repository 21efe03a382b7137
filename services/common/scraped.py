"""Gauges read from the store when Prometheus scrapes (a backlog: open erasures, deletion
notices waiting), so every API process reports the same current numbers. One read serves a
whole scrape (cached for a few seconds); if the store cannot be read, the last numbers stay and
a warning is logged: /metrics never fails for it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

CACHE_SECONDS = 5.0

log = logging.getLogger(__name__)


class ScrapedReading:
    """Cached numbers from ``read``; ``initial`` until the first read succeeds."""

    def __init__(self, what: str, read: Callable[[], dict[str, Any]],
                 initial: dict[str, Any], cache_seconds: float = CACHE_SECONDS):
        self._what, self._read = what, read
        self._cache_seconds = cache_seconds
        self._lock = threading.Lock()
        self._numbers = dict(initial)
        self._read_at = float("-inf")

    def numbers(self) -> dict[str, Any]:
        with self._lock:
            if time.monotonic() - self._read_at >= self._cache_seconds:
                try:
                    self._numbers = self._read()
                except Exception as exc:  # noqa: BLE001 - a scrape must not fail for it
                    log.warning(f"{self._what} unreadable", extra={"error": repr(exc)})
                self._read_at = time.monotonic()
            return dict(self._numbers)

    def count(self, name: str) -> float:
        return float(self.numbers()[name])

    def age_seconds(self, name: str) -> float:
        """Seconds since the moment read under ``name`` (0 when there is none)."""
        moment = self.numbers()[name]
        return max(0.0, (datetime.now(UTC) - moment).total_seconds()) if moment else 0.0
