"""The identity scale benchmark's seeded graph, its traffic and its match cost split
(bench/identity_scale.py)."""

from __future__ import annotations

from datetime import UTC, datetime

from bench.identity_scale import (
    SEEDED_TYPES,
    cost_per_record_and_pair,
    customer_identifiers,
    graph_documents,
    graph_events,
)
from services.common.identifiers import normalise
from services.identity.graph import Identifier

AT = datetime(2026, 11, 1, tzinfo=UTC)


def test_a_seeded_customer_is_one_profile_listing_exactly_its_links_in_normal_form():
    profile, links = graph_documents("r1", 249_999, AT)
    assert {link["type"] for link in links} == set(SEEDED_TYPES)
    for link in links:
        assert link["_id"] == Identifier(link["type"], link["value"]).key
        assert normalise(link["type"], link["value"]) == link["value"]
        assert link["profile_id"] == profile["_id"]
    assert profile["merged_into"] is None
    assert profile["identifiers"] == {link["type"]: [link["value"]] for link in links}


def test_seeded_customers_share_no_identifier():
    first = customer_identifiers("r1", 1)
    second = customer_identifiers("r1", 10)
    assert not set(first.values()) & set(second.values())


def test_graph_traffic_mixes_known_customers_with_new_cookies_and_always_has_a_cookie():
    seeded = {value for customer in range(100)
              for value in customer_identifiers("r1", customer).values()}
    events = graph_events("r1", 100, 1000, "t", seed=2)
    assert all("anonymous_id" in event.identifiers for event in events)
    all_known = [e for e in events if set(e.identifiers.values()) <= seeded]
    new_cookie = [e for e in events if e.identifiers["anonymous_id"] not in seeded]
    assert len(all_known) + len(new_cookie) == len(events)
    assert 0.5 < len(all_known) / len(events) < 0.7
    assert any(set(e.identifiers) == {"anonymous_id", "user_id"} for e in new_cookie)
    assert any(set(e.identifiers) == {"anonymous_id"} for e in new_cookie)
    assert [e.identifiers for e in events] == [
        e.identifiers for e in graph_events("r1", 100, 1000, "t", seed=2)]


def test_match_cost_splits_into_a_cost_per_record_and_per_candidate_pair():
    # 100 µs a record and 20 µs a pair, at 10k records × 3 pairs and 100k × 6
    small = (10_000 * 100e-6 + 30_000 * 20e-6, 10_000, 30_000)
    large = (100_000 * 100e-6 + 600_000 * 20e-6, 100_000, 600_000)
    per_record, per_pair = cost_per_record_and_pair(small, large)
    assert abs(per_record - 100e-6) < 1e-12
    assert abs(per_pair - 20e-6) < 1e-12
