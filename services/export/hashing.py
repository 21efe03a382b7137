"""Normalisation and SHA-256 hashing of customer data the way ad platforms match it.

Meta (Customer Audiences, Conversions API "customer information parameters") and Google
(Customer Match and Enhanced Conversions, as written in the Data Manager API's "Format user
data") both match on the SHA-256 hex digest of a *normalised* value; a value normalised
differently from the platform's rules hashes to something that never matches. The rules below
follow the published texts; each field's function says which rule it implements, and the
published examples are unit tests (tests/unit/test_hashing.py).

Contract: ``normalise(platform, field, value, region)`` returns the normalised string or raises
``InvalidValue`` (a ValueError whose message never contains the value, so it is safe to log);
``sha256_hex`` hashes a normalised string as UTF-8. ``normalise`` is idempotent.

Command line for operators::

    python -m services.export.hashing --platform meta|google --field FIELD [--region XX] VALUE

prints ``{"normalised": ..., "sha256": ...}`` and exits 0, or explains on stderr and exits 2.
"""

from __future__ import annotations

import argparse
import hashlib
import re
import sys
import unicodedata
from collections.abc import Callable
from datetime import date

import orjson
import phonenumbers
import pycountry
from email_validator import EmailNotValidError, validate_email

PLATFORMS = ("meta", "google")
DEFAULT_REGION = "FI"


class InvalidValue(ValueError):
    """A value that cannot be normalised for the field; the reason never quotes the value."""

    def __init__(self, field: str, reason: str):
        super().__init__(field, reason)
        self.field = field
        self.reason = reason

    def __str__(self) -> str:
        return f"invalid {self.field}: {self.reason}"


def is_phone_region(region: object) -> bool:
    """Whether ``region`` is a region code (upper case, e.g. FI) phone numbers are parsed for:
    a partner contract's default region for numbers written without a country code."""
    return isinstance(region, str) and region in phonenumbers.SUPPORTED_REGIONS


def sha256_hex(normalised: str) -> str:
    return hashlib.sha256(normalised.encode("utf-8")).hexdigest()


# --- shared pieces -------------------------------------------------------------------------


def _text(value: str) -> str:
    # lower-case first, then compose: "Vale\u0301ry" and "Valéry" must hash alike, and NFC
    # after lower() keeps the function idempotent
    return unicodedata.normalize("NFC", value.strip().lower())


def _drop_punctuation(value: str) -> str:
    """Remove punctuation, symbols and control characters (Unicode categories P, S, C),
    keeping letters of any script (Meta: "If using special characters, the text must be
    encoded in UTF-8")."""
    return "".join(ch for ch in value if unicodedata.category(ch)[0] not in "PSC" or ch == " ")


def _letters_only(value: str) -> str:
    return "".join(ch for ch in value if unicodedata.category(ch)[0] in "LM")


def _non_empty(field: str, value: str) -> str:
    if not value:
        raise InvalidValue(field, "nothing is left after normalisation")
    return value


def _checked_email(field: str, value: str) -> str:
    try:
        validate_email(value, check_deliverability=False)
    except EmailNotValidError as exc:
        raise InvalidValue(field, f"not a valid email address ({exc})") from None
    return value


def _parse_phone(field: str, value: str, region: str) -> phonenumbers.PhoneNumber:
    if any(ch.isalpha() for ch in value):
        # phonenumbers would read letters as keypad digits; in customer data they are typos
        raise InvalidValue(field, "a phone number must not contain letters")
    candidates = [value]
    digits = re.sub(r"\D", "", value)
    if not value.strip().startswith("+") and digits:
        # Meta's normalised form is the number with its country code but without "+", so a
        # value without "+" may already carry the country code; when it starts with the
        # region's own code that reading goes first, which keeps normalise idempotent
        with_plus = "+" + digits
        own_code = str(phonenumbers.country_code_for_region(region))
        candidates.insert(0 if digits.startswith(own_code) else 1, with_plus)
    for candidate in candidates:
        try:
            parsed = phonenumbers.parse(candidate, region)
        except phonenumbers.NumberParseException:
            continue
        if parsed.extension:
            raise InvalidValue(field, "phone numbers with an extension cannot be matched")
        if phonenumbers.is_valid_number(parsed):
            return parsed
    raise InvalidValue(field, f"not a valid phone number (default region {region})")


def _country_code(field: str, value: str) -> str:
    cleaned = value.strip()
    if not cleaned:
        raise InvalidValue(field, "empty")
    try:
        return pycountry.countries.lookup(cleaned).alpha_2
    except LookupError:
        raise InvalidValue(field, "not an ISO 3166-1 country code or country name") from None


# --- Meta ----------------------------------------------------------------------------------


def _meta_email(value: str, region: str) -> str:
    """em: trim leading and trailing spaces, convert all characters to lower case."""
    return _checked_email("em", _non_empty("em", value.strip().lower()))


def _meta_phone(value: str, region: str) -> str:
    """ph: digits only, with the country code, no "+" and no leading zeros ("remove symbols,
    letters, and any leading zeros"; "always include the country code")."""
    parsed = _parse_phone("ph", value, region)
    return phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164).lstrip("+")


def _meta_name(field: str) -> Callable[[str, str], str]:
    def normalise_name(value: str, region: str) -> str:
        """fn / ln: lower case only, no punctuation, UTF-8 letters kept ("Valéry" → "valéry").
        Runs of spaces become one (Meta is silent on inner spaces; a double space is never
        meant)."""
        return _non_empty(field, " ".join(_drop_punctuation(_text(value)).split()))

    return normalise_name


def _meta_gender(value: str, region: str) -> str:
    """ge: the lower-case initial, f or m."""
    text = _text(value)
    if text in ("f", "female"):
        return "f"
    if text in ("m", "male"):
        return "m"
    raise InvalidValue("ge", "gender must be f, m, female or male")


_ISO_DATE = re.compile(r"(\d{4})[-/.]?(\d{1,2})[-/.]?(\d{1,2})")
_US_DATE = re.compile(r"(\d{1,2})/(\d{1,2})/(\d{4})")
_EUROPEAN_DATE = re.compile(r"(\d{1,2})\.(\d{1,2})\.(\d{4})")


def _meta_birth_date(value: str, region: str) -> str:
    """db: YYYYMMDD, year 1900 to the current year. Accepted input: YYYYMMDD, YYYY-MM-DD (and
    with / or .), M/D/YYYY as in Meta's example ("2/16/1997" → 19970216) and the Finnish
    D.M.YYYY."""
    text = value.strip()
    if match := _ISO_DATE.fullmatch(text):
        year, month, day = match.groups()
    elif match := _US_DATE.fullmatch(text):
        month, day, year = match.groups()
    elif match := _EUROPEAN_DATE.fullmatch(text):
        day, month, year = match.groups()
    else:
        raise InvalidValue("db", "a birth date must be YYYYMMDD, YYYY-MM-DD, M/D/YYYY or D.M.YYYY")
    try:
        born = date(int(year), int(month), int(day))
    except ValueError:
        raise InvalidValue("db", "not a calendar date") from None
    if not 1900 <= born.year <= date.today().year or born > date.today():
        raise InvalidValue("db", "the year must be from 1900 to the current year")
    return born.strftime("%Y%m%d")


def _meta_city(value: str, region: str) -> str:
    """ct: lower case, no punctuation, no special characters, no spaces ("New York" →
    "newyork"); letters of any script kept."""
    return _non_empty("ct", _letters_only(_text(value)))


_US_STATES = {
    _letters_only(_text(sub.name)): sub.code.split("-")[1].lower()
    for sub in pycountry.subdivisions.get(country_code="US")
}


def _meta_state(value: str, region: str) -> str:
    """st: the 2-character ANSI (FIPS) code in lower case for US states ("Arizona" → "az");
    elsewhere lower case with no punctuation, special characters or spaces."""
    letters = _non_empty("st", _letters_only(_text(value)))
    return _US_STATES.get(letters, letters)


_US_ZIP = re.compile(r"(\d{5})(?:\d{4})?")


def _meta_zip(value: str, region: str) -> str:
    """zp: lower case, no spaces and no dash; only the first 5 digits of a US ZIP+4 ("M1 1AE"
    → "m11ae", "94035-1234" → "94035")."""
    compact = re.sub(r"[\s\-]", "", _text(value))
    if match := _US_ZIP.fullmatch(compact):
        return match.group(1)
    if not compact.isalnum():
        raise InvalidValue("zp", "a postal code holds only letters, digits, spaces and dashes")
    return _non_empty("zp", compact)


def _meta_country(value: str, region: str) -> str:
    """country: lower-case ISO 3166-1 alpha-2 ("United States" → "us")."""
    return _country_code("country", value).lower()


def _meta_external_id(value: str, region: str) -> str:
    """external_id: any advertiser id; trimmed and lower-cased as Meta's Business SDK does
    before hashing, so the same id hashes alike from the Pixel and from here."""
    return _non_empty("external_id", value.strip().lower())


# --- Google --------------------------------------------------------------------------------

_GMAIL_DOMAINS = ("gmail.com", "googlemail.com")


def _google_email(value: str, region: str) -> str:
    """email: lower case, no whitespace anywhere; for gmail.com and googlemail.com remove every
    "." before the "@" and a "+" with everything after it ("cloudy.sanfrancisco+shopping@
    gmail.com" → "cloudysanfrancisco@gmail.com"); other domains keep dots and plus signs."""
    text = _non_empty("email", "".join(value.split()).lower())
    _checked_email("email", text)
    local, _, domain = text.rpartition("@")
    if domain in _GMAIL_DOMAINS:
        local = local.split("+", 1)[0].replace(".", "")
        text = _checked_email("email", f"{_non_empty('email', local)}@{domain}")
    return text


def _google_phone(value: str, region: str) -> str:
    """phone: E.164 with the "+" and the country code ("(800)555-0100" in the US →
    "+18005550100")."""
    parsed = _parse_phone("phone", value, region)
    return phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164)


_PREFIXES = {"mr", "mrs", "ms", "miss", "mx", "dr", "prof", "herra", "rouva", "neiti"}
_SUFFIXES = {"jr", "sr", "ii", "iii", "iv", "phd", "md"}


def _google_name(field: str, drop: set[str], at_start: bool) -> Callable[[str, str], str]:
    def normalise_name(value: str, region: str) -> str:
        """first_name / last_name: lower case, trimmed, without a prefix such as "Mrs." (first
        name) or a suffix such as "Jr." (last name); letters of any script kept."""
        # punctuation stays ("O'Brien" → "o'brien"), unlike Meta's: Google's given_name and
        # family_name rule is lower case, no prefix or suffix, trimmed, nothing more (Data
        # Manager API, developers.google.com/data-manager/api/get-started/formatting); the
        # comma only parts a suffix ("Doe, Jr.")
        words = _text(value).replace(",", " ").split()
        while len(words) > 1 and (words[0] if at_start else words[-1]).rstrip(".") in drop:
            words.pop(0 if at_start else -1)
        return _non_empty(field, " ".join(words))

    return normalise_name


def _google_country(value: str, region: str) -> str:
    """country_code: ISO 3166-1 alpha-2, upper case as in Google's examples ("US"); Google
    matches it unhashed."""
    return _country_code("country_code", value)


def _google_postal_code(value: str, region: str) -> str:
    """postal_code: trimmed; US codes as 5 digits or 5+4; Google matches it unhashed."""
    text = _non_empty("postal_code", " ".join(value.split()).upper())
    if not all(ch.isalnum() or ch in " -" for ch in text):
        raise InvalidValue("postal_code", "a postal code holds only letters, digits, spaces, -")
    return text


RULES: dict[str, dict[str, Callable[[str, str], str]]] = {
    "meta": {
        "em": _meta_email,
        "ph": _meta_phone,
        "fn": _meta_name("fn"),
        "ln": _meta_name("ln"),
        "ge": _meta_gender,
        "db": _meta_birth_date,
        "ct": _meta_city,
        "st": _meta_state,
        "zp": _meta_zip,
        "country": _meta_country,
        "external_id": _meta_external_id,
    },
    "google": {
        "email": _google_email,
        "phone": _google_phone,
        "first_name": _google_name("first_name", _PREFIXES, at_start=True),
        "last_name": _google_name("last_name", _SUFFIXES, at_start=False),
        "country_code": _google_country,
        "postal_code": _google_postal_code,
    },
}


def fields_of(platform: str) -> tuple[str, ...]:
    return tuple(RULES[platform])


def normalise(platform: str, field: str, value: str, region: str = DEFAULT_REGION) -> str:
    """``value`` in ``platform``'s normalised form for ``field``; raises InvalidValue."""
    if platform not in RULES:
        raise InvalidValue(field, f"unknown platform; use one of {', '.join(PLATFORMS)}")
    rule = RULES[platform].get(field)
    if rule is None:
        names = ", ".join(RULES[platform])
        raise InvalidValue(field, f"not a {platform} field; use one of {names}")
    if not isinstance(value, str):
        raise InvalidValue(field, "the value must be a string")
    region = region.upper()
    if not is_phone_region(region):
        raise InvalidValue(field, "unknown region")
    return rule(value, region)


def normalise_and_hash(platform: str, field: str, value: str,
                       region: str = DEFAULT_REGION) -> tuple[str, str]:
    normalised = normalise(platform, field, value, region)
    return normalised, sha256_hex(normalised)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m services.export.hashing",
        description="Normalise a value by an ad platform's rules and print it with its SHA-256.")
    parser.add_argument("--platform", required=True, choices=PLATFORMS)
    parser.add_argument("--field", required=True,
                        help="meta: " + ", ".join(RULES["meta"]) + "; google: "
                        + ", ".join(RULES["google"]))
    parser.add_argument("--region", default=DEFAULT_REGION,
                        help="default region for phone numbers without a country code")
    parser.add_argument("value")
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse exits 2 on usage errors, 0 on --help
        return int(exc.code or 0)
    try:
        normalised, digest = normalise_and_hash(args.platform, args.field, args.value,
                                                args.region)
    except InvalidValue as exc:
        print(f"{parser.prog}: {exc}", file=sys.stderr)
        return 2
    sys.stdout.write(orjson.dumps({"normalised": normalised, "sha256": digest}).decode() + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
