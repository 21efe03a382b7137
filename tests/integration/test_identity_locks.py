"""The identity graph's lease locks on the real store: one holder at a time under
contention, and a dead holder's lease taken over once it expires."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime, timedelta

import pytest

from services.identity import graph_store
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


def test_a_batch_locks_the_profiles_of_its_new_customers_together_and_frees_them_together(
        db, unique):
    ahead = [f"p-new-{unique}-{n}" for n in range(3)]
    with MongoGraph(db).locking_ahead(ahead) as batch_graph:
        owners = {doc["owner"] for doc in db[LOCKS].find({"_id": {"$in": ahead}})}
        assert len(owners) == 1 and db[LOCKS].count_documents({"_id": {"$in": ahead}}) == 3
        with batch_graph.lock([ahead[0]]):
            # held by the batch: nothing more is written, and no one else gets it
            assert db[LOCKS].count_documents({"_id": {"$in": ahead}}) == 3
            with pytest.raises(TimeoutError):
                with MongoGraph(db, lock_wait_seconds=0.2).lock([ahead[0]]):
                    pass
    assert db[LOCKS].count_documents({"_id": {"$in": ahead}}) == 0


def test_a_batch_lets_go_of_its_locks_before_it_waits_on_another(db, unique):
    ahead, other = f"p-new-{unique}", f"p-known-{unique}"
    with MongoGraph(db).locking_ahead([ahead]) as batch_graph:
        with batch_graph.lock([ahead]):
            pass
        with batch_graph.lock([other]):
            # another worker waiting on the batch's lock is not kept waiting on it
            assert db[LOCKS].find_one({"_id": ahead}) is None
            with MongoGraph(db, lock_wait_seconds=1).lock([ahead]):
                pass
        with batch_graph.lock([ahead]):  # from here on one by one
            assert db[LOCKS].find_one({"_id": ahead}) is not None
    assert db[LOCKS].count_documents({"_id": {"$in": [ahead, other]}}) == 0


def test_a_lease_a_dead_worker_left_is_left_out_of_the_batch_and_taken_over_when_needed(
        db, unique):
    left, free = f"p-left-{unique}", f"p-free-{unique}"
    db[LOCKS].insert_one({"_id": left, "owner": "died",
                          "until": datetime.now(UTC) - timedelta(seconds=1)})
    with MongoGraph(db, lock_wait_seconds=5).locking_ahead([left, free]) as batch_graph:
        assert db[LOCKS].find_one({"_id": left})["owner"] == "died"
        with batch_graph.lock([left]):
            assert db[LOCKS].find_one({"_id": left})["owner"] not in ("died", None)
    assert db[LOCKS].count_documents({"_id": {"$in": [left, free]}}) == 0


def test_a_batch_gives_up_its_locks_after_a_third_of_a_lease_rather_than_use_them_longer(
        db, unique, monkeypatch):
    monkeypatch.setattr(graph_store, "LOCK_LEASE", timedelta(seconds=0.6))
    profile = f"p-slow-{unique}"
    with MongoGraph(db, lock_wait_seconds=5).locking_ahead([profile]) as batch_graph:
        first_owner = db[LOCKS].find_one({"_id": profile})["owner"]
        time.sleep(0.3)
        with batch_graph.lock([profile]):  # locked afresh, with a whole lease
            assert db[LOCKS].find_one({"_id": profile})["owner"] != first_owner
    assert db[LOCKS].find_one({"_id": profile}) is None
