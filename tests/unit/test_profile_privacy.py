"""Purpose-bound reads, restriction and data-subject requests as the profile service sees them."""

from __future__ import annotations

import pytest

from services.profile.privacy import (
    InvalidRequest,
    bound_view,
    parse_purpose_consents,
    parse_request,
    restriction_reason,
    uses_denied_values,
)

NEEDS = parse_purpose_consents(
    "marketing=marketing_email|marketing_sms|marketing_phone|marketing_post,analytics=analytics")


def view():
    return {"profile_id": "p1",
            "identifiers": {"email": ["a@example.com"], "phone": ["+358401234567"],
                            "user_id": ["L1"]},
            "traits": {"first_name": {"value": "Aino"}, "email": {"value": "a@example.com"},
                       "phone": {"value": "+358401234567"}, "city": {"value": "Espoo"}},
            "computed": {"rfm_segment": "champions"}, "segments": ["vip"],
            "timeline": [{"type": "Order Completed"}], "merged_from": []}


def states(**allowed):
    return {purpose: {"allowed": value} for purpose, value in allowed.items()}


def test_purposes_without_consent_needs_see_everything():
    assert bound_view(view(), "customer_service", NEEDS, {}) == view()


def test_a_marketing_read_of_a_customer_who_objected_returns_no_contact_details():
    objected = states(marketing_email=False, marketing_sms=False, marketing_phone=False,
                      marketing_post=False)
    bound = bound_view(view(), "marketing", NEEDS, objected)
    assert bound["identifiers"] == {} and bound["traits"] == {} and bound["timeline"] == []
    assert "no consent for marketing" in bound["withheld"]["reason"]


def test_a_marketing_read_shows_only_the_channels_consented_to():
    bound = bound_view(view(), "marketing", NEEDS, states(marketing_email=True))
    assert bound["identifiers"]["email"] == ["a@example.com"]
    assert "phone" not in bound["identifiers"] and "phone" not in bound["traits"]
    assert "city" not in bound["traits"]  # the postal address needs marketing_post
    assert bound["traits"]["first_name"] == {"value": "Aino"}
    assert set(bound["withheld"]["fields"]) == {"phone", "address", "timeline", "computed",
                                                "segments"}


def test_a_marketing_read_uses_activity_and_inferences_only_with_the_profiling_consent():
    contact_only = bound_view(view(), "marketing", NEEDS, states(marketing_email=True))
    assert contact_only["timeline"] == [] and contact_only["computed"] == {}
    assert contact_only["segments"] == []
    assert {"timeline", "computed", "segments"} <= set(contact_only["withheld"]["fields"])
    assert "profiling" in contact_only["withheld"]["reason"]
    profiled = bound_view(view(), "marketing", NEEDS,
                          states(marketing_email=True, profiling=True))
    assert profiled["timeline"] == [{"type": "Order Completed"}]
    assert profiled["computed"] == {"rfm_segment": "champions"}
    assert profiled["segments"] == ["vip"]
    assert set(profiled["withheld"]["fields"]) == {"phone", "address"}


def test_a_number_denied_on_its_own_is_withheld_even_with_the_channel_consented():
    bound = bound_view(view(), "marketing", NEEDS, states(marketing_phone=True),
                       {"marketing_phone": {"+358401234567"}})
    assert bound["identifiers"]["phone"] == []
    assert "phone" not in bound["traits"]


def test_an_analytics_read_needs_the_analytics_consent():
    assert bound_view(view(), "analytics", NEEDS, {})["traits"] == {}
    assert bound_view(view(), "analytics", NEEDS, states(analytics=True)) == view()


@pytest.mark.parametrize("purpose", ["customer_service", "marketing", "analytics"])
@pytest.mark.parametrize("consents", [{}, states(marketing_phone=True), states(analytics=True),
                                      states(marketing_email=False, analytics=False)])
def test_a_read_skips_denied_identifier_values_only_where_they_change_nothing(purpose,
                                                                             consents):
    denied = {"marketing_phone": {"+358401234567"}, "analytics": {"a@example.com"}}
    with_denied = bound_view(view(), purpose, NEEDS, consents, denied)
    if not uses_denied_values(purpose, NEEDS, consents):
        assert with_denied == bound_view(view(), purpose, NEEDS, consents)
    else:
        assert purpose == "marketing"
        assert with_denied != bound_view(view(), purpose, NEEDS, consents)


def test_a_restricted_profile_is_readable_by_the_dpo_only():
    profile = {"restricted": {"request_id": "r1"}}
    assert "restricted" in restriction_reason(profile, frozenset({"agent"}))
    assert "r1" in restriction_reason(profile, frozenset({"supervisor"}))
    assert restriction_reason(profile, frozenset({"dpo"})) is None
    assert restriction_reason({}, frozenset({"agent"})) is None


def test_requests_are_parsed_and_bad_ones_refused():
    request = parse_request({"request_id": "r1", "kind": "rectification",
                             "profile_ids": ["p1", "p2", "p1"],
                             "identifiers": [{"type": "email", "value": "a@example.com"}],
                             "fields": {"last_name": "Virtanen"}, "requested_by": "k1"})
    assert request.profile_ids == ("p1", "p2")
    assert request.fields == {"last_name": "Virtanen"}
    for bad in ({"kind": "erasure"}, {"request_id": "r", "kind": "forget"},
                {"request_id": "r", "kind": "erasure", "profile_ids": "p1"},
                {"request_id": "r", "kind": "rectification", "profile_ids": ["p1"]},
                {"request_id": "r", "kind": "access", "identifiers": ["x"]}):
        with pytest.raises(InvalidRequest):
            parse_request(bad)
