"""Ad-platform normalisation and hashing: every example the platforms publish, the edge cases
of each rule, the CLI, and properties (idempotent; the digest is of the normalised form)."""

import hashlib
import subprocess
import sys

import orjson
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from services.export.hashing import InvalidValue, main, normalise, normalise_and_hash, sha256_hex

# Meta, Conversions API "Customer Information Parameters": input, region, normalised, SHA-256
META_PUBLISHED = [
    ("em", "John_Smith@gmail.com", "FI", "john_smith@gmail.com",
     "62a14e44f765419d10fea99367361a727c12365e2520f32218d505ed9aa0f62f"),
    ("ph", "(650)555-1212", "US", "16505551212",
     "e323ec626319ca94ee8bff2e4c87cf613be6ea19919ed1364124e16807ab3176"),
    ("fn", "Mary", "FI", "mary",
     "6915771be1c5aa0c886870b6951b03d7eafc121fea0e80a5ea83beb7c449f4ec"),
    ("fn", "정", "FI", "정",
     "8fa8cd9c440be61d0151429310034083132b35975c4bea67fdd74158eb51db14"),
    ("fn", "Valéry", "FI", "valéry",
     "08e1996b5dd49e62a4b4c010d44e4345592a863bb9f8e3976219bac29417149c"),
    ("db", "2/16/1997", "FI", "19970216",
     "01acdbf6ec7b4f478a225f1a246e5d6767eeab1a7ffa17f025265b5b94f40f0c"),
    ("country", "United States", "FI", "us",
     "79adb2a2fce5c6ba215fe5f27f532d4e7edbac4b6a5e09e1ef3a08084a904621"),
]

# Meta's examples without digests: (field, input, normalised)
META_NORMALISED_EXAMPLES = [
    ("ln", "Mary", "mary"),  # "see First Name (fn) for examples"
    ("ln", "Valéry", "valéry"),
    ("ge", "f", "f"),
    ("ge", "m", "m"),
    ("ct", "Paris", "paris"),
    ("ct", "London", "london"),
    ("ct", "New York", "newyork"),
    ("st", "AZ", "az"),
    ("st", "CA", "ca"),
    ("zp", "94035", "94035"),  # U.S.
    ("zp", "1987", "1987"),  # Australia
    ("zp", "75018", "75018"),  # France
    ("zp", "M1 1AE", "m11ae"),  # UK
]

# Google, Data Manager API "Format user data" (Customer Match, Enhanced Conversions)
GOOGLE_NORMALISED_EXAMPLES = [
    ("email", "cloudy.sanfrancisco+shopping@gmail.com", "FI", "cloudysanfrancisco@gmail.com"),
    ("email", "user.name+NYC@Example.com", "FI", "user.name+nyc@example.com"),
    ("phone", "(800)555-0100", "US", "+18005550100"),
    ("country_code", "us", "FI", "US"),
]


@pytest.mark.parametrize(("field", "value", "region", "normalised", "digest"), META_PUBLISHED)
def test_meta_published_examples_normalise_and_hash_exactly(field, value, region, normalised,
                                                            digest):
    assert normalise_and_hash("meta", field, value, region) == (normalised, digest)


@pytest.mark.parametrize(("field", "value", "normalised"), META_NORMALISED_EXAMPLES)
def test_meta_published_examples_normalise_as_documented(field, value, normalised):
    assert normalise("meta", field, value) == normalised


@pytest.mark.parametrize(("field", "value", "region", "normalised"), GOOGLE_NORMALISED_EXAMPLES)
def test_google_published_examples_normalise_as_documented(field, value, region, normalised):
    assert normalise("google", field, value, region) == normalised


@pytest.mark.parametrize(("value", "expected"), [
    ("  Matti.Meikalainen@Example.FI ", "matti.meikalainen@example.fi"),
])
def test_meta_email_is_trimmed_and_lower_cased_only(value, expected):
    assert normalise("meta", "em", value) == expected


@pytest.mark.parametrize(("value", "region", "expected"), [
    ("040 123 4567", "FI", "358401234567"),  # national trunk zero dropped, country code added
    ("+358 40 123 4567", "FI", "358401234567"),
    ("00358401234567", "FI", "358401234567"),  # international prefix 00 dropped
    ("358401234567", "FI", "358401234567"),  # already normalised
    ("+44 844 412 4653", "FI", "448444124653"),
])
def test_meta_phone_is_digits_with_country_code_and_no_leading_zeros(value, region, expected):
    assert normalise("meta", "ph", value, region) == expected


@pytest.mark.parametrize(("value", "expected"), [
    ("19970216", "19970216"), ("1997-02-16", "19970216"), ("16.2.1997", "19970216"),
])
def test_meta_birth_date_becomes_yyyymmdd(value, expected):
    assert normalise("meta", "db", value) == expected


@pytest.mark.parametrize(("field", "value", "expected"), [
    ("ge", "Female", "f"), ("ge", " MALE ", "m"),
    ("st", "Arizona", "az"), ("st", "new york", "ny"), ("st", "Uusimaa", "uusimaa"),
    ("st", "Pohjois-Pohjanmaa", "pohjoispohjanmaa"),
    ("ct", "Saint-Étienne", "saintétienne"), ("ct", "Helsinki", "helsinki"),
    ("zp", "94035-1234", "94035"), ("zp", "00100", "00100"),
    ("country", "FI", "fi"), ("country", "Finland", "fi"), ("country", "FIN", "fi"),
    ("fn", "Anna-Liisa", "annaliisa"), ("ln", "O'Brien", "obrien"),
    ("fn", "Vale\u0301ry", "valéry"),  # decomposed accent composes: same hash as "Valéry"
    ("external_id", " Loyalty-0042 ", "loyalty-0042"),
])
def test_meta_field_edge_cases(field, value, expected):
    assert normalise("meta", field, value) == expected


@pytest.mark.parametrize(("field", "value", "expected"), [
    ("email", "Jane.Doe+News@GoogleMail.com", "janedoe@googlemail.com"),
    ("email", " jane doe@example.com ", "janedoe@example.com"),  # intermediate whitespace
    ("first_name", "Mrs. Jane", "jane"), ("first_name", "  Zoë ", "zoë"),
    ("last_name", "Doe Jr.", "doe"), ("last_name", "Pérez", "pérez"),
    ("country_code", "Finland", "FI"), ("postal_code", " wc2h 8lg ", "WC2H 8LG"),
    ("phone", "040 123 4567", "+358401234567"),
])
def test_google_field_edge_cases(field, value, expected):
    assert normalise("google", field, value) == expected


@pytest.mark.parametrize(("field", "value", "expected"), [
    ("last_name", "O'Brien", "o'brien"), ("first_name", "Anna-Liisa", "anna-liisa"),
    ("last_name", "St. John", "st. john")])
def test_google_names_keep_their_punctuation_as_googles_rule_asks_nothing_more(
        field, value, expected):
    # Data Manager API "Format user data", given_name / family_name: lower case, no prefix
    # or suffix, trimmed; unlike Meta's fn / ln, punctuation is not removed
    assert normalise("google", field, value) == expected


@pytest.mark.parametrize(("platform", "field", "value"), [
    ("meta", "em", "not-an-email"),
    ("meta", "ph", "12"),
    ("meta", "ph", "040 ABC 4567"),
    ("meta", "ph", "+358 40 123 4567 ext. 12"),
    ("meta", "db", "1899-12-31"),
    ("meta", "db", "2/30/1997"),
    ("meta", "db", "3000-01-01"),
    ("meta", "db", "16/2/1997"),  # slashes are month first, as in Meta's example
    ("meta", "ge", "x"),
    ("meta", "fn", "..."),
    ("meta", "country", "Atlantis"),
    ("meta", "zp", "#!"),
    ("google", "email", "a@b"),
    ("google", "phone", "123"),
    ("google", "country_code", "ZZ"),
    ("meta", "email", "x@example.com"),  # a Google field name asked of Meta
])
def test_values_that_cannot_match_are_refused(platform, field, value):
    with pytest.raises(InvalidValue) as error:
        normalise(platform, field, value)
    assert value not in str(error.value) or len(value) < 3  # reasons never quote the value


def test_cli_prints_compact_json_and_exits_0():
    out = subprocess.run(
        [sys.executable, "-m", "services.export.hashing", "--platform", "meta", "--field", "ph",
         "--region", "US", "(650)555-1212"], capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stderr
    assert out.stdout == ('{"normalised":"16505551212","sha256":'
                          '"e323ec626319ca94ee8bff2e4c87cf613be6ea19919ed1364124e16807ab3176"}\n')


def test_cli_exits_2_with_a_message_when_the_value_is_invalid():
    out = subprocess.run(
        [sys.executable, "-m", "services.export.hashing", "--platform", "meta", "--field", "ge",
         "unknown"], capture_output=True, text=True, check=False)
    assert out.returncode == 2
    assert out.stdout == ""
    assert "invalid ge" in out.stderr


def test_cli_uses_finland_as_the_default_phone_region(capsys):
    assert main(["--platform", "google", "--field", "phone", "040 123 4567"]) == 0
    assert orjson.loads(capsys.readouterr().out)["normalised"] == "+358401234567"


@pytest.mark.parametrize("argv", [
    ["--platform", "tiktok", "--field", "em", "x@example.com"],
    ["--platform", "meta", "--field", "shoe", "x"],
    ["--platform", "meta", "--field", "ph", "--region", "XX", "0401234567"],
    ["--platform", "meta", "--field", "em"],
])
def test_cli_usage_errors_exit_2(argv, capsys):
    assert main(argv) == 2
    assert capsys.readouterr().err


FIELDS = {"meta": ["em", "fn", "ln", "ge", "db", "ct", "st", "zp", "country", "external_id"],
          "google": ["email", "first_name", "last_name", "country_code", "postal_code"]}
PLATFORM_FIELDS = [(platform, field) for platform, names in FIELDS.items() for field in names]


@given(st.sampled_from(PLATFORM_FIELDS), st.text(max_size=40))
def test_normalising_twice_changes_nothing(platform_field, value):
    platform, field = platform_field
    try:
        once = normalise(platform, field, value)
    except InvalidValue:
        assume(False)
    assert normalise(platform, field, once) == once


@given(st.sampled_from(["FI", "SE", "US", "GB", "DE"]), st.integers(0, 10**6),
       st.sampled_from(["meta", "google"]))
def test_phone_normalising_twice_changes_nothing(region, offset, platform):
    import phonenumbers

    example = phonenumbers.example_number(region)
    national = str(example.national_number + offset)
    field = "ph" if platform == "meta" else "phone"
    try:
        once = normalise(platform, field, national, region)
    except InvalidValue:
        assume(False)
    assert normalise(platform, field, once, region) == once


@given(st.sampled_from(PLATFORM_FIELDS), st.text(min_size=1, max_size=40))
def test_the_digest_is_sha256_of_the_normalised_form(platform_field, value):
    platform, field = platform_field
    try:
        normalised, digest = normalise_and_hash(platform, field, value)
    except InvalidValue:
        assume(False)
    assert digest == hashlib.sha256(normalised.encode()).hexdigest() == sha256_hex(normalised)
