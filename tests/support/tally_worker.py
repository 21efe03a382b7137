"""A worker built on services.common.bus for testing the consumer loop itself.

Each message's effect: add 1 to the tally of its key, exactly once, with the conditional
update a real projection uses (the update matches only if the message id is not yet applied).
A payload with ``"poison": true`` is refused as invalid; ``"explode": true`` raises a bug.

    python -m tests.support.tally_worker worker TOPIC GROUP [DELAY_MS]
"""

from __future__ import annotations

import sys
import time

import pymongo.errors

from services.common.bus import ConsumerLoop, InvalidMessage
from services.common.config import Settings
from services.common.runner import run_worker
from services.common.store import ProcessedLedger


def tally_collection(topic: str) -> str:
    """One collection per test topic: FerretDB scans a collection for any filter beyond _id,
    so sharing one across tests would slow every test down as the session goes on."""
    return "tally_" + topic.replace(".", "_")


def make_handler(db, topic: str, delay_s: float):
    tally = db[tally_collection(topic)]

    def handle(envelope):
        if envelope.payload.get("poison"):
            raise InvalidMessage("poison payload refused by the tally worker")
        if envelope.payload.get("explode"):
            raise ZeroDivisionError("a bug in the handler")
        if delay_s:
            time.sleep(delay_s)
        key = envelope.payload["key"]
        try:
            tally.update_one(
                {"_id": key, "applied": {"$ne": envelope.message_id}},
                {"$inc": {"n": 1}, "$push": {"applied": envelope.message_id}},
                upsert=True,
            )
        except pymongo.errors.DuplicateKeyError:
            pass  # the document exists and already holds this message: applied before
        return ()

    return handle


def main() -> int:
    _, topic, group, *rest = sys.argv[1:]
    delay_s = int(rest[0]) / 1000 if rest else 0.0
    settings = Settings.from_env()

    def build(settings, producer, db):
        ledger = ProcessedLedger(db, group)
        ledger.prepare()
        return [ConsumerLoop(settings=settings, service="tally", group=group, topics=[topic],
                             handler=make_handler(db, topic, delay_s), producer=producer,
                             ledger=ledger)]

    from services.common import logs

    logs.configure("tally", settings.log_level, settings.log_format)
    return run_worker("tally", settings, build)


if __name__ == "__main__":
    sys.exit(main())
