"""Segment rules: a small JSON language over a profile's traits, computed traits and recent
events, its validation and a pure evaluator.

A rule is one of::

    {"all": [rule, ...]}            every rule holds (an empty list holds)
    {"any": [rule, ...]}            at least one holds (an empty list does not)
    {"not": rule}
    {"field": PATH, "op": OP, "value": V}
    {"event": TYPE, "min_count": N, "within_days": D}   TYPE happened at least N times in the
                                                         last D days (today included)

PATH is ``traits.<name>``, ``computed.<name>`` or ``identifiers.<type>``. OP is one of
``eq ne lt lte gt gte`` (V a string, number or boolean), ``in`` / ``not_in`` (V a list),
``between`` (V = [low, high], both inclusive: ``["00100", "00990"]`` is a postcode range),
``prefix`` (V a string or a list of strings), ``exists`` (V true or false) and ``contains``
(a list field holds V). A field the profile lacks satisfies only ``exists: false`` and
``not_in``/``ne``; a value of another type than V never matches (a numeric string is compared
as a number when V is a number). Evaluation never raises.

Example: purchased in the last 90 days, RFM champions, postcode 00100–00990::

    {"all": [{"event": "Order Completed", "min_count": 1, "within_days": 90},
             {"field": "computed.rfm_segment", "op": "eq", "value": "champions"},
             {"field": "traits.postcode", "op": "between", "value": ["00100", "00990"]}]}
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any

from services.profile.computed import DAILY_COUNT_DAYS, event_count

COMPARISONS = ("eq", "ne", "lt", "lte", "gt", "gte")
OPERATORS = (*COMPARISONS, "in", "not_in", "between", "prefix", "exists", "contains")
ROOTS = ("traits", "computed", "identifiers")
MAX_DEPTH = 8
MAX_NODES = 200
SEGMENT_ID = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")


class InvalidRule(ValueError):
    """A rule that is not valid; ``path`` says where (e.g. ``all.1.value``)."""

    def __init__(self, path: str, reason: str):
        super().__init__(f"{path or 'rule'}: {reason}")
        self.path = path or "rule"
        self.reason = reason


def validate(rule: Any) -> None:
    """Raise InvalidRule unless ``rule`` is a well-formed rule within the size limits."""
    nodes = _validate(rule, "", 0)
    if nodes > MAX_NODES:
        raise InvalidRule("", f"more than {MAX_NODES} conditions")


def _validate(rule: Any, path: str, depth: int) -> int:
    if depth > MAX_DEPTH:
        raise InvalidRule(path, f"nested deeper than {MAX_DEPTH} levels")
    if not isinstance(rule, Mapping):
        raise InvalidRule(path, "must be an object")
    here = path + "." if path else ""
    if set(rule) in ({"all"}, {"any"}):
        (key, children), = rule.items()
        if not isinstance(children, list):
            raise InvalidRule(here + key, "must be a list of rules")
        return 1 + sum(_validate(child, f"{here}{key}.{i}", depth + 1)
                       for i, child in enumerate(children))
    if set(rule) == {"not"}:
        return 1 + _validate(rule["not"], here + "not", depth + 1)
    if "event" in rule:
        _check_event_rule(rule, here)
        return 1
    if "field" in rule:
        _check_field_rule(rule, here)
        return 1
    raise InvalidRule(path, "expected all, any, not, a field condition or an event condition")


def _check_event_rule(rule: Mapping[str, Any], here: str) -> None:
    if set(rule) - {"event", "min_count", "within_days"}:
        raise InvalidRule(here.rstrip("."), "an event condition has event, min_count, "
                                            "within_days")
    if not isinstance(rule["event"], str) or not rule["event"]:
        raise InvalidRule(here + "event", "must be an event type")
    for name, low, high in (("min_count", 1, 1_000_000), ("within_days", 1, DAILY_COUNT_DAYS)):
        value = rule.get(name, 1 if name == "min_count" else None)
        if not _is_int(value) or not low <= value <= high:
            raise InvalidRule(here + name, f"must be a whole number {low}–{high}")


def _check_field_rule(rule: Mapping[str, Any], here: str) -> None:
    if set(rule) - {"field", "op", "value"}:
        raise InvalidRule(here.rstrip("."), "a field condition has field, op, value")
    field = rule["field"]
    root, _, name = field.partition(".") if isinstance(field, str) else ("", "", "")
    if root not in ROOTS or not name or "." in name:
        raise InvalidRule(here + "field", f"must be one of {', '.join(ROOTS)} dot a name")
    op, value = rule.get("op"), rule.get("value")
    if op not in OPERATORS:
        raise InvalidRule(here + "op", f"must be one of {', '.join(OPERATORS)}")
    scalar = (str, int, float, bool)
    ok = {
        "in": isinstance(value, list) and all(isinstance(v, scalar) for v in value),
        "not_in": isinstance(value, list) and all(isinstance(v, scalar) for v in value),
        "between": isinstance(value, list) and len(value) == 2
        and all(isinstance(v, str | int | float) and not isinstance(v, bool) for v in value)
        and len({type(v) is str for v in value}) == 1,
        "prefix": isinstance(value, str) or (isinstance(value, list) and bool(value)
                                             and all(isinstance(v, str) for v in value)),
        "exists": isinstance(value, bool),
        "contains": isinstance(value, scalar),
    }.get(op, isinstance(value, scalar))
    if not ok:
        raise InvalidRule(here + "value", f"is not a valid value for {op}")


def evaluate(rule: Mapping[str, Any], profile: Mapping[str, Any], as_of: datetime) -> bool:
    """Whether ``profile`` (a profile document) satisfies a valid ``rule`` at ``as_of``."""
    if "all" in rule:
        return all(evaluate(child, profile, as_of) for child in rule["all"])
    if "any" in rule:
        return any(evaluate(child, profile, as_of) for child in rule["any"])
    if "not" in rule:
        return not evaluate(rule["not"], profile, as_of)
    if "event" in rule:
        count = event_count(profile.get("aggregates") or {}, rule["event"],
                            rule["within_days"], as_of)
        return count >= rule.get("min_count", 1)
    return _matches(rule["op"], field_value(profile, rule["field"]), rule.get("value"))


_MISSING = object()


def field_value(profile: Mapping[str, Any], field: str) -> Any:
    """The value a rule sees at ``field``: a trait's plain value, a computed trait, or the
    list of an identifier type's values."""
    root, _, name = field.partition(".")
    if root == "traits":
        trait = (profile.get("traits") or {}).get(name)
        return trait.get("value", _MISSING) if isinstance(trait, Mapping) else _MISSING
    value = (profile.get(root) or {}).get(name, _MISSING)
    return _MISSING if value is None else value


def _matches(op: str, actual: Any, expected: Any) -> bool:
    if op == "exists":
        return (actual is not _MISSING) == expected
    if actual is _MISSING:
        return op in ("ne", "not_in")
    if op == "contains":
        return isinstance(actual, list) and expected in actual
    if op == "in":
        return any(_compare("eq", actual, v) for v in expected)
    if op == "not_in":
        return not any(_compare("eq", actual, v) for v in expected)
    if op == "between":
        return _compare("gte", actual, expected[0]) and _compare("lte", actual, expected[1])
    if op == "prefix":
        prefixes = [expected] if isinstance(expected, str) else expected
        return isinstance(actual, str) and any(actual.startswith(p) for p in prefixes)
    if op == "ne":
        return not _compare("eq", actual, expected)
    return _compare(op, actual, expected)


_ORDER: dict[str, Callable[[Any, Any], bool]] = {
    "eq": lambda a, b: a == b, "lt": lambda a, b: a < b, "lte": lambda a, b: a <= b,
    "gt": lambda a, b: a > b, "gte": lambda a, b: a >= b,
}


def _compare(op: str, actual: Any, expected: Any) -> bool:
    actual = _comparable(actual, expected)
    if actual is _MISSING:
        return False
    return _ORDER[op](actual, expected)


def _comparable(actual: Any, expected: Any) -> Any:
    """``actual`` as the type of ``expected``, or _MISSING when they cannot be compared."""
    if isinstance(expected, bool) or isinstance(actual, bool):
        return actual if type(actual) is type(expected) else _MISSING
    if isinstance(expected, int | float):
        if isinstance(actual, int | float):
            return actual
        if isinstance(actual, str):
            try:
                return float(actual.strip())
            except ValueError:
                return _MISSING
        return _MISSING
    if isinstance(expected, str):
        if isinstance(actual, datetime):
            return actual.isoformat()
        return actual if isinstance(actual, str) else _MISSING
    return _MISSING


def members_of(definitions: list[Mapping[str, Any]], profile: Mapping[str, Any],
               as_of: datetime) -> list[str]:
    """The ids of the segments (live definitions with ``_id`` and ``rule``) ``profile``
    belongs to, sorted."""
    return sorted(d["_id"] for d in definitions
                  if not d.get("deleted") and evaluate(d["rule"], profile, as_of))


def membership_changes(before: list[str], after: list[str]) -> tuple[list[str], list[str]]:
    """(entered, left), each sorted."""
    return sorted(set(after) - set(before)), sorted(set(before) - set(after))


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
