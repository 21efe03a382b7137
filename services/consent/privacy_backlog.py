"""The erasure backlog as Prometheus gauges of the consent API, for operations:
``muisti_erasure_requests{state="open"|"overdue"|"partially_failed"}`` and
``muisti_erasure_oldest_open_age_seconds`` (docs/OPERATIONS.md, the Grafana overview), read
from the store at scrape time (services.common.scraped).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from services.common import metrics
from services.common.scraped import CACHE_SECONDS, ScrapedReading

SERVICE = "consent"
STATES = ("open", "overdue", "partially_failed")


def erasure_backlog(read: Callable[[datetime], dict[str, Any]],
                    cache_seconds: float = CACHE_SECONDS) -> ScrapedReading:
    """Cached backlog numbers from ``read`` (the store's ``erasure_backlog``)."""
    return ScrapedReading("erasure backlog", lambda: read(datetime.now(UTC)),
                          {**dict.fromkeys(STATES, 0), "oldest_received_at": None},
                          cache_seconds)


def expose(backlog: ScrapedReading) -> None:
    """Let the backlog gauges read ``backlog`` at every scrape."""
    for state in STATES:
        metrics.ERASURE_REQUESTS.labels(SERVICE, state).set_function(
            lambda state=state: backlog.count(state))
    metrics.ERASURE_OLDEST_OPEN_AGE.labels(SERVICE).set_function(
        lambda: backlog.age_seconds("oldest_received_at"))
