"""Identifier normalisation for Muisti.

Every identifier that reaches the identity graph goes through :func:`normalise`
first, so that the same person written two ways ("040 123 4567" and
"+358401234567", "Matti@Example.com" and "matti@example.com") ends up as one
canonical string.

Contract:

* :func:`normalise` returns the canonical form of a supported identifier, or
  raises :class:`InvalidIdentifier` (a ``ValueError``) - for an unknown type, a
  value that is not a ``str``, an empty value, or a value that fails the rules
  of its type. It never returns a "best effort" value.
* :class:`InvalidIdentifier` messages never contain the value itself, so they
  are safe to log (a hetu must not end up in logs).
* A hetu is kept at rest only as its keyed digest (``hmac:`` and 64 hex digits, made by
  services.common.hetu_protection). :func:`normalise` accepts that form as a hetu too and
  returns it unchanged, so identifiers read back from the graph, a profile or a data-subject
  request pass through the same code as fresh ones; :func:`is_hetu_digest` tells them apart.

Command line::

    python -m services.common.identifiers TYPE VALUE [--region XX]

prints one JSON line and exits 0 (valid) or 2 (invalid or usage error).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import unicodedata
from collections.abc import Callable

import phonenumbers
from email_validator import EmailNotValidError, validate_email
from stdnum.exceptions import InvalidChecksum, InvalidComponent, ValidationError
from stdnum.fi import hetu as stdnum_hetu
from stdnum.fi import ytunnus as stdnum_ytunnus

__all__ = [
    "IDENTIFIER_TYPES",
    "HETU_DIGEST_PREFIX",
    "SENSITIVE_TYPES",
    "InvalidIdentifier",
    "is_hetu_digest",
    "main",
    "normalise",
]

IDENTIFIER_TYPES: tuple[str, ...] = (
    "email",
    "phone",
    "user_id",
    "anonymous_id",
    "device_id",
    "twitter_id",
    "twitter_handle",
    "facebook_id",
    "instagram_id",
    "instagram_handle",
    "hetu",
    "business_id",
)

# Stored only hashed/encrypted by the services that persist identifiers.
SENSITIVE_TYPES: frozenset[str] = frozenset({"hetu"})

HETU_DIGEST_PREFIX = "hmac:"
_HETU_DIGEST_RE = re.compile(r"hmac:[0-9a-f]{64}")

OPAQUE_ID_MAX_LENGTH = 256

# ASCII only: a Unicode-aware class (or lower-casing before matching) would let
# e.g. the Kelvin sign U+212A through as "k".
_TWITTER_HANDLE_RE = re.compile(r"[A-Za-z0-9_]{1,15}")
_NUMERIC_ID_RE = re.compile(r"[0-9]{1,25}")
# Instagram user names: up to 30 ASCII letters, digits, periods and underscores.
_INSTAGRAM_HANDLE_RE = re.compile(r"[A-Za-z0-9._]{1,30}")


class InvalidIdentifier(ValueError):
    """A value that cannot be normalised as an identifier of the given type.

    ``type`` is the identifier type asked for and ``reason`` a short human
    sentence. Neither contains the rejected value.
    """

    def __init__(self, type_: str, reason: str) -> None:
        # Both go into args so the exception pickles and unpickles intact.
        super().__init__(type_, reason)
        self.type = type_
        self.reason = reason

    def __str__(self) -> str:
        return f"invalid {self.type}: {self.reason}"


def _email(value: str, region: str) -> str:
    try:
        result = validate_email(value, check_deliverability=False)
    except EmailNotValidError as exc:
        raise InvalidIdentifier("email", f"not a valid email address ({exc})") from None
    # email_validator keeps the local part's case (RFC 5321 says it may matter);
    # Muisti matches addresses case-insensitively, so the canonical form is all lower case.
    return result.normalized.lower()


def _phone_reason(region: str, parsed: phonenumbers.PhoneNumber | None = None) -> str:
    if parsed is not None and parsed.country_code != phonenumbers.country_code_for_region(region):
        return f"not a valid phone number for country code +{parsed.country_code}"
    if region == "FI":
        return "not a valid Finnish phone number"
    return f"not a valid phone number for region {region}"


def _phone(value: str, region: str) -> str:
    # phonenumbers silently turns letters into keypad digits ("040 ABC 4567"
    # becomes +358402224567) and reads "ext. 12" as an extension; both are far
    # more likely to be typos than intent in customer data, so refuse letters.
    if any(ch.isalpha() for ch in value):
        raise InvalidIdentifier("phone", "a phone number must not contain letters")
    try:
        parsed = phonenumbers.parse(value, region)
    except phonenumbers.NumberParseException as exc:
        if exc.error_type == phonenumbers.NumberParseException.INVALID_COUNTRY_CODE:
            if region not in phonenumbers.SUPPORTED_REGIONS:
                raise InvalidIdentifier("phone", f"unknown region {region!r}") from None
            raise InvalidIdentifier("phone", "unknown country calling code") from None
        raise InvalidIdentifier("phone", _phone_reason(region)) from None
    if parsed.extension:
        # E.164 has no extension: keeping it would silently merge everyone
        # behind the same switchboard into one identity.
        raise InvalidIdentifier("phone", "phone numbers with an extension are not supported")
    if not phonenumbers.is_valid_number(parsed):
        raise InvalidIdentifier("phone", _phone_reason(region, parsed))
    return phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164)


def is_hetu_digest(value: object) -> bool:
    """Whether ``value`` is a hetu's keyed digest rather than a hetu."""
    return isinstance(value, str) and _HETU_DIGEST_RE.fullmatch(value) is not None


def _hetu(value: str, region: str) -> str:
    if is_hetu_digest(value):
        return value
    # The python-stdnum versions we allow (>= 1.20) know the 2023 century signs
    # (Y X W V U and B-F), so no hand-written check is needed. Individual
    # numbers 900-999 are temporary ids (issued by e.g. hospitals) that stdnum
    # rejects by default, but they are real codes in customer data: allow them.
    try:
        return stdnum_hetu.validate(value, allow_temporary=True)
    except InvalidChecksum:
        reason = "not a valid Finnish personal identity code (check character does not match)"
    except InvalidComponent:
        reason = "not a valid Finnish personal identity code (invalid date or individual number)"
    except ValidationError:
        reason = "not a valid Finnish personal identity code (wrong format)"
    raise InvalidIdentifier("hetu", reason)


def _business_id(value: str, region: str) -> str:
    # stdnum also accepts the VAT form "FI07375462"; it denotes the same
    # company, so mapping it to the Y-tunnus is what we want.
    try:
        stdnum_ytunnus.validate(value)
    except InvalidChecksum:
        reason = "not a valid Finnish business id (check digit does not match)"
    except ValidationError:
        reason = "not a valid Finnish business id (expected 1234567-8)"
    else:
        return stdnum_ytunnus.format(value)
    raise InvalidIdentifier("business_id", reason)


def _twitter_handle(value: str, region: str) -> str:
    handle = value[1:] if value.startswith("@") else value
    if not _TWITTER_HANDLE_RE.fullmatch(handle):
        raise InvalidIdentifier(
            "twitter_handle", "a Twitter handle is 1-15 letters, digits or underscores"
        )
    return handle.lower()


def _instagram_handle(value: str, region: str) -> str:
    handle = value[1:] if value.startswith("@") else value
    if not _INSTAGRAM_HANDLE_RE.fullmatch(handle):
        raise InvalidIdentifier(
            "instagram_handle",
            "an Instagram user name is 1-30 letters, digits, periods or underscores")
    return handle.lower()


def _numeric_id(type_: str) -> Callable[[str, str], str]:
    def check(value: str, region: str) -> str:
        if not _NUMERIC_ID_RE.fullmatch(value):
            raise InvalidIdentifier(type_, "must be 1-25 digits (0-9)")
        return value

    return check


def _opaque_id(type_: str) -> Callable[[str, str], str]:
    def check(value: str, region: str) -> str:
        if len(value) > OPAQUE_ID_MAX_LENGTH:
            raise InvalidIdentifier(type_, f"longer than {OPAQUE_ID_MAX_LENGTH} characters")
        # Cc: control characters. Cs: lone surrogates, which cannot be encoded
        # as UTF-8 and so could not be stored or sent on.
        if any(unicodedata.category(ch) in ("Cc", "Cs") for ch in value):
            raise InvalidIdentifier(type_, "contains control characters")
        return value

    return check


_NORMALISERS: dict[str, Callable[[str, str], str]] = {
    "email": _email,
    "phone": _phone,
    "user_id": _opaque_id("user_id"),
    "anonymous_id": _opaque_id("anonymous_id"),
    "device_id": _opaque_id("device_id"),
    "twitter_id": _numeric_id("twitter_id"),
    "twitter_handle": _twitter_handle,
    "facebook_id": _numeric_id("facebook_id"),
    "instagram_id": _numeric_id("instagram_id"),
    "instagram_handle": _instagram_handle,
    "hetu": _hetu,
    "business_id": _business_id,
}


def normalise(type_: str, value: str, *, region: str = "FI") -> str:
    """Return the canonical form of ``value`` as an identifier of ``type_``.

    Surrounding whitespace is always ignored. ``region`` (ISO 3166 alpha-2,
    any case) is the default country for phone numbers written without a
    country code; other types ignore it.

    Canonical forms: email lower-cased; phone E.164 (``+358401234567``); hetu
    upper case (``131052-308T``), or its keyed digest unchanged; business_id
    ``1234567-8``; twitter_handle lower case without ``@``; instagram_handle
    likewise; twitter_id / facebook_id / instagram_id the digits; user_id,
    anonymous_id and device_id unchanged apart from stripping (case kept).

    Raises :class:`InvalidIdentifier` if ``type_`` is not in
    :data:`IDENTIFIER_TYPES`, if ``value`` is not a ``str`` or is empty (after
    stripping), or if it is not a valid identifier of that type.
    """
    normaliser = _NORMALISERS.get(type_) if isinstance(type_, str) else None
    if normaliser is None:
        raise InvalidIdentifier(str(type_), "unknown identifier type")
    if not isinstance(value, str):
        raise InvalidIdentifier(type_, "the value must be a string")
    value = value.strip()
    if not value:
        raise InvalidIdentifier(type_, "the value is empty")
    if not isinstance(region, str):
        raise InvalidIdentifier(type_, "the region must be a string")
    return normaliser(value, region.strip().upper())


def main(argv: list[str] | None = None) -> int:
    """Command line entry point; returns the exit status.

    Prints ``{"type", "value", "valid": true}`` and returns 0 for a valid
    value; prints ``{"type", "value" (as given), "valid": false, "reason"}``
    to stdout, the reason to stderr, and returns 2 for an invalid one. An
    unknown TYPE is an argparse usage error (SystemExit with status 2).
    """
    parser = argparse.ArgumentParser(
        prog="python -m services.common.identifiers",
        description="Normalise a customer identifier and print the result as JSON.",
    )
    parser.add_argument("type", metavar="TYPE", choices=IDENTIFIER_TYPES,
                        help="one of: " + ", ".join(IDENTIFIER_TYPES))
    parser.add_argument("value", metavar="VALUE")
    parser.add_argument("--region", default="FI", type=str.upper,
                        help="default country for phone numbers (default: FI)")
    args = parser.parse_args(argv)

    try:
        normalised = normalise(args.type, args.value, region=args.region)
    except InvalidIdentifier as exc:
        print(json.dumps({"type": args.type, "value": args.value, "valid": False,
                          "reason": exc.reason}))
        print(f"{args.type}: {exc.reason}", file=sys.stderr)
        return 2
    print(json.dumps({"type": args.type, "value": normalised, "valid": True}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
