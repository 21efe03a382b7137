"""The profile projection's rules on plain dicts."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from services.profile.projection import TIMELINE_LIMIT, apply_event, merge, new_profile

T0 = datetime(2026, 11, 1, 12, tzinfo=UTC)


def event(n, type_="Identify", channel="web", traits=None, properties=None, at=None,
          profile="p1", identifiers=None):
    payload = {}
    if traits:
        payload["traits"] = traits
    if properties:
        payload["properties"] = properties
    return {"message_id": f"m{n}", "type": type_, "channel": channel,
            "occurred_at": at or T0 + timedelta(minutes=n), "profile_id": profile,
            "identifiers": identifiers or {}, "payload": payload, "source": "test"}


def replay(events, start=None):
    profile = start
    for e in events:
        profile = apply_event(profile, e)
    return profile


def test_traits_carry_their_provenance():
    profile = replay([event(1, traits={"firstName": "Anna", "address": {"city": "Espoo"}})])
    assert profile["traits"]["first_name"]["value"] == "Anna"
    assert profile["traits"]["city"]["channel"] == "web"
    assert profile["traits"]["city"]["message_id"] == "m1"


def test_late_event_older_than_the_current_value_does_not_overwrite_it():
    newer = event(2, traits={"email": "new@example.com"})
    older = event(1, traits={"email": "old@example.com"})
    assert replay([newer, older])["traits"]["email"]["value"] == "new@example.com"


def test_first_seen_rule_keeps_the_earliest_value():
    profile = replay([event(2, traits={"birthday": "1985-03-12"}),
                      event(1, traits={"birthday": "1985-03-21"})])
    assert profile["traits"]["birthday"]["value"] == "1985-03-21"


def test_replaying_the_same_events_gives_the_same_profile():
    events = [event(1, traits={"firstName": "Anna"}),
              event(2, "Order Completed", properties={"order_id": "1", "total": 20.0}),
              event(3, "Call Started", channel="phone")]
    once = replay(events)
    assert replay(events, once) == once


def test_purchases_add_up_to_count_total_and_average():
    profile = replay([event(1, "Order Completed", properties={"total": 20.0}),
                      event(2, "Order Completed", properties={"total": 30.5})])
    computed = profile["computed"]
    assert (computed["purchase_count"], computed["purchase_total"]) == (2, 50.5)
    assert computed["average_order_value"] == 25.25
    assert computed["last_purchase_at"] == T0 + timedelta(minutes=2)


def test_last_contact_is_kept_per_channel():
    profile = replay([event(1, channel="web"), event(2, "Call Started", channel="phone")])
    assert set(profile["computed"]["last_contact"]) == {"web", "phone"}
    assert profile["computed"]["calls"] == 1


def test_timeline_is_newest_first_and_capped():
    profile = replay([event(n, "Page Viewed") for n in range(TIMELINE_LIMIT + 10)])
    timeline = profile["timeline"]
    assert len(timeline) == TIMELINE_LIMIT
    assert timeline[0]["message_id"] == f"m{TIMELINE_LIMIT + 9}"


def test_merge_joins_timelines_and_adds_purchases_once():
    a = replay([event(1, "Order Completed", properties={"total": 10.0}, profile="a",
                      identifiers={"email": "a@example.com"})])
    b = replay([event(2, "Order Completed", properties={"total": 5.0}, profile="b",
                      identifiers={"phone": "+358401234567"})], new_profile("b"))
    merged = merge(a, b)
    assert merged["computed"]["purchase_count"] == 2
    assert merged["computed"]["purchase_total"] == 15.0
    assert {e["message_id"] for e in merged["timeline"]} == {"m1", "m2"}
    assert merged["identifiers"] == {"email": ["a@example.com"], "phone": ["+358401234567"]}
    assert merge(merged, b) == merged
