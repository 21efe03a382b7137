from datetime import UTC, datetime

import pytest

from services.common.documents import copied, unstorable


@pytest.mark.parametrize("value, reason", [
    ({"$where": "1"}, "start with $"),
    ({"a.b": 1}, "contain ."),
    ({"n": 2**63}, "64-bit"),
    ({"x": float("inf")}, "finite"),
    ({"x": [[1]]}, "arrays inside arrays"),
])
def test_what_the_store_cannot_hold_is_named(value, reason):
    assert reason in unstorable(value)


def test_ordinary_documents_pass():
    assert unstorable({"name": "Aino", "total": 59.9, "tags": ["a", {"b": True}],
                       "n": -(2**63)}) is None


def test_very_deep_nesting_is_refused():
    deep: dict = {}
    node = deep
    for _ in range(60):
        node["a"] = {}
        node = node["a"]
    assert "deeper" in unstorable(deep)


def test_a_copied_document_equals_the_original_and_shares_nothing_mutable_with_it():
    at = datetime(2026, 11, 29, tzinfo=UTC)
    original = {"traits": {"city": {"value": "Oulu", "at": at}}, "timeline": [{"n": 1}],
                "tags": ["a"], "score": 1.5, "none": None}

    copy = copied(original)
    copy["traits"]["city"]["value"] = "Turku"
    copy["timeline"][0]["n"] = 2
    copy["tags"].append("b")

    assert original == {"traits": {"city": {"value": "Oulu", "at": at}},
                        "timeline": [{"n": 1}], "tags": ["a"], "score": 1.5, "none": None}
