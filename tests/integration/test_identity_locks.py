"""The identity graph's lease locks on the real store: one holder at a time under
contention, and a dead holder's lease taken over once it expires."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime, timedelta

from services.identity.graph_store import LOCKS, MongoGraph


def test_only_one_worker_holds_a_profile_lock_at_a_time(db, unique):
    graph = MongoGraph(db, lock_wait_seconds=60)
    profile = f"p-lock-{unique}"
    inside, most_inside, entered = 0, 0, 0
    guard = threading.Lock()

    def contend():
        nonlocal inside, most_inside, entered
        for _ in range(15):
            with graph.lock([profile]):
                with guard:
                    inside += 1
                    entered += 1
                    most_inside = max(most_inside, inside)
                time.sleep(0.003)  # hold it long enough for the others to try
                with guard:
                    inside -= 1

    threads = [threading.Thread(target=contend) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert (entered, most_inside) == (60, 1)
    assert db[LOCKS].find_one({"_id": profile}) is None  # every lock released


def test_an_expired_lease_of_a_dead_holder_is_taken_over(db, unique):
    profile = f"p-dead-{unique}"
    db[LOCKS].insert_one({"_id": profile, "owner": "died",
                          "until": datetime.now(UTC) - timedelta(seconds=1)})
    with MongoGraph(db, lock_wait_seconds=5).lock([profile]):
        assert db[LOCKS].find_one({"_id": profile})["owner"] != "died"
