"""When the consumer loops purge the processed-message ledger by hand (stores without TTL
indexes): one scan per process an hour, the first at a random moment, not one per loop at
start. Driven with a fake clock and collection."""

from __future__ import annotations

import pytest

from services.common import store
from services.common.store import ProcessedLedger


class Purges:
    full_name = "muisti.processed_messages"

    def __init__(self):
        self.calls = 0

    def delete_many(self, query):
        self.calls += 1
        return type("Result", (), {"deleted_count": 0})()


@pytest.fixture
def clock(monkeypatch):
    now = [1000.0]
    monkeypatch.setattr(store.time, "monotonic", lambda: now[0])
    monkeypatch.setattr(store.random, "uniform", lambda low, high: high / 2)
    monkeypatch.setattr(ProcessedLedger, "_purge_due", {})
    return now


def ledgers(collection: Purges, groups: int) -> list[ProcessedLedger]:
    made = []
    for n in range(groups):
        ledger = ProcessedLedger({ProcessedLedger.COLLECTION: collection}, f"group-{n}")
        ledger._expire_by_hand = True  # as prepare() decides on a store without TTL indexes
        made.append(ledger)
    return made


def test_loops_started_together_do_not_purge_at_start(clock):
    collection = Purges()
    for ledger in ledgers(collection, 5):
        assert ledger.expire_if_due() == 0
    assert collection.calls == 0


def test_one_purge_an_hour_serves_every_group_of_the_process(clock):
    collection = Purges()
    group_ledgers = ledgers(collection, 5)
    for ledger in group_ledgers:  # at start: nothing yet
        ledger.expire_if_due()
    for hour in range(3):
        clock[0] += ProcessedLedger.PURGE_EVERY_SECONDS
        for ledger in group_ledgers:
            ledger.expire_if_due()
        assert collection.calls == hour + 1


def test_a_store_with_ttl_indexes_is_never_purged_by_hand(clock):
    collection = Purges()
    ledger = ledgers(collection, 1)[0]
    ledger._expire_by_hand = False
    clock[0] += 10 * ProcessedLedger.PURGE_EVERY_SECONDS
    assert ledger.expire_if_due() == 0
    assert collection.calls == 0
