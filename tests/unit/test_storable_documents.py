import pytest

from services.common.documents import unstorable


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
