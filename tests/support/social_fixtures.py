"""The social webhook fixtures (tests/fixtures/social) as sent at a given moment: the social
API refuses an event whose platform time is older than the consumers' ledger remembers (a
replay), so tests and benchmarks send them as of now."""

from __future__ import annotations

from datetime import datetime
from typing import Any

# the fields of the webhook fixtures that hold a platform time
PLATFORM_TIMES = ("time", "timestamp", "created_time", "timestamp_ms", "created_timestamp",
                  "created_at")


def sent_at(node: Any, moment: datetime) -> Any:
    """``node`` (a delivery, or part of one) with every platform time set to ``moment`` in the
    form it had: epoch seconds or milliseconds, a string of milliseconds, or v1.1's date."""
    if isinstance(node, list):
        return [sent_at(item, moment) for item in node]
    if not isinstance(node, dict):
        return node
    return {key: _time_like(value, moment) if key in PLATFORM_TIMES else sent_at(value, moment)
            for key, value in node.items()}


def _time_like(value: Any, moment: datetime) -> Any:
    if isinstance(value, int):
        return int(moment.timestamp() * 1000) if value > 10**11 else int(moment.timestamp())
    if isinstance(value, str) and value.isdigit():
        return str(int(moment.timestamp() * 1000))
    return moment.strftime("%a %b %d %H:%M:%S +0000 %Y")
