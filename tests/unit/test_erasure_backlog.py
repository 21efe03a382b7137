"""The erasure backlog gauges: numbers read from the store at scrape time, cached for one
scrape, kept when the store cannot be read."""

from datetime import UTC, datetime, timedelta

import pymongo.errors

from services.common import metrics
from services.consent import privacy_backlog


def test_the_gauges_show_open_overdue_failed_and_the_oldest_open_age():
    received = datetime.now(UTC) - timedelta(hours=2)
    privacy_backlog.expose(privacy_backlog.erasure_backlog(lambda now: {
        "open": 3, "overdue": 1, "partially_failed": 2, "oldest_received_at": received}))
    # these gauges alone: others in the registry may read a store this test has not
    requests = {sample.labels["state"]: sample.value
                for sample in metrics.ERASURE_REQUESTS.collect()[0].samples
                if sample.labels["service"] == "consent"}
    assert requests == {"open": 3, "overdue": 1, "partially_failed": 2}
    [age] = [sample.value for sample in metrics.ERASURE_OLDEST_OPEN_AGE.collect()[0].samples
             if sample.labels["service"] == "consent"]
    assert 7190 < age < 7300


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
