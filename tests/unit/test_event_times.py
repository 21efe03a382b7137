"""Times taken from messages: loaded in UTC, refused when they have no UTC form, and an
event's time (Segment's after its clock-skew correction) only between 2000-01-01 and a day
after now."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import orjson
import pytest
from marshmallow import ValidationError

from services.common.envelope import InvalidEnvelope, decode, new_envelope
from services.identity.channels import CallEventSchema, SegmentMessageSchema, from_segment

NO_UTC_FORM = ["0001-01-01T00:00:00+02:00", "9999-12-31T23:00:00-05:00"]


def iso(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


def track(**times) -> dict:
    return {"type": "track", "userId": "u-1", "event": "Product Viewed", **times}


@pytest.mark.parametrize("field", ["timestamp", "originalTimestamp", "sentAt"])
@pytest.mark.parametrize("value", NO_UTC_FORM)
def test_a_segment_time_without_a_utc_form_is_a_field_error(field, value):
    with pytest.raises(ValidationError) as refused:
        SegmentMessageSchema().load(track(**{field: value}))
    assert "no UTC form" in refused.value.messages[field][0]


@pytest.mark.parametrize("times", [
    {"timestamp": "1999-12-31T23:59:59Z"},
    {"originalTimestamp": "1970-01-01T00:00:00Z"},
    {"timestamp": iso(datetime.now(UTC) + timedelta(days=2))},
    # the brief's case: a sentAt of year 1 once shifted the event into year 4050
    {"timestamp": "2024-05-01T10:00:00Z", "sentAt": "0001-01-01T00:00:00Z"},
    {"timestamp": "2024-05-01T10:00:00Z", "sentAt": "9999-12-31T00:00:00Z"},
])
def test_an_event_time_outside_2000_to_a_day_ahead_is_refused_naming_the_window(times):
    with pytest.raises(ValidationError) as refused:
        SegmentMessageSchema().load(track(**times))
    [reason] = next(iter(refused.value.messages.values()))
    assert "between 2000-01-01T00:00:00Z and one day after now" in reason


def test_a_client_clock_days_ahead_is_corrected_by_sent_at_not_refused():
    ahead = datetime.now(UTC) + timedelta(days=30)
    loaded = SegmentMessageSchema().load(track(timestamp=iso(ahead - timedelta(minutes=5)),
                                               sentAt=iso(ahead)))
    occurred = from_segment(loaded).envelope.occurred_at
    assert abs(occurred - (datetime.now(UTC) - timedelta(minutes=5))) < timedelta(seconds=30)


def test_segment_times_are_loaded_in_utc():
    loaded = SegmentMessageSchema().load(track(timestamp="2024-05-01T12:00:00+03:00"))
    assert loaded["timestamp"] == datetime(2024, 5, 1, 9, tzinfo=UTC)
    assert loaded["timestamp"].utcoffset() == timedelta(0)


@pytest.mark.parametrize("value", [*NO_UTC_FORM, "1999-12-31T23:59:59Z", "2999-01-01T00:00:00Z"])
def test_a_call_time_outside_the_window_is_a_field_error(value):
    with pytest.raises(ValidationError) as refused:
        CallEventSchema().load({"call_id": "c-1", "event": "ended",
                                "caller_number": "0401234567", "timestamp": value})
    assert "timestamp" in refused.value.messages


def test_an_envelope_holds_its_times_in_utc_so_serialising_only_formats():
    helsinki = timezone(timedelta(hours=2))
    envelope = new_envelope("Page Viewed", "web",
                            occurred_at=datetime(2026, 1, 1, 0, 30, tzinfo=helsinki))
    assert envelope.occurred_at.tzinfo is UTC
    assert b'"occurred_at":"2025-12-31T22:30:00Z"' in envelope.to_bytes()


@pytest.mark.parametrize("value", NO_UTC_FORM)
def test_an_envelope_time_without_a_utc_form_is_refused_at_decode(value):
    data = new_envelope("Page Viewed", "web").to_dict()
    data["occurred_at"] = value
    with pytest.raises(InvalidEnvelope, match="occurred_at"):
        decode(orjson.dumps(data))
