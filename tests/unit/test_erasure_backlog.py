"""The erasure backlog gauges: numbers read from the store at scrape time, cached for one
scrape, kept when the store cannot be read."""

from datetime import UTC, datetime, timedelta

import pymongo.errors
from prometheus_client import generate_latest

from services.consent import privacy_backlog


def test_the_gauges_show_open_overdue_failed_and_the_oldest_open_age():
    received = datetime.now(UTC) - timedelta(hours=2)
    privacy_backlog.expose(privacy_backlog.erasure_backlog(lambda now: {
        "open": 3, "overdue": 1, "partially_failed": 2, "oldest_received_at": received}))
    text = generate_latest().decode()
    assert 'muisti_erasure_requests{service="consent",state="open"} 3.0' in text
    assert 'muisti_erasure_requests{service="consent",state="overdue"} 1.0' in text
    assert 'muisti_erasure_requests{service="consent",state="partially_failed"} 2.0' in text
    age = next(line for line in text.splitlines()
               if line.startswith("muisti_erasure_oldest_open_age_seconds{"))
    assert 7190 < float(age.split()[-1]) < 7300


def test_one_store_read_serves_a_scrape_and_an_unreadable_store_keeps_the_last_numbers():
    reads = []

    def read(now):
        reads.append(now)
        if len(reads) > 1:
            raise pymongo.errors.ServerSelectionTimeoutError("store away")
        return {"open": 1, "overdue": 0, "partially_failed": 0, "oldest_received_at": None}

    cached = privacy_backlog.erasure_backlog(read)
    assert cached.count("open") == 1 and cached.age_seconds("oldest_received_at") == 0
    assert len(reads) == 1
    uncached = privacy_backlog.erasure_backlog(read, cache_seconds=0)
    assert uncached.count("open") == 0  # the store failed on its first read: nothing known
    reads.clear()
    assert uncached.count("open") == 1 and uncached.count("open") == 1
    assert len(reads) == 2  # the second read failed; the first numbers stayed
