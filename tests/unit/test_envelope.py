from datetime import UTC, datetime

import orjson
import pytest

from services.common.envelope import InvalidEnvelope, decode, derived_message_id, new_envelope


def test_envelope_round_trips_through_its_wire_form():
    original = new_envelope("Order Completed", "web", identifiers={"email": "a@example.com"},
                            payload={"order_id": "12345", "total": 59.9})
    decoded = decode(original.to_bytes())
    assert decoded == original


def test_resolved_envelope_carries_the_profile_id():
    resolved = new_envelope("Page Viewed", "web").resolved_to("p-1")
    assert decode(resolved.to_bytes()).profile_id == "p-1"


@pytest.mark.parametrize("raw, reason", [
    (b"not json", "not JSON"),
    (b"[1, 2]", "must be a JSON object"),
    (b"{}", "message_id"),
])
def test_undecodable_bytes_are_refused_with_the_reason(raw, reason):
    with pytest.raises(InvalidEnvelope, match=reason):
        decode(raw)


def valid_dict(**changes):
    data = new_envelope("Page Viewed", "web").to_dict()
    data.update(changes)
    return data


def test_unknown_channel_is_refused():
    with pytest.raises(InvalidEnvelope, match="channel"):
        decode(orjson.dumps(valid_dict(channel="fax")))


def test_unknown_identifier_type_is_refused():
    with pytest.raises(InvalidEnvelope, match="identifiers"):
        decode(orjson.dumps(valid_dict(identifiers={"shoe_size": "44"})))


def test_timestamp_without_zone_is_read_as_utc():
    envelope = decode(orjson.dumps(valid_dict(occurred_at="2026-11-27T10:00:00")))
    assert envelope.occurred_at == datetime(2026, 11, 27, 10, tzinfo=UTC)


def test_fields_from_a_newer_schema_version_are_ignored_not_fatal():
    envelope = decode(orjson.dumps(valid_dict(schema_version=2, trace_parent="00-abc")))
    assert envelope.schema_version == 2


def test_derived_ids_are_deterministic_so_redelivery_emits_the_same_message():
    assert derived_message_id("m-1", "resolve") == derived_message_id("m-1", "resolve")
    assert derived_message_id("m-1", "resolve") != derived_message_id("m-2", "resolve")


def test_an_envelope_serialises_to_the_bytes_of_its_dict_form():
    envelope = new_envelope("Order Completed", "store", identifiers={"email": "a@example.com"},
                            payload={"items": [{"sku": "A1", "price": 9.5}], "note": None,
                                     "at": datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)})
    assert envelope.to_bytes() == orjson.dumps(envelope.to_dict())
    assert decode(envelope.to_bytes()).payload["items"] == [{"sku": "A1", "price": 9.5}]
