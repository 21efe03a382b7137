"""The identity worker's suppression list is read from memory and reloaded when an erasure
anywhere adds to it: an erased identifier is suppressed from the next batch on, in every
worker process."""

from __future__ import annotations

from datetime import UTC, datetime

from services.identity.graph import Identifier
from services.identity.privacy_store import SuppressionList

KEY = b"suppression-test-key"


def test_an_identifier_erased_by_another_worker_is_suppressed_after_the_next_refresh(db, unique):
    worker, eraser = SuppressionList(db, KEY), SuppressionList(db, KEY)
    email = Identifier("email", f"erased.{unique}@esimerkki.fi")
    worker.refresh()
    assert not worker.any_suppressed([email])

    assert eraser.add([email], f"request-{unique}", datetime.now(UTC)) == 1
    worker.refresh()
    assert worker.any_suppressed([email, Identifier("anonymous_id", f"anon-{unique}")])


def test_a_repeated_erasure_still_makes_workers_reload(db, unique):
    """A crash after adding the digests but before announcing them is repaired by the
    re-delivered request, which adds nothing new."""
    phone = Identifier("phone", f"+35840{int(unique[:6], 16) % 10_000_000:07d}")
    worker, eraser = SuppressionList(db, KEY), SuppressionList(db, KEY)
    worker.refresh()
    # the first attempt stored the digest, then its process died before announcing it
    eraser.collection.insert_one({"_id": eraser.digest(phone), "type": "phone"})
    worker.refresh()
    assert not worker.any_suppressed([phone])

    assert eraser.add([phone], f"request-{unique}", datetime.now(UTC)) == 0
    worker.refresh()
    assert worker.any_suppressed([phone])
