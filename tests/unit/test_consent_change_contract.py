"""The Consent Changed parser shared by the services reading cdp.consent.changes."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from services.common.bus import InvalidMessage
from services.common.consent_changes import parse_consent_change
from services.common.envelope import new_envelope

OCCURRED = datetime(2026, 11, 2, 8, 0, tzinfo=UTC)


def change(payload=None, profile_id="p_1", identifiers=None):
    envelope = new_envelope("Consent Changed", "system", identifiers=identifiers,
                            occurred_at=OCCURRED, message_id="m-1",
                            payload={"purpose": "marketing_email", "allowed": True,
                                     "state": "granted", **(payload or {})})
    return envelope.resolved_to(profile_id) if profile_id else envelope


def test_a_profiles_change_carries_its_purpose_state_and_receipt():
    parsed = parse_consent_change(change({"receipt_id": "r-9", "reason": "explicit_decision",
                                          "collected_at": "2026-11-01T10:00:00.123456Z"}))
    assert (parsed.profile_id, parsed.identifier, parsed.purpose, parsed.allowed, parsed.state,
            parsed.reason, parsed.receipt_id) == (
        "p_1", None, "marketing_email", True, "granted", "explicit_decision", "r-9")
    assert parsed.collected_at == datetime(2026, 11, 1, 10, 0, 0, 123000, tzinfo=UTC)


def test_collected_at_in_another_zone_is_read_in_utc_and_without_a_zone_as_utc():
    east = parse_consent_change(change({"collected_at": "2026-11-01T12:00:00+02:00"}))
    bare = parse_consent_change(change({"collected_at": "2026-11-01T10:00:00"}))
    assert east.collected_at == bare.collected_at == datetime(2026, 11, 1, 10, tzinfo=UTC)
    assert east.collected_at.tzinfo is UTC


def test_a_change_without_collected_at_is_ordered_by_when_it_occurred():
    parsed = parse_consent_change(change())
    assert parsed.collected_at == OCCURRED and parsed.receipt_id == "m-1"


def test_a_bare_identifiers_change_names_the_identifier_as_its_subject():
    parsed = parse_consent_change(change(profile_id=None, identifiers={"phone": "+358401234567"}))
    assert parsed.profile_id is None and parsed.identifier == ("phone", "+358401234567")


@pytest.mark.parametrize(("payload", "reason"), [
    ({"collected_at": "yesterday"}, "collected_at is not an ISO-8601 time"),
    ({"collected_at": 1764000000}, "collected_at is not an ISO-8601 time"),
    ({"purpose": ""}, "needs purpose"),
    ({"allowed": "yes"}, "needs purpose"),
])
def test_a_malformed_change_is_refused_with_its_reason(payload, reason):
    with pytest.raises(InvalidMessage, match=reason):
        parse_consent_change(change(payload))


def test_a_change_naming_no_subject_is_refused():
    with pytest.raises(InvalidMessage, match="names a profile_id or an identifier"):
        parse_consent_change(change(profile_id=None))
