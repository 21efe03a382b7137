import base64
from datetime import UTC, datetime

import orjson
import pytest

from services.cli.deadletters import UnreadableLetter, parse, replay_plan, select


def letter_bytes(original: bytes, *, topic="cdp.events.web", offset=0, partition=0,
                 reason="invalid envelope: channel: bad", kind="invalid",
                 failed_at="2026-03-01T10:00:00+00:00") -> bytes:
    # the shape services.common.bus.ConsumerLoop._dead_letter writes
    return orjson.dumps({
        "source_topic": topic, "partition": partition, "offset": offset, "key": "user_id:1",
        "kind": kind, "reason": reason, "service": "identity", "group": "identity-graph",
        "failed_at": failed_at, "original_b64": base64.b64encode(original).decode()})


def envelope(message_id: str) -> bytes:
    return orjson.dumps({"message_id": message_id, "type": "Identify"})


def test_a_letter_gives_back_the_original_bytes_key_and_message_id():
    letter = parse(letter_bytes(envelope("m-1")))
    assert letter.original == envelope("m-1")
    assert letter.key == "user_id:1"
    assert letter.message_id == "m-1"
    assert letter.failed_at == datetime(2026, 3, 1, 10, tzinfo=UTC)


def test_an_original_that_is_not_json_is_identified_by_its_bytes():
    letter = parse(letter_bytes(b"\xff not json"))
    assert letter.message_id is None
    assert letter.identity.startswith("sha256:")


@pytest.mark.parametrize("value", [b"not json", b"{}", orjson.dumps({"source_topic": "x"}),
                                   letter_bytes(b"x").replace(b"original_b64", b"other")])
def test_records_that_are_not_dead_letters_are_refused(value):
    with pytest.raises(UnreadableLetter):
        parse(value)


def test_selection_filters_by_topic_reason_kind_and_time():
    letters = [parse(letter_bytes(envelope("a"), reason="Unknown purpose X")),
               parse(letter_bytes(envelope("b"), topic="cdp.events.phone")),
               parse(letter_bytes(envelope("c"), kind="handler_error",
                                  failed_at="2026-03-02T00:00:00+00:00"))]
    assert [x.message_id for x in select(letters, topic="cdp.events.web")] == ["a", "c"]
    assert [x.message_id for x in select(letters, reason_contains="unknown PURPOSE")] == ["a"]
    assert [x.message_id for x in select(letters, kind="handler_error")] == ["c"]
    since = datetime(2026, 3, 1, 12, tzinfo=UTC)
    assert [x.message_id for x in select(letters, since=since)] == ["c"]
    assert len(select(letters)) == 3


def test_replay_sends_each_message_once_in_its_original_order():
    letters = [parse(letter_bytes(envelope("late"), offset=9)),
               parse(letter_bytes(envelope("early"), offset=3)),
               parse(letter_bytes(envelope("late"), offset=9))]  # dead-lettered twice
    assert [x.message_id for x in replay_plan(letters)] == ["early", "late"]
