import pytest
from hypothesis import given
from hypothesis import strategies as st
from stdnum import luhn

from services.common.redaction import REDACTED_CARD, redact_card_numbers, redact_in

VISA = "4111111111111111"
MASTERCARD = "5555555555554444"
AMEX = "378282246310005"  # 15 digits
DINERS = "30569309025904"  # 14 digits
VISA_13 = "4222222222222"
VISA_19 = "4111111111111111110"


def with_check_digit(body: str) -> str:
    return body + luhn.calc_check_digit(body)


def grouped(number: str, separator: str, size: int = 4) -> str:
    return separator.join(number[i:i + size] for i in range(0, len(number), size))


@pytest.mark.parametrize("card", [VISA, MASTERCARD, AMEX, DINERS, VISA_13, VISA_19])
def test_card_number_written_as_one_run_is_redacted(card):
    assert redact_card_numbers(f"my card is {card} thanks") == (
        f"my card is {REDACTED_CARD} thanks", 1,
    )


@pytest.mark.parametrize("separator", [" ", "-"])
def test_card_number_in_groups_of_four_is_redacted(separator):
    text = f"card: {grouped(VISA, separator)}, exp 12/27"
    assert redact_card_numbers(text) == (f"card: {REDACTED_CARD}, exp 12/27", 1)


def test_amex_in_its_own_4_6_5_grouping_is_redacted():
    assert redact_card_numbers("3782 822463 10005") == (REDACTED_CARD, 1)


def test_card_number_with_mixed_separators_is_redacted():
    assert redact_card_numbers("4111-1111 1111-1111") == (REDACTED_CARD, 1)


def test_card_number_alone_is_redacted():
    assert redact_card_numbers(VISA) == (REDACTED_CARD, 1)


def test_card_number_glued_to_letters_is_still_redacted():
    assert redact_card_numbers(f"card{VISA}end") == (f"card{REDACTED_CARD}end", 1)


def test_several_card_numbers_are_all_redacted_and_counted():
    text = f"old {VISA}, new {grouped(MASTERCARD, ' ')}; amex {AMEX}"
    redacted, count = redact_card_numbers(text)
    assert count == 3
    assert redacted == f"old {REDACTED_CARD}, new {REDACTED_CARD}; amex {REDACTED_CARD}"


def test_text_without_digits_is_returned_unchanged():
    assert redact_card_numbers("Hei, tilaus saapui perille!") == ("Hei, tilaus saapui perille!", 0)


def test_empty_text_is_returned_unchanged():
    assert redact_card_numbers("") == ("", 0)


@pytest.mark.parametrize(
    "text",
    [
        "order 4111111111111112",  # one digit off: fails Luhn
        "order 4111 1111 1111 1112",
        "tilausnumero 1234567890123",
        "call +358 40 123 4567 or 040 765 4321",
        "reference 12345678901234567890123456",
    ],
)
def test_digit_runs_that_fail_luhn_are_left_alone(text):
    assert redact_card_numbers(text) == (text, 0)


def test_twelve_digit_luhn_valid_number_is_too_short_to_be_a_card():
    number = with_check_digit("41111111111")
    assert len(number) == 12
    assert redact_card_numbers(number) == (number, 0)


def test_twenty_five_digit_run_is_not_a_card_even_if_it_contains_one():
    text = "IBAN-ish 123456789" + VISA
    assert len(text.split()[-1]) == 25
    assert redact_card_numbers(text) == (text, 0)


def test_twenty_digit_luhn_valid_run_is_not_a_card():
    number = with_check_digit("4" * 19)
    assert redact_card_numbers(number) == (number, 0)


def test_card_followed_by_more_digit_groups_is_still_redacted():
    # The expiry month joins the run of groups; the card inside it must still go.
    redacted, count = redact_card_numbers(f"{grouped(VISA, ' ')} 12/27")
    assert count == 1
    assert "1111" not in redacted


def test_card_preceded_by_another_digit_group_is_still_redacted():
    redacted, count = redact_card_numbers(f"qty 3 {grouped(VISA, ' ')}")
    assert count == 1
    assert redacted.endswith(REDACTED_CARD)
    assert "1111" not in redacted


def test_double_space_or_other_separators_split_runs():
    # Only single spaces and hyphens join groups; these halves are 8 digits each.
    for text in ["4111 1111  1111 1111", "4111.1111.1111.1111", "4111/1111/1111/1111"]:
        assert redact_card_numbers(text) == (text, 0)


def test_non_string_text_is_a_type_error():
    with pytest.raises(TypeError):
        redact_card_numbers(4111111111111111)  # type: ignore[arg-type]


cards_16 = st.text(alphabet="0123456789", min_size=15, max_size=15).map(with_check_digit)
card_formats = st.sampled_from(["plain", "spaces", "hyphens"])
surrounding_text = st.text(
    alphabet=st.sampled_from("abc XYZ.,:;-/0123456789\nåä"), max_size=30
)


@given(card=cards_16, card_format=card_formats, before=surrounding_text, after=surrounding_text)
def test_redaction_never_leaves_a_luhn_valid_16_digit_number_in_the_output(
    card, card_format, before, after
):
    written = {"plain": card, "spaces": grouped(card, " "), "hyphens": grouped(card, "-")}
    text = f"{before} {written[card_format]} {after}"
    redacted, count = redact_card_numbers(text)
    assert count >= 1
    assert written[card_format] not in redacted
    # Whatever stayed behind is not a card number either.
    assert redact_card_numbers(redacted) == (redacted, 0)


@given(text=st.text(alphabet=st.sampled_from("0123456789 -ab"), max_size=80))
def test_redacting_twice_finds_nothing_new(text):
    once, _ = redact_card_numbers(text)
    assert redact_card_numbers(once) == (once, 0)


@given(text=st.text(alphabet=st.sampled_from("abc 123-.,"), max_size=60))
def test_text_without_long_digit_runs_is_never_changed(text):
    assert redact_card_numbers(text) == (text, 0)


# --- redact_in -------------------------------------------------------------------------------

def test_nested_structure_is_redacted_everywhere_and_counted():
    event = {
        "type": "message",
        "text": f"pay with {VISA}",
        "context": {"notes": [f"card {grouped(MASTERCARD, '-')}", "no card here", 42, None]},
        "tags": (f"{AMEX}", "vip"),
        "amount": 12.5,
        "consented": True,
    }
    redacted, count = redact_in(event)
    assert count == 3
    assert redacted == {
        "type": "message",
        "text": f"pay with {REDACTED_CARD}",
        "context": {"notes": [f"card {REDACTED_CARD}", "no card here", 42, None]},
        "tags": (REDACTED_CARD, "vip"),
        "amount": 12.5,
        "consented": True,
    }


def test_redact_in_does_not_modify_its_input():
    event = {"notes": [f"card {VISA}"], "text": VISA}
    redact_in(event)
    assert event == {"notes": [f"card {VISA}"], "text": VISA}


def test_redact_in_returns_new_containers():
    event = {"notes": ["nothing to see"]}
    redacted, count = redact_in(event)
    assert count == 0
    assert redacted == event
    assert redacted is not event
    assert redacted["notes"] is not event["notes"]


def test_redact_in_accepts_a_bare_string():
    assert redact_in(f"card {VISA}") == (f"card {REDACTED_CARD}", 1)


def test_redact_in_keeps_dict_keys_and_non_string_leaves():
    event = {VISA: 4111111111111111}
    assert redact_in(event) == ({VISA: 4111111111111111}, 0)


def test_redact_in_counts_repeated_cards_separately():
    assert redact_in([VISA, VISA, [VISA]]) == ([REDACTED_CARD, REDACTED_CARD, [REDACTED_CARD]], 3)
