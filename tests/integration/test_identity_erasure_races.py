"""An erasure in the identity graph while events resolve: nothing it should erase is left."""

from __future__ import annotations

import threading
from datetime import UTC, datetime

from services.common.envelope import new_envelope
from services.common.store import ensure_indexes
from services.identity.graph import Identifier, Link, resolve
from services.identity.graph_store import INDEXES, MongoGraph
from services.identity.privacy_store import GraphEraser, SuppressionList
from services.identity.worker import make_privacy_handler

AT = datetime(2026, 11, 1, tzinfo=UTC)
DIGEST_KEY = b"erasure-races-test-key"


def erasure_request(request_id: str, *identifiers: Identifier):
    return new_envelope("Erasure Requested", "system", payload={
        "request_id": request_id, "kind": "erasure", "profile_ids": [],
        "identifiers": [{"type": i.type, "value": i.value} for i in identifiers],
        "requested_by": "test"})


def test_an_erasure_waits_for_a_resolution_holding_the_profile_and_erases_what_it_linked(
        db, unique):
    ensure_indexes(db, INDEXES)
    graph = MongoGraph(db)
    suppressions = SuppressionList(db, DIGEST_KEY)
    erase = make_privacy_handler(graph, GraphEraser(db), suppressions)
    email = Identifier("email", f"waits.{unique}@example.com")
    login = Identifier("user_id", f"W-{unique}")
    profile_id = resolve(graph, [email], message_id=f"reg-{unique}", at=AT).profile_id
    acks = []

    # a resolution holds the customer's profile while it links their login
    with graph.lock([profile_id]):
        eraser = threading.Thread(
            target=lambda: acks.extend(erase(erasure_request(f"req-{unique}", email))))
        eraser.start()
        eraser.join(timeout=1.0)
        assert eraser.is_alive(), "the erasure did not wait for the profile's lock"
        graph.add_links([Link(login, profile_id, True, f"login-{unique}", AT)])
    eraser.join(timeout=30)

    assert not eraser.is_alive()
    assert graph.links([email, login]) == {} and graph.profile(profile_id) is None
    suppressions.refresh()
    assert suppressions.any_suppressed([login])
    summary = acks[0].value.payload["summary"]
    assert (summary["profiles"], summary["links"], summary["suppressed"]) == (1, 2, 2)
