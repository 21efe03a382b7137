"""Store plumbing against the real MongoDB-protocol server."""

from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta

import pymongo.errors
import pytest
from pymongo import ReplaceOne, UpdateOne

from services.common.store import (
    ProcessedLedger,
    documents_after,
    find_by_ids,
    id_prefix,
    insert_new,
    older_than,
)


def test_ledger_remembers_applied_ids_per_group(db, unique):
    ledger = ProcessedLedger(db, f"group-{unique}")
    ledger.prepare()
    ledger.mark(["a", "b"])
    ledger.mark(["b"])  # a re-delivery marks again without error
    assert ledger.seen(["a", "b", "c"]) == {"a", "b"}
    assert ProcessedLedger(db, f"other-{unique}").seen(["a"]) == set()


def test_ledger_entries_past_retention_are_expired_by_hand(db, unique):
    group = f"group-{unique}"
    ledger = ProcessedLedger(db, group)
    ledger.prepare()
    old = datetime.now(UTC) - ProcessedLedger.RETENTION - timedelta(hours=1)
    db[ProcessedLedger.COLLECTION].insert_one({"_id": f"{group}:old", "processed_at": old})
    ledger.mark(["fresh"])
    ledger.expire()
    assert ledger.seen(["old", "fresh"]) == {"fresh"}


def test_an_index_left_by_an_older_version_under_another_name_does_not_stop_start_up(
        db, unique):
    collection = f"ledger_{unique}"
    db[collection].create_index([("processed_at", 1)], name="processed_at_1")

    class Ledger(ProcessedLedger):
        COLLECTION = collection

    ledger = Ledger(db, f"group-{unique}")
    ledger.prepare()  # must not raise
    ledger.mark(["m"])
    assert ledger.seen(["m"]) == {"m"}


def test_a_batch_of_ids_is_looked_up_from_the_id_index_in_one_query(db, unique):
    """deploy/local builds FerretDB so that {_id: {$in: [...]}} searches the _id index, as
    MongoDB does; stock FerretDB 1.x scans the collection for it."""
    collection = db[f"by_ids_{unique}"]
    collection.insert_many([{"_id": f"key-{i}", "n": i} for i in range(1200)])
    wanted = [f"key-{i}" for i in range(0, 1200, 2)] + ["key-missing", "key-0"]

    found = find_by_ids(collection, wanted, {"n": 1})

    assert sorted(doc["n"] for doc in found) == list(range(0, 1200, 2))
    plan = db.command("explain", {"find": collection.name,
                                  "filter": {"_id": {"$in": wanted[:500]}}})["queryPlanner"]
    assert any("USING INDEX" in step for step in plan["Plan"]), plan
    assert not any("SCAN" in step for step in plan["Plan"]), plan


def test_a_whole_collection_is_read_in_id_order_a_page_at_a_time_from_a_cursor(db, unique):
    collection = db[f"pages_{unique}"]
    collection.insert_many([{"_id": f"k-{i:04d}", "n": i} for i in range(1050)])

    pages = list(documents_after(collection, "k-0049", page_size=200))

    assert [len(page) for page in pages] == [200, 200, 200, 200, 200]
    assert [doc["n"] for page in pages for doc in page] == list(range(50, 1050))


def test_documents_older_than_a_moment_are_listed_with_the_fields_asked(db, unique):
    collection = db[f"aged_{unique}"]
    now = datetime.now(UTC)
    collection.insert_many([{"_id": f"d-{i}", "at": now - timedelta(days=i), "owner": f"o{i}",
                             "body": "x"} for i in range(10)]
                           + [{"_id": "no-time", "owner": "o"}])

    old = older_than(collection, "at", now - timedelta(days=6, hours=12), ["owner"])

    assert sorted(doc["_id"] for doc in old) == ["d-7", "d-8", "d-9"]
    assert all(set(doc) == {"_id", "at", "owner"} for doc in old)


def test_concurrent_updates_of_one_document_are_all_applied(mongo_client, settings, unique):
    """deploy/local builds FerretDB so that an update holds its collection from reading the
    document to writing it back, as MongoDB's updates are atomic; stock FerretDB 1.x lost
    some of these changes."""
    collection = mongo_client[settings.mongo_db][f"concurrent_{unique}"]
    collection.insert_one({"_id": "list", "ids": [], "count": 0})
    threads, per_thread = 4, 40

    def add(thread: int) -> None:
        for i in range(per_thread):
            collection.update_one({"_id": "list"}, {"$addToSet": {"ids": f"{thread}-{i}"},
                                                    "$inc": {"count": 1}})
            collection.update_one({"_id": f"upserted-{i}"}, {"$inc": {"count": 1}},
                                  upsert=True)

    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(add, range(threads)))

    doc = collection.find_one({"_id": "list"})
    assert (len(doc["ids"]), doc["count"]) == (threads * per_thread, threads * per_thread)
    upserted = find_by_ids(collection, [f"upserted-{i}" for i in range(per_thread)])
    assert sorted(d["count"] for d in upserted) == [threads] * per_thread


def test_the_documents_under_an_id_prefix_are_read_from_the_index(db, unique):
    collection = db[f"prefix_{unique}"]
    under = ["a|", "a|1", "a|2", "a| spaced", 'a|"quoted"', "a|<&>", "a|\\", "a|\u2028",
             "a|é", "a|~"]
    beside = ["a", "a{", "a}", "a\u2028", "b|1", "A|1", ""]
    collection.insert_many([{"_id": one} for one in under + beside]
                           + [{"_id": 7}, {"_id": {"a|": 1}}])

    found = collection.find(id_prefix("a|"))
    assert sorted(doc["_id"] for doc in found) == sorted(under)
    plan = db.command("explain", {"find": collection.name,
                                  "filter": id_prefix("a|")})["queryPlanner"]
    assert any("USING INDEX" in step for step in plan["Plan"]), plan
    assert not any("SCAN" in step for step in plan["Plan"]), plan
    assert collection.delete_many(id_prefix("a|")).deleted_count == len(under)
    assert collection.count_documents({}) == len(beside) + 2


def test_a_prefix_the_index_cannot_answer_is_still_answered_whole(db, unique):
    """Characters JSON escapes (here a space and a quote) keep the prefix out of the index:
    the store reads the collection instead, and finds the same documents."""
    collection = db[f"prefix_{unique}"]
    collection.insert_many([{"_id": one} for one in ('a "b', 'a "b|c', 'a "c', "a  b")])

    assert sorted(doc["_id"] for doc in collection.find(id_prefix('a "b'))) == ['a "b', 'a "b|c']


def test_insert_new_keeps_what_is_stored_unless_told_what_to_write_instead(db, unique):
    collection = db[f"insert_new_{unique}"]
    collection.insert_many([{"_id": "a", "n": 1, "tags": ["x"]}, {"_id": "b", "n": 1}])
    insert_new(collection, [{"_id": "a", "n": 2}, {"_id": "c", "n": 2}])
    assert sorted(collection.find(), key=lambda d: d["_id"]) == [
        {"_id": "a", "n": 1, "tags": ["x"]}, {"_id": "b", "n": 1}, {"_id": "c", "n": 2}]

    insert_new(collection, [{"_id": "a", "n": 3, "tags": ["y"]}, {"_id": "b", "n": 3},
                            {"_id": "d", "n": 3}],
               taken=lambda doc: UpdateOne({"_id": doc["_id"]}, {
                   "$set": {"n": doc["n"]}, "$addToSet": {"tags": {"$each": doc.get("tags", [])}}}))
    assert sorted(collection.find(), key=lambda d: d["_id"]) == [
        {"_id": "a", "n": 3, "tags": ["x", "y"]}, {"_id": "b", "n": 3, "tags": []},
        {"_id": "c", "n": 2}, {"_id": "d", "n": 3}]


def test_insert_new_raises_a_write_error_other_than_a_taken_id(db, unique):
    collection = db[f"insert_new_{unique}"]
    collection.insert_one({"_id": "a", "n": 1})
    with pytest.raises(pymongo.errors.BulkWriteError):
        insert_new(collection, [{"_id": "a", "n": 2}, {"_id": "b", "$n": 2}],
                   taken=lambda doc: ReplaceOne({"_id": doc["_id"]}, doc))
    assert collection.find_one({"_id": "a"}) == {"_id": "a", "n": 1}


def test_update_commands_of_many_statements_at_once_never_wait_on_each_other(db, unique):
    # each FerretDB update statement once held a pooled connection until its whole command
    # ended: three 50-statement commands at once outnumbered the pool and waited forever
    collections = [db[f"many_updates_{n}_{unique}"] for n in range(3)]
    for collection in collections:
        collection.insert_many([{"_id": i, "n": 0} for i in range(50)])

    def update(collection) -> int:
        for _ in range(10):
            collection.bulk_write([UpdateOne({"_id": i}, {"$inc": {"n": 1}}) for i in range(50)])
        return sum(doc["n"] for doc in collection.find())

    with ThreadPoolExecutor(3) as pool:
        assert list(pool.map(update, collections)) == [500, 500, 500]
