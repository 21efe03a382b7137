"""The profile projection's rules on plain dicts."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

from services.profile.profile_store import name_entries, name_key, normalise_name
from services.profile.projection import (
    REMEMBERED_IDS,
    TIMELINE_LIMIT,
    applied,
    apply_event,
    merge,
    name_of,
    new_profile,
    rectify,
    refresh_computed,
    snapshot,
    timeline_entry,
    timeline_reach,
)

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


def order(n, profile="p1"):
    return event(n, "Order Completed", properties={"total": 10.0}, profile=profile)


def test_a_profile_remembers_the_last_events_it_applied_and_counts_none_twice():
    profile = replay([order(n) for n in range(REMEMBERED_IDS + 5)])
    assert [applied(profile, f"m{n}") for n in (0, 4, 5, REMEMBERED_IDS + 4)] == [
        False, False, True, True]
    assert not applied(profile, "m-never")
    assert replay([order(5), order(REMEMBERED_IDS + 4)], profile) == profile
    assert len(profile["applied_digests"]) == REMEMBERED_IDS * 8


def test_a_profile_an_earlier_version_stored_keeps_the_events_it_applied():
    earlier = replay([order(1), order(2)])
    earlier.pop("applied_digests")
    earlier["recent_message_ids"] = ["m1", "m2"]
    assert apply_event(earlier, order(2)) == earlier
    changed = apply_event(earlier, order(3))
    assert changed["recent_message_ids"] == []  # empty: an earlier version still reads it
    assert [applied(changed, f"m{n}") for n in (1, 2, 3)] == [True, True, True]
    assert changed["computed"]["purchase_count"] == 3


def test_ids_an_earlier_version_added_after_the_digests_are_remembered_as_the_newest():
    profile = replay([order(n) for n in range(REMEMBERED_IDS)])
    profile["recent_message_ids"] = ["rolled-back-1"]  # an earlier version rolled back to
    changed = apply_event(profile, order(REMEMBERED_IDS))
    assert applied(changed, "rolled-back-1") and applied(changed, f"m{REMEMBERED_IDS}")
    assert not applied(changed, "m0") and not applied(changed, "m1")


def test_a_merge_remembers_what_both_profiles_applied():
    survivor = replay([order(1, "a")], new_profile("a"))
    absorbed = replay([order(2, "b")], new_profile("b"))
    absorbed.pop("applied_digests")  # stored by an earlier version
    absorbed["recent_message_ids"] = ["m2"]
    combined = merge(survivor, absorbed)
    assert [applied(combined, f"m{n}") for n in (1, 2, 3)] == [True, True, False]
    assert apply_event(combined, order(2, "a")) == combined


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


def test_a_merge_of_profiles_stored_before_the_history_keeps_their_older_timeline():
    def before_history(profile_id, first):
        profile = replay([event(n, "Page Viewed", profile=profile_id)
                          for n in range(first, first + 30)], new_profile(profile_id))
        profile["timeline"] = sorted(  # as those versions kept it, up to 50, no months
            [timeline_entry(event(n, "Page Viewed", profile=profile_id))
             for n in range(first, first + 30)], key=lambda e: e["at"], reverse=True)
        profile["history_months"] = []
        return profile

    merged = merge(before_history("a", 0), before_history("b", 100))
    assert len(merged["timeline"]) == 50
    assert len(merge(replay([event(1)]), before_history("b", 100))["timeline"]) == TIMELINE_LIMIT


def test_merge_recomputes_computed_traits_as_if_one_profile_had_all_events():
    a = replay([event(1, "Order Completed", properties={"total": 10.0,
                                                        "products": [{"category": "Shoes"}]},
                      profile="a")])
    b = replay([event(2, "Order Completed", properties={"total": 500.0,
                                                        "products": [{"category": "Hats"},
                                                                     {"category": "Hats"}]},
                      profile="b")], new_profile("b"))
    one = replay([event(1, "Order Completed", properties={"total": 10.0,
                                                          "products": [{"category": "Shoes"}]}),
                  event(2, "Order Completed", properties={"total": 500.0,
                                                          "products": [{"category": "Hats"},
                                                                       {"category": "Hats"}]})])
    as_of = T0 + timedelta(days=1)
    assert merge(a, b, as_of)["computed"] == merge(b, a, as_of)["computed"]
    assert merge(a, b, as_of)["computed"] == refresh_computed(one, as_of)["computed"]
    assert merge(a, b, as_of)["computed"]["favourite_product_groups"] == ["Hats", "Shoes"]


def test_the_snapshot_is_plain_json_without_provenance():
    profile = replay([event(1, "Order Completed", traits={"firstName": "Anna"},
                            properties={"total": 20.0}, identifiers={"email": "a@x.fi"})])
    profile["segments"] = ["buyers"]
    snap = snapshot(profile)
    assert snap["traits"] == {"first_name": "Anna"}
    assert snap["identifiers"] == {"email": ["a@x.fi"]}
    assert snap["segments"] == ["buyers"] and snap["merged_into"] is None
    assert snap["computed"]["last_purchase_at"] == (T0 + timedelta(minutes=1)).isoformat()
    json.dumps(snap)


def test_the_data_subjects_rectification_outranks_later_events_until_rectified_again():
    profile = replay([event(1, traits={"lastName": "Korhonen"})])
    rectified = rectify(profile, {"lastName": "Virtanen"}, "r1", T0 + timedelta(minutes=5))
    assert rectified["traits"]["last_name"]["source"] == "data_subject"
    later = apply_event(rectified, event(9, traits={"lastName": "Korhonen"}))
    assert later["traits"]["last_name"]["value"] == "Virtanen"
    again = rectify(later, {"lastName": "Nieminen"}, "r2", T0 + timedelta(minutes=10))
    assert again["traits"]["last_name"]["value"] == "Nieminen"
    assert rectify(again, {"lastName": "X"}, "r2", T0) == again


def test_events_list_the_months_their_history_is_kept_in():
    profile = replay([event(1, at=datetime(2026, 9, 30, 23, tzinfo=UTC)),
                      event(2, at=datetime(2026, 11, 1, tzinfo=UTC)),
                      event(3, at=datetime(2026, 11, 2, tzinfo=UTC))])
    assert profile["history_months"] == ["2026-11", "2026-09"]


def test_a_name_is_listed_in_both_orders_normalised_with_a_plus_for_each_space():
    assert name_entries("p_1", "Äijä", "Van der Berg") == {
        "aija+van+der+berg|p_1", "van+der+berg+aija|p_1"}
    assert name_entries("p_1", "", "Korhonen") == {"korhonen|p_1"}
    # plain ASCII whatever the name holds, each character on its own (prefixes stay prefixes)
    assert name_key("bjørn o'neil-x+|%\U0010ffff") == (
        "bj%0000f8rn+o'neil-x%00002b%00007c%000025%10ffff")
    assert normalise_name("  Hämäläinen  Öhman ") == "hamalainen ohman"
    assert name_of({"traits": {"name": {"value": "Aino Maria Korhonen"}}}) == (
        "Aino", "Maria Korhonen")


def test_a_timeline_reaches_twice_as_far_back_as_the_recent_spacing_says():
    profile = new_profile("p1")
    for n in range(TIMELINE_LIMIT - 1):
        profile = apply_event(profile, event(n, "Page Viewed", at=T0 - timedelta(hours=n)))
    assert timeline_reach(profile, 21) is None  # all its events are these
    profile = apply_event(profile, event(99, "Page Viewed", at=T0 - timedelta(hours=9)))
    # ten entries an hour apart: 21 more reach back about 21 hours
    assert timeline_reach(profile, 21) == (T0, timedelta(hours=42))
