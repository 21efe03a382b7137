"""Segment rules: validation, every operator, event windows, and algebraic properties."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.profile.computed import add_event
from services.profile.segments import (
    InvalidRule,
    evaluate,
    members_of,
    membership_changes,
    validate,
)

NOW = datetime(2026, 11, 20, 12, tzinfo=UTC)


def profile(traits=None, computed=None, identifiers=None, orders_days_ago=()):
    aggregates = None
    for n, days in enumerate(orders_days_ago):
        aggregates = add_event(aggregates, {"message_id": f"o{n}", "type": "Order Completed",
                                            "channel": "web", "payload": {}},
                               NOW - timedelta(days=days))
    return {"traits": {k: {"value": v} for k, v in (traits or {}).items()},
            "computed": computed or {}, "identifiers": identifiers or {},
            "aggregates": aggregates or {}}


def field(path, op, value):
    return {"field": path, "op": op, "value": value}


CHAMPION_IN_HELSINKI = {"all": [
    {"event": "Order Completed", "min_count": 1, "within_days": 90},
    field("computed.rfm_segment", "eq", "champions"),
    field("traits.postcode", "between", ["00100", "00990"]),
]}


def test_the_issue_example_selects_recent_champion_buyers_in_the_postcode_range():
    validate(CHAMPION_IN_HELSINKI)
    inside = profile({"postcode": "00250"}, {"rfm_segment": "champions"}, orders_days_ago=[10])
    assert evaluate(CHAMPION_IN_HELSINKI, inside, NOW)
    for outside in (profile({"postcode": "02100"}, {"rfm_segment": "champions"},
                            orders_days_ago=[10]),
                    profile({"postcode": "00250"}, {"rfm_segment": "loyal"},
                            orders_days_ago=[10]),
                    profile({"postcode": "00250"}, {"rfm_segment": "champions"},
                            orders_days_ago=[120])):
        assert not evaluate(CHAMPION_IN_HELSINKI, outside, NOW)


@pytest.mark.parametrize(("rule", "expected"), [
    (field("traits.city", "eq", "Espoo"), True),
    (field("traits.city", "ne", "Espoo"), False),
    (field("traits.household_size", "gte", 3), True),   # the numeric string "4"
    (field("traits.household_size", "lt", 4), False),
    (field("computed.purchase_total", "gt", 99.5), True),
    (field("computed.purchase_total", "lte", 99.5), False),
    (field("traits.city", "in", ["Espoo", "Vantaa"]), True),
    (field("traits.city", "not_in", ["Espoo", "Vantaa"]), False),
    (field("traits.postcode", "prefix", ["001", "02"]), True),
    (field("traits.postcode", "prefix", "001"), False),
    (field("traits.language", "exists", True), False),
    (field("traits.language", "exists", False), True),
    (field("traits.language", "eq", "fi"), False),
    (field("traits.language", "ne", "fi"), True),
    (field("identifiers.email", "contains", "a@example.com"), True),
    (field("identifiers.phone", "exists", True), False),
    (field("traits.vip", "eq", True), True),
    (field("traits.vip", "eq", 1), False),            # a boolean is not a number
    (field("traits.city", "gt", 5), False),           # a word is not a number
    (field("traits.birthday", "between", ["1980-01-01", "1989-12-31"]), True),
    ({"not": field("traits.city", "eq", "Espoo")}, False),
    ({"any": []}, False),
    ({"all": []}, True),
    ({"event": "Order Completed", "min_count": 2, "within_days": 30}, True),
    ({"event": "Order Completed", "min_count": 3, "within_days": 30}, False),
    ({"event": "Email Opened", "within_days": 30}, False),
])
def test_each_operator(rule, expected):
    validate(rule)
    customer = profile({"city": "Espoo", "household_size": "4", "postcode": "02100",
                        "vip": True, "birthday": "1985-03-12"},
                       {"purchase_total": 100.0}, {"email": ["a@example.com"]},
                       orders_days_ago=[1, 20])
    assert evaluate(rule, customer, NOW) is expected


@pytest.mark.parametrize(("rule", "where"), [
    ([], "rule"),
    ({"all": "x"}, "all"),
    ({"all": [{"field": "traits.city"}]}, "all.0.op"),
    ({"field": "city", "op": "eq", "value": 1}, "field"),
    ({"field": "traits.a.b", "op": "eq", "value": 1}, "field"),
    ({"field": "traits.city", "op": "like", "value": 1}, "op"),
    ({"field": "traits.city", "op": "between", "value": [1]}, "value"),
    ({"field": "traits.city", "op": "between", "value": ["a", 1]}, "value"),
    ({"field": "traits.city", "op": "in", "value": "Espoo"}, "value"),
    ({"field": "traits.city", "op": "eq", "value": {"$gt": 1}}, "value"),
    ({"event": "Order Completed", "within_days": 0}, "within_days"),
    ({"event": "Order Completed", "within_days": 9999}, "within_days"),
    ({"event": "Order Completed", "min_count": True, "within_days": 3}, "min_count"),
    ({"not": {"any": [{"nope": 1}]}}, "not.any.0"),
    ({"field": "traits.city", "op": "eq", "value": 1, "extra": 2}, "rule"),
])
def test_invalid_rules_name_where_they_are_wrong(rule, where):
    with pytest.raises(InvalidRule) as error:
        validate(rule)
    assert error.value.path == where


def test_rules_nested_too_deep_are_refused():
    rule = field("traits.city", "eq", "x")
    for _ in range(12):
        rule = {"not": rule}
    with pytest.raises(InvalidRule, match="deeper"):
        validate(rule)


def test_membership_lists_matching_live_segments_and_their_changes():
    definitions = [{"_id": "espoo", "rule": field("traits.city", "eq", "Espoo")},
                   {"_id": "all", "rule": {"all": []}},
                   {"_id": "gone", "rule": {"all": []}, "deleted": True}]
    assert members_of(definitions, profile({"city": "Espoo"}), NOW) == ["all", "espoo"]
    assert membership_changes(["all", "gone"], ["all", "espoo"]) == (["espoo"], ["gone"])


# --- properties ------------------------------------------------------------------------------

scalars = st.one_of(st.none(), st.booleans(), st.integers(-5, 5), st.floats(-5, 5),
                    st.sampled_from(["", "00100", "00500", "Espoo", "a", "3"]))
leaf_values = st.one_of(st.booleans(), st.integers(-5, 5),
                        st.sampled_from(["00100", "00990", "Espoo", "a", "3"]))
names = st.sampled_from(["city", "postcode", "size"])


@st.composite
def leaves(draw):
    path = draw(st.sampled_from(["traits.", "computed."])) + draw(names)
    op = draw(st.sampled_from(["eq", "ne", "lt", "lte", "gt", "gte", "in", "not_in", "prefix",
                               "exists", "between"]))
    if op in ("in", "not_in"):
        value = draw(st.lists(leaf_values, max_size=3))
    elif op == "prefix":
        value = draw(st.sampled_from(["00", "E", "a"]))
    elif op == "exists":
        value = draw(st.booleans())
    elif op == "between":
        value = list(draw(st.one_of(st.tuples(st.integers(-5, 5), st.integers(-5, 5)),
                                    st.tuples(st.sampled_from(["00100", "a"]),
                                              st.sampled_from(["00990", "z"])))))
    else:
        value = draw(leaf_values)
    return field(path, op, value)


rules = st.recursive(leaves(), lambda children: st.one_of(
    st.builds(lambda c: {"all": c}, st.lists(children, max_size=3)),
    st.builds(lambda c: {"any": c}, st.lists(children, max_size=3)),
    st.builds(lambda c: {"not": c}, children)), max_leaves=8)


@st.composite
def profiles(draw):
    traits = draw(st.dictionaries(names, scalars, max_size=3))
    computed = draw(st.dictionaries(names, scalars, max_size=3))
    return {"traits": {k: {"value": v} for k, v in traits.items() if v is not None},
            "computed": computed, "identifiers": {}, "aggregates": {}}


@settings(max_examples=100, deadline=None)
@given(rules, profiles())
def test_generated_rules_validate_and_evaluate_without_raising(rule, customer):
    validate(rule)
    assert evaluate(rule, customer, NOW) in (True, False)


@settings(max_examples=100, deadline=None)
@given(rules, rules, profiles())
def test_not_all_is_any_not(a, b, customer):
    left = evaluate({"not": {"all": [a, b]}}, customer, NOW)
    right = evaluate({"any": [{"not": a}, {"not": b}]}, customer, NOW)
    assert left == right
    assert evaluate({"not": {"not": a}}, customer, NOW) == evaluate(a, customer, NOW)


@settings(max_examples=100, deadline=None)
@given(leaf_values, leaf_values, profiles(), names)
def test_between_is_gte_low_and_lte_high(low, high, customer, name):
    if isinstance(low, bool) or isinstance(high, bool) or type(low) is not type(high):
        return
    path = f"traits.{name}"
    between = evaluate(field(path, "between", [low, high]), customer, NOW)
    both = evaluate({"all": [field(path, "gte", low), field(path, "lte", high)]}, customer, NOW)
    assert between == both


@settings(max_examples=100, deadline=None)
@given(leaf_values, st.lists(leaf_values, max_size=4), profiles(), names)
def test_in_is_any_eq_and_not_in_is_its_negation(_, values, customer, name):
    path = f"traits.{name}"
    in_ = evaluate(field(path, "in", values), customer, NOW)
    assert in_ == evaluate({"any": [field(path, "eq", v) for v in values]}, customer, NOW)
    assert evaluate(field(path, "not_in", values), customer, NOW) == (not in_)
