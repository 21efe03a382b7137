"""Computed traits: aggregates folded from events in any order, traits derived from them."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.profile.computed import (
    RfmThresholds,
    add_event,
    combine,
    derive,
    event_count,
    rfm,
    safe_key,
)

NOW = datetime(2026, 11, 20, 12, tzinfo=UTC)


def event(n, type_, channel="web", days_ago=0, **payload):
    return {"message_id": f"m{n}", "type": type_, "channel": channel, "payload": payload,
            "at": NOW - timedelta(days=days_ago, minutes=n)}


def fold(events, aggregates=None):
    for e in events:
        aggregates = add_event(aggregates, e, e["at"])
    return aggregates


def order(n, total, days_ago=0, **properties):
    return event(n, "Order Completed", days_ago=days_ago,
                 properties={"total": total, **properties})


@pytest.mark.parametrize(("days", "count", "total", "expected"), [
    (5, 10, 2000, (5, 5, 5, "champions")),
    (60, 5, 600, (4, 4, 4, "loyal")),
    (2, 1, 20, (5, 1, 1, "new")),
    (200, 3, 250, (2, 3, 3, "at_risk")),
    (400, 1, 10, (1, 1, 1, "hibernating")),
    (400, 9, 1500, (1, 5, 5, "cannot_lose")),
    (120, 3, 100, (3, 3, 2, "need_attention")),
])
def test_rfm_scores_and_segment_follow_the_thresholds(days, count, total, expected):
    aggregates = {"purchase_count": count, "purchase_total": total,
                  "last_purchase_at": NOW - timedelta(days=days)}
    scores = rfm(aggregates, NOW)
    assert (scores["rfm_recency"], scores["rfm_frequency"], scores["rfm_monetary"],
            scores["rfm_segment"]) == expected
    assert scores["rfm_score"] == "".join(map(str, expected[:3]))


def test_a_customer_who_never_bought_is_a_prospect_without_scores():
    computed = derive(fold([event(1, "Page Viewed")]), NOW)
    assert computed["rfm_segment"] == "prospect"
    assert computed["rfm_recency"] is None


def test_rfm_thresholds_are_configurable_and_checked():
    strict = RfmThresholds.parse("recency=1,2,3,4;frequency=10,20,30,40")
    aggregates = {"purchase_count": 12, "purchase_total": 60,
                  "last_purchase_at": NOW - timedelta(days=2)}
    assert rfm(aggregates, NOW, strict)["rfm_score"] == "422"
    with pytest.raises(ValueError):
        RfmThresholds.parse("recency=4,3,2,1")
    with pytest.raises(ValueError):
        RfmThresholds.parse("loyalty=1,2,3,4")


def test_favourite_product_groups_rank_by_quantity_bought_then_views():
    aggregates = fold([
        order(1, 30, products=[{"category": "Shoes", "quantity": 2},
                               {"category": "Socks"}]),
        order(2, 10, products=[{"category": "Socks"}]),
        event(3, "Product Viewed", properties={"category": "Hats"}),
        event(4, "Product Viewed", properties={"category": "Bags"}),
        event(5, "Product Viewed", properties={"category": "Bags"}),
    ])
    assert derive(aggregates, NOW)["favourite_product_groups"] == ["Shoes", "Socks", "Bags"]


def test_preferred_store_and_channel_are_the_most_used():
    aggregates = fold([order(1, 5, store_id="S1"), order(2, 5, store_id="S2"),
                       order(3, 5, store_id="S2"), event(4, "Call Started", "phone"),
                       event(5, "System Thing", "system"), event(6, "Call Ended", "phone"),
                       event(7, "Call Ended", "phone")])
    computed = derive(aggregates, NOW)
    assert computed["preferred_store"] == "S2"
    assert computed["preferred_channel"] == "phone"


def test_a_social_complaint_stays_open_until_resolved_in_either_order():
    complaint = event(1, "Social Message Received", "social", days_ago=2, platform="x",
                      kind="mention", text="my order never arrived", complaint=True,
                      complaint_score=0.9)
    praise = event(2, "Social Message Received", "social", days_ago=1, text="thanks",
                   complaint=False)
    resolved = event(3, "Complaint Resolved", "phone", properties={"complaint_id": "m1"})
    assert derive(fold([complaint, praise]), NOW)["open_complaints"] == 1
    assert derive(fold([complaint, praise]), NOW)["complaints"][0]["text"].startswith("my order")
    for events in itertools.permutations([complaint, praise, resolved]):
        assert derive(fold(list(events)), NOW)["open_complaints"] == 0


def test_a_resolution_without_an_id_closes_the_complaints_before_it():
    older = event(1, "Feedback Submitted", days_ago=3, properties={"kind": "complaint",
                                                                   "text": "late"})
    resolution = event(2, "Complaint Resolved", "phone", days_ago=2)
    newer = event(3, "Social Message Received", "social", days_ago=1, complaint=True, text="x")
    computed = derive(fold([newer, resolution, older]), NOW)
    assert computed["open_complaints"] == 1
    assert computed["complaints"][0]["complaint_id"] == "m3"


def test_latest_satisfaction_answer_wins_whatever_the_arrival_order():
    old = event(1, "Survey Answered", days_ago=10, properties={"survey": "nps", "score": 3,
                                                              "scale": "0-10"})
    new = event(2, "Survey Answered", days_ago=1, properties={"survey": "csat", "score": 5,
                                                             "scale": "1-5"})
    for events in ([old, new], [new, old]):
        satisfaction = derive(fold(events), NOW)["satisfaction"]
        assert (satisfaction["survey"], satisfaction["score"]) == ("csat", 5)


def test_campaign_reactions_are_counted():
    aggregates = fold([event(1, "Email Sent", "email"), event(2, "Email Sent", "email"),
                       event(3, "Email Opened", "email"), event(4, "Email Link Clicked", "email"),
                       event(5, "Order Completed", context={"campaign": {"name": "black-friday"}},
                             properties={"total": 10})])
    assert derive(aggregates, NOW)["campaign_reactions"] == {
        "sent": 2, "opened": 1, "clicked": 1, "converted": 1}


def test_event_counts_look_back_whole_days():
    aggregates = fold([order(1, 5, days_ago=0), order(2, 5, days_ago=89),
                       order(3, 5, days_ago=90)])
    assert event_count(aggregates, "Order Completed", 90, NOW) == 2
    assert event_count(aggregates, "Order Completed", 91, NOW) == 3
    assert event_count(aggregates, "Page Viewed", 91, NOW) == 0


def test_names_from_events_become_safe_document_keys():
    assert safe_key("$where.x") == "where_x"
    assert safe_key("") == "_"


EVENT_TYPES = ["Order Completed", "Page Viewed", "Call Started", "Survey Answered",
               "Email Opened", "Complaint Resolved", "Social Message Received"]


@st.composite
def events(draw):
    n = draw(st.integers(min_value=1, max_value=12))
    return [event(i, draw(st.sampled_from(EVENT_TYPES)),
                  draw(st.sampled_from(["web", "phone", "social"])),
                  days_ago=draw(st.integers(0, 30)),
                  properties={"total": draw(st.integers(0, 500)), "score": 4,
                              "products": [{"category": draw(st.sampled_from("ABC"))}]},
                  complaint=draw(st.booleans()))
            for i in range(n)]


@settings(max_examples=60, deadline=None)
@given(events(), st.randoms())
def test_any_arrival_order_gives_the_same_computed_traits(history, random):
    shuffled = list(history)
    random.shuffle(shuffled)
    assert derive(fold(history), NOW) == derive(fold(shuffled), NOW)


@settings(max_examples=60, deadline=None)
@given(events(), st.integers(min_value=0, max_value=12))
def test_merging_two_profiles_equals_one_profile_with_all_events(history, cut):
    a, b = history[:cut], history[cut:]
    merged = combine(fold(a) or {}, fold(b) or {})
    assert derive(merged, NOW) == derive(fold(history) or {}, NOW)
    assert derive(combine(fold(b) or {}, fold(a) or {}), NOW) == derive(merged, NOW)


def test_the_social_services_classification_flags_a_complaint():
    flagged = event(1, "Social Post Received", "social", platform="x", text="never arrived",
                    classification={"label": "complaint", "complaint": True, "score": 0.8})
    other = event(2, "Social Post Received", "social",
                  classification={"label": "praise", "complaint": False, "score": 0.1})
    assert derive(fold([flagged, other]), NOW)["open_complaints"] == 1
