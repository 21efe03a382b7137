import datetime
import json
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.common.identifiers import (
    IDENTIFIER_TYPES,
    SENSITIVE_TYPES,
    InvalidIdentifier,
    main,
    normalise,
)

REPO_ROOT = Path(__file__).resolve().parents[2]

HETU_CHECK_CHARACTERS = "0123456789ABCDEFHJKLMNPRSTUVWXY"
CENTURY_SIGNS = {
    "+": 1800,
    "-": 1900, "Y": 1900, "X": 1900, "W": 1900, "V": 1900, "U": 1900,
    "A": 2000, "B": 2000, "C": 2000, "D": 2000, "E": 2000, "F": 2000,
}


def make_hetu(day: int, month: int, yy: int, sign: str, individual: int) -> str:
    """Build a hetu with the correct check character (DDMMYYNNN mod 31)."""
    number = f"{day:02d}{month:02d}{yy:02d}{individual:03d}"
    check = HETU_CHECK_CHARACTERS[int(number) % 31]
    return f"{day:02d}{month:02d}{yy:02d}{sign}{individual:03d}{check}"


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "services.common.identifiers", *args],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=60,
    )


def assert_invalid(type_: str, value, reason_contains: str = "", **kwargs) -> InvalidIdentifier:
    with pytest.raises(InvalidIdentifier) as info:
        normalise(type_, value, **kwargs)
    assert info.value.type == type_
    assert reason_contains in info.value.reason
    return info.value


# --- module constants and the exception --------------------------------------------------------

def test_all_supported_types_are_declared_in_order():
    assert IDENTIFIER_TYPES == (
        "email", "phone", "user_id", "anonymous_id", "device_id", "twitter_id",
        "twitter_handle", "facebook_id", "instagram_id", "instagram_handle", "hetu",
        "business_id",
    )


def test_only_hetu_is_sensitive():
    assert SENSITIVE_TYPES == frozenset({"hetu"})
    assert SENSITIVE_TYPES <= set(IDENTIFIER_TYPES)


def test_invalid_identifier_is_a_value_error_with_type_and_reason():
    error = assert_invalid("phone", "12")
    assert isinstance(error, ValueError)
    assert error.reason == "not a valid Finnish phone number"
    assert str(error) == "invalid phone: not a valid Finnish phone number"


def test_invalid_identifier_survives_pickling():
    error = pickle.loads(pickle.dumps(InvalidIdentifier("email", "bad")))
    assert (error.type, error.reason) == ("email", "bad")


def test_error_message_never_contains_the_rejected_hetu():
    error = assert_invalid("hetu", "131052-308U")
    assert "131052" not in str(error)
    assert "131052" not in repr(error)


# --- generic input checks ------------------------------------------------------------------

def test_unknown_type_is_rejected():
    error = assert_invalid("passport", "X1234567")
    assert error.reason == "unknown identifier type"


def test_non_string_type_is_reported_as_unknown():
    with pytest.raises(InvalidIdentifier, match="unknown identifier type"):
        normalise(None, "x")  # type: ignore[arg-type]


@pytest.mark.parametrize("type_", IDENTIFIER_TYPES)
@pytest.mark.parametrize("value", ["", "   ", "\t\n"])
def test_empty_value_is_rejected_for_every_type(type_, value):
    assert_invalid(type_, value, "empty")


@pytest.mark.parametrize("type_", IDENTIFIER_TYPES)
@pytest.mark.parametrize("value", [None, 401234567, b"user-1", ["a"]])
def test_non_string_value_is_rejected_for_every_type(type_, value):
    assert_invalid(type_, value, "must be a string")


# --- email -----------------------------------------------------------------------------------

@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("matti.meikalainen@example.com", "matti.meikalainen@example.com"),
        ("Matti.Meikalainen@Example.COM", "matti.meikalainen@example.com"),
        ("  matti@example.fi \n", "matti@example.fi"),
        ("MATTI+NEWS@EXAMPLE.FI", "matti+news@example.fi"),
        ("Äiti@Esimerkki.fi", "äiti@esimerkki.fi"),
    ],
)
def test_email_is_lower_cased_entirely_and_stripped(raw, expected):
    assert normalise("email", raw) == expected


@pytest.mark.parametrize(
    "raw",
    [
        "matti",
        "matti@",
        "@example.com",
        "matti@@example.com",
        "matti@example",
        "matti meikalainen@example.com",
        "matti@exa mple.com",
        "matti..m@example.com",
    ],
)
def test_invalid_email_is_rejected(raw):
    assert_invalid("email", raw, "not a valid email address")


def test_email_normalisation_is_idempotent():
    once = normalise("email", " Matti@Example.COM ")
    assert normalise("email", once) == once


# --- phone -----------------------------------------------------------------------------------

@pytest.mark.parametrize(
    "raw",
    [
        "+358 40 123 4567",
        "040 123 4567",
        "0401234567",
        "+358401234567",
        "00358401234567",
        "00358 40 123 4567",
        "040-123 4567",
        "(040) 123 4567",
        "  +358 (0)40 123 4567  ",
    ],
)
def test_finnish_mobile_in_any_common_writing_becomes_e164(raw):
    assert normalise("phone", raw) == "+358401234567"


def test_finnish_mobile_written_locally_becomes_e164():
    assert normalise("phone", "050 765 4321") == "+358507654321"


@pytest.mark.parametrize(
    "raw",
    ["09 1234 5678", "091234 5678", "+358 9 1234 5678", "003589 12345678", "+35891234 5678"],
)
def test_helsinki_landline_with_or_without_country_code_becomes_e164(raw):
    assert normalise("phone", raw) == "+358912345678"


def test_foreign_number_with_country_code_is_accepted_under_the_finnish_default():
    assert normalise("phone", "+46 70 123 45 67") == "+46701234567"


def test_swedish_number_written_locally_needs_region_se():
    assert normalise("phone", "070-123 45 67", region="SE") == "+46701234567"


def test_region_is_case_insensitive():
    assert normalise("phone", "070-123 45 67", region="se") == "+46701234567"


def test_unknown_region_is_rejected_for_a_local_number():
    assert_invalid("phone", "040 123 4567", "unknown region 'XX'", region="XX")


def test_invalid_number_with_another_country_code_is_not_called_finnish():
    assert_invalid("phone", "+46 70 12", "not a valid phone number for country code +46")


def test_number_with_an_unassigned_country_code_is_rejected():
    # phonenumbers reads "+999 1234 5678" oddly (as +1 2345678); either way it is rejected.
    assert_invalid("phone", "+999 1234 5678")
    assert_invalid("phone", "+0 123 456", "unknown country calling code")


@pytest.mark.parametrize(
    "raw",
    ["abcdef", "puhelin", "12", "040", "112", "+358 12", "+358 00 000 0000", "+999 1234 5678"],
)
def test_invalid_or_too_short_phone_number_is_rejected(raw):
    assert_invalid("phone", raw)


def test_invalid_finnish_number_reason_names_finland():
    assert_invalid("phone", "+358 12", "not a valid Finnish phone number")


def test_invalid_number_reason_names_the_region_it_was_read_in():
    assert_invalid("phone", "070 12", "region SE", region="SE")


def test_phone_number_with_keypad_letters_is_rejected_not_converted():
    assert_invalid("phone", "040 ABC 4567", "must not contain letters")


@pytest.mark.parametrize("raw", ["040 123 4567 ext. 12", "+358401234567;ext=12", "0401234567#12"])
def test_phone_number_with_an_extension_is_rejected(raw):
    assert_invalid("phone", raw)


finnish_mobile_numbers = st.builds(
    lambda prefix, rest: prefix + rest,
    st.sampled_from(["40", "41", "42", "43", "44", "45", "46", "47", "48", "50"]),
    st.text(alphabet="0123456789", min_size=4, max_size=8),
)
written_forms = st.sampled_from(
    ["0{n}", "+358{n}", "00358{n}", "+358 {spaced}", "0{spaced}", "00358 {spaced}", "0{dashed}"]
)


@given(national=finnish_mobile_numbers, form=written_forms)
def test_normalising_a_finnish_mobile_number_is_idempotent(national, form):
    spaced = f"{national[:2]} {national[2:5]} {national[5:]}".strip()
    dashed = f"{national[:2]}-{national[2:]}"
    raw = form.format(n=national, spaced=spaced, dashed=dashed)
    once = normalise("phone", raw)
    assert once == "+358" + national
    assert normalise("phone", once) == once


# --- hetu ------------------------------------------------------------------------------------

KNOWN_VALID_HETUS = [
    "131052-308T",
    "010594Y9032", "010594Y9021",
    "020594X903P", "020594X902N",
    "030594W903B", "030694W9024",
    "040594V9030", "040594V902Y",
    "050594U903M", "050594U902L",
    "010516B903X", "010516B902W",
    "020516C903K", "020516C902J",
    "030516D9037", "030516D9026",
    # Worked out with make_hetu: these are the right check characters for these dates.
    "040516E903V", "040516E902U",
    "050516F903H", "050516F902F",
]


@pytest.mark.parametrize("code", KNOWN_VALID_HETUS)
def test_known_valid_hetu_is_accepted_unchanged(code):
    assert normalise("hetu", code) == code


@pytest.mark.parametrize("code", KNOWN_VALID_HETUS)
def test_known_valid_hetu_check_character_matches_the_mod_31_rule(code):
    day, month, yy, sign, individual = code[:2], code[2:4], code[4:6], code[6], code[7:10]
    assert make_hetu(int(day), int(month), int(yy), sign, int(individual)) == code


def test_known_valid_hetus_cover_every_century_sign_except_the_old_ones():
    assert {code[6] for code in KNOWN_VALID_HETUS} == set(CENTURY_SIGNS) - {"+", "A"}


@pytest.mark.parametrize("sign", sorted(CENTURY_SIGNS))
def test_hetu_with_every_century_sign_is_accepted(sign):
    code = make_hetu(15, 6, 88, sign, 123)
    assert normalise("hetu", code) == code


@pytest.mark.parametrize("sign", sorted(CENTURY_SIGNS))
def test_temporary_hetu_with_individual_number_900_to_999_is_accepted(sign):
    for individual in (900, 950, 999):
        code = make_hetu(15, 6, 88, sign, individual)
        assert normalise("hetu", code) == code


def test_lower_case_hetu_is_upper_cased():
    assert normalise("hetu", "131052-308t") == "131052-308T"
    assert normalise("hetu", "010516b903x") == "010516B903X"
    assert normalise("hetu", "  040594v902y ") == "040594V902Y"


@pytest.mark.parametrize(
    "code",
    [
        "131052-308U",
        "010594Y9033",
        "010516B903Y",
        "050516F9030",
        "050516F902Y",
    ],
)
def test_hetu_with_a_bad_check_character_is_rejected(code):
    assert_invalid("hetu", code, "check character does not match")


@pytest.mark.parametrize("code", ["040516E903H", "040516E902G", "050516F9030", "050516F902Y"])
def test_circulated_examples_with_wrong_check_characters_are_rejected(code):
    # These were passed around as valid E/F examples; the right ones are in KNOWN_VALID_HETUS.
    # "G" is never a check character (G, I, O, Q and Z are left out), so that one is malformed.
    assert_invalid("hetu", code)


def test_century_sign_does_not_enter_the_check_character():
    # 010594Y9032 and 010594-9032 are the same birth date, so both are well-formed.
    assert normalise("hetu", "010594-9032") == "010594-9032"


@pytest.mark.parametrize(
    ("day", "month", "yy", "sign"),
    [
        (31, 2, 52, "-"),
        (30, 2, 0, "A"),
        (29, 2, 0, "-"),  # 1900 was not a leap year
        (29, 2, 23, "B"),
        (0, 1, 90, "-"),
        (1, 13, 90, "Y"),
        (32, 1, 90, "U"),
        (1, 0, 16, "F"),
    ],
)
def test_hetu_with_an_impossible_date_is_rejected(day, month, yy, sign):
    assert_invalid("hetu", make_hetu(day, month, yy, sign, 123), "invalid date")


def test_hetu_on_a_leap_day_of_a_leap_year_is_accepted():
    code = make_hetu(29, 2, 0, "A", 123)  # 2000 was a leap year
    assert normalise("hetu", code) == code


def test_hetu_with_individual_number_000_or_001_is_rejected():
    for individual in (0, 1):
        assert_invalid("hetu", make_hetu(1, 1, 90, "-", individual), "individual number")


@pytest.mark.parametrize(
    "raw",
    ["131052308T", "131052-308", "131052Z308T", "131052-308TT", "13105-2308T", "131052 308T",
     "1310520-308T", "ABCDEF-GHIJ", "131052-308G", "131052-308I"],
)
def test_hetu_in_a_wrong_format_is_rejected(raw):
    assert_invalid("hetu", raw, "wrong format")


def test_hetu_typed_with_full_width_digits_becomes_ascii():
    assert normalise("hetu", "１３１０５２-308T") == "131052-308T"


@given(
    date=st.dates(min_value=datetime.date(1800, 1, 1), max_value=datetime.date(2099, 12, 31)),
    individual=st.integers(min_value=2, max_value=999),
    data=st.data(),
)
def test_any_hetu_with_a_correct_check_character_is_accepted_in_either_case(
    date, individual, data
):
    sign = data.draw(st.sampled_from(
        [s for s, century in CENTURY_SIGNS.items() if century == date.year // 100 * 100]
    ))
    code = make_hetu(date.day, date.month, date.year % 100, sign, individual)
    assert normalise("hetu", code) == code
    assert normalise("hetu", code.lower()) == code


# --- business id -----------------------------------------------------------------------------

@pytest.mark.parametrize("raw", ["0737546-2", "07375462", " 0737546-2 ", "FI07375462"])
def test_business_id_is_formatted_with_a_dash(raw):
    assert normalise("business_id", raw) == "0737546-2"


def test_another_business_id_is_formatted_with_a_dash():
    assert normalise("business_id", "20774740") == "2077474-0"


@pytest.mark.parametrize("raw", ["0737546-3", "2077474-1"])
def test_business_id_with_a_bad_check_digit_is_rejected(raw):
    assert_invalid("business_id", raw, "check digit does not match")


@pytest.mark.parametrize("raw", ["737546-2", "0737546-22", "07375A6-2", "Y-tunnus"])
def test_business_id_in_a_wrong_format_is_rejected(raw):
    assert_invalid("business_id", raw, "expected 1234567-8")


# --- Twitter / Facebook ----------------------------------------------------------------------

@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("@Muisti_CDP", "muisti_cdp"),
        ("muisti_cdp", "muisti_cdp"),
        ("  @jack ", "jack"),
        ("A", "a"),
        ("@abcdefghij12345", "abcdefghij12345"),
    ],
)
def test_twitter_handle_loses_the_at_sign_and_is_lower_cased(raw, expected):
    assert normalise("twitter_handle", raw) == expected


@pytest.mark.parametrize(
    "raw",
    [
        "@",
        "@@jack",
        "abcdefghij123456",  # 16 characters
        "jack.smith",
        "jack-smith",
        "jäck",
        "\u212aelvin",  # Kelvin sign lower-cases to an ASCII "k"
        "@ jack",
    ],
)
def test_invalid_twitter_handle_is_rejected(raw):
    assert_invalid("twitter_handle", raw, "1-15 letters")


@pytest.mark.parametrize(
    ("raw", "expected"),
    [("@Kahvi.Kuppi_", "kahvi.kuppi_"), ("anna.v", "anna.v"), ("a" * 30, "a" * 30)],
)
def test_instagram_handle_loses_the_at_sign_and_is_lower_cased(raw, expected):
    assert normalise("instagram_handle", raw) == expected


@pytest.mark.parametrize("raw", ["@", "a" * 31, "anna-v", "anna v", "äiti", "\u212aelvin"])
def test_invalid_instagram_handle_is_rejected(raw):
    assert_invalid("instagram_handle", raw, "1-30 letters")


@pytest.mark.parametrize("type_", ["twitter_id", "facebook_id", "instagram_id"])
@pytest.mark.parametrize(
    ("raw", "expected"),
    [("12", "12"), (" 1234567890123456789 ", "1234567890123456789"), ("0", "0"),
     ("1" * 25, "1" * 25)],
)
def test_numeric_social_ids_are_kept_as_digits(type_, raw, expected):
    assert normalise(type_, raw) == expected


@pytest.mark.parametrize("type_", ["twitter_id", "facebook_id", "instagram_id"])
@pytest.mark.parametrize("raw", ["1" * 26, "12a", "-12", "1.0", "12 34", "١٢٣", "１２３"])
def test_numeric_social_id_with_anything_but_ascii_digits_or_too_long_is_rejected(type_, raw):
    assert_invalid(type_, raw, "1-25 digits")


# --- opaque ids ------------------------------------------------------------------------------

OPAQUE_TYPES = ["user_id", "anonymous_id", "device_id"]


@pytest.mark.parametrize("type_", OPAQUE_TYPES)
def test_opaque_id_keeps_its_case_and_loses_surrounding_whitespace(type_):
    assert normalise(type_, "  AbC-123_Käyttäjä \n") == "AbC-123_Käyttäjä"


@pytest.mark.parametrize("type_", OPAQUE_TYPES)
def test_opaque_id_of_exactly_256_characters_is_accepted(type_):
    assert normalise(type_, "x" * 256) == "x" * 256


@pytest.mark.parametrize("type_", OPAQUE_TYPES)
def test_opaque_id_longer_than_256_characters_is_rejected(type_):
    assert_invalid(type_, "x" * 257, "longer than 256")


@pytest.mark.parametrize("type_", OPAQUE_TYPES)
@pytest.mark.parametrize("raw", ["user\x00id", "user\nid", "user\tid", "user\x7fid", "a\x85b",
                                 "a\ud800b"])
def test_opaque_id_with_control_characters_inside_is_rejected(type_, raw):
    assert_invalid(type_, raw, "control characters")


def test_opaque_id_may_contain_inner_spaces_and_any_printable_text():
    assert normalise("device_id", "iPhone 15 (Matti)") == "iPhone 15 (Matti)"


# --- command line ----------------------------------------------------------------------------

def test_cli_prints_the_normalised_value_as_json_and_exits_zero():
    result = run_cli("phone", "040 123 4567")
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("\n") == 1
    assert json.loads(result.stdout) == {"type": "phone", "value": "+358401234567", "valid": True}
    assert result.stderr == ""


def test_cli_uses_region_se_for_a_swedish_number():
    result = run_cli("phone", "070-123 45 67", "--region", "SE")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["value"] == "+46701234567"


def test_cli_upper_cases_the_region():
    result = run_cli("phone", "070-123 45 67", "--region", "se")
    assert json.loads(result.stdout)["value"] == "+46701234567"


def test_cli_reports_an_invalid_value_as_json_with_the_input_and_exits_two():
    result = run_cli("phone", "12 34")
    assert result.returncode == 2
    assert json.loads(result.stdout) == {
        "type": "phone", "value": "12 34", "valid": False,
        "reason": "not a valid Finnish phone number",
    }
    assert "not a valid Finnish phone number" in result.stderr


def test_cli_normalises_a_hetu_with_a_new_century_sign():
    result = run_cli("hetu", "010594y9032")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {"type": "hetu", "value": "010594Y9032", "valid": True}


def test_cli_rejects_an_unknown_type_with_a_usage_error():
    result = run_cli("passport", "X1234567")
    assert result.returncode == 2
    assert result.stdout == ""
    assert "invalid choice" in result.stderr


def test_main_returns_zero_and_prints_one_json_line(capsys):
    assert main(["email", " Matti@Example.COM "]) == 0
    out = capsys.readouterr().out
    assert json.loads(out) == {"type": "email", "value": "matti@example.com", "valid": True}


def test_main_returns_two_for_an_invalid_value(capsys):
    assert main(["business_id", "0737546-3"]) == 2
    captured = capsys.readouterr()
    payload = json.loads(captured.out)
    assert payload["valid"] is False
    assert payload["value"] == "0737546-3"
    assert payload["reason"] in captured.err


def test_main_exits_two_for_an_unknown_type():
    with pytest.raises(SystemExit) as info:
        main(["passport", "X1234567"])
    assert info.value.code == 2
