"""The consent card's rows, whichever shape the consent service answers in."""

from __future__ import annotations

from services.profile.dashboard.consents import consent_rows


def test_consent_records_become_rows_sorted_by_purpose():
    body = {"profile_id": "p1", "consents": [
        {"purpose": "marketing_email", "state": "withdrawn", "allowed": False,
         "collected_at": "2026-01-02T10:00:00Z"},
        {"purpose": "analytics", "state": "granted", "allowed": True,
         "titles": {"fi": "Analytiikka", "en": "Analytics"}},
    ]}
    assert consent_rows(body) == [
        {"purpose": "analytics", "state": "granted", "allowed": True, "at": None,
         "titles": {"fi": "Analytiikka", "en": "Analytics"}},
        {"purpose": "marketing_email", "state": "withdrawn", "allowed": False,
         "at": "2026-01-02T10:00:00Z", "titles": {}},
    ]


def test_a_mapping_of_purpose_to_state_is_read_too():
    rows = consent_rows({"profile_id": "p1", "newsletter": "granted", "profiling": "denied"})
    assert [(r["purpose"], r["allowed"]) for r in rows] == [("newsletter", True),
                                                            ("profiling", False)]


def test_an_unreadable_answer_gives_no_rows():
    assert consent_rows("nonsense") == []
    assert consent_rows([1, 2]) == []
