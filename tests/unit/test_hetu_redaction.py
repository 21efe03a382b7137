"""Hetus typed into free text (call notes, social messages) are masked before the text is
produced; lookalikes that are no valid hetu are kept."""

import pytest

from services.common.redaction import REDACTED_HETU, redact_hetus, redact_hetus_in
from services.identity.channels import from_call
from services.social import messages
from tests.support.hetus import in_memory_protector

HETU = "131052-308T"


@pytest.mark.parametrize("text, masked", [
    (f"asiakkaan hetu {HETU}, soita takaisin", "asiakkaan hetu [hetu], soita takaisin"),
    (HETU.lower(), REDACTED_HETU),
    (f"hetu:{HETU}.", "hetu:[hetu]."),
    (f"hetu{HETU}", f"hetu{REDACTED_HETU}"),  # typed without a space
    ("010594Y9032", REDACTED_HETU),  # a 2000s century sign of 2023
    ("010101-900R", REDACTED_HETU),  # a temporary individual number
    (f"{HETU} ja 220478-123H", "[hetu] ja [hetu]"),
])
def test_a_valid_hetu_in_text_is_masked(text, masked):
    assert redact_hetus(text) == (masked, masked.count(REDACTED_HETU))


@pytest.mark.parametrize("text", [
    "131052-308A",  # wrong check character
    "310299-123X",  # 31 February
    "order 123456-7890",  # an order number shaped like one
    f"1{HETU}",  # inside a longer number
    "131052-3081234",
    "tilaus 12.10.2052, puh 040-1234567",
    "",
])
def test_lookalikes_that_are_no_valid_hetu_are_kept(text):
    assert redact_hetus(text) == (text, 0)


def test_masking_is_idempotent_and_walks_nested_values_without_changing_the_input():
    event = {"notes": f"hetu {HETU}", "tags": [HETU, 42], "nested": {"deep": (HETU,)}}
    masked, count = redact_hetus_in(event)
    assert masked == {"notes": "hetu [hetu]", "tags": [REDACTED_HETU, 42],
                      "nested": {"deep": (REDACTED_HETU,)}}
    assert count == 3 and event["notes"] == f"hetu {HETU}"
    assert redact_hetus_in(masked) == (masked, 0)
    with pytest.raises(TypeError):
        redact_hetus(131052)  # type: ignore[arg-type]


def test_an_agents_call_notes_lose_the_hetu_the_caller_gave():
    converted = from_call({"call_id": "c-1", "event": "ended", "caller_number": "0401234567",
                           "notes": f"Soittaja antoi hetun {HETU} ja tilauksen 123456-7890"})
    assert converted.envelope.payload["notes"] == (
        "Soittaja antoi hetun [hetu] ja tilauksen 123456-7890")


def test_a_social_message_text_loses_the_hetu_its_author_posted():
    message = messages.from_collector({
        "platform": "trustpilot", "message_id": "r-hetu", "kind": "review",
        "author": {"name": f"Anna {HETU}"}, "text": f"Minun hetu on {HETU}, auttakaa!",
        "identifiers": {"email": "anna@example.com"}}, in_memory_protector(b"unit-test-key"))
    payload = messages.to_envelope(message).envelope.payload
    assert payload["text"] == "Minun hetu on [hetu], auttakaa!"
    assert payload["author"]["name"] == "Anna [hetu]"
