"""IAB TCF v2 (v2.0 to v2.2) TC strings decoded: the core segment and, when present, the
disclosed-vendors, allowed-vendors and publisher-TC segments.

Written by hand on purpose. The one Python package on PyPI, ``iab-tcf`` 0.2.2, was last
released in October 2022, before TCF v2.2; it reads past the end of a truncated string without
noticing (missing bits decode as zeros, so a cut-off string yields a plausible but wrong
consent), returns naive datetimes via the deprecated ``utcfromtimestamp`` and needs the
``bitarray`` C extension. Consent proof must fail loudly on a damaged string, so this decoder
checks every read against the string's length and every range entry for sense. It is tested
with IAB Tech Lab's own test strings (iabtcf-java and iabtcf-es test suites) and a property
test that encodes random TC models and decodes them back (tests/unit/test_tcf.py).

The bit layout (IAB Tech Lab, "Consent string and vendor list formats v2"): base64url without
padding, segments joined with ``.``; the core segment comes first and has no segment type;
every other segment starts with a 3-bit type (1 disclosed vendors, 2 allowed vendors,
3 publisher TC). v2.2 kept the layout; it renamed UseNonStandardStacks to UseNonStandardTexts
and raised TcfPolicyVersion to 4 (5 from 2024).

Command line::

    python -m services.consent.tcf TC_STRING

prints the decoded string as JSON (snake_case keys, timestamps ISO 8601 UTC, id lists sorted)
and exits 0, or prints the reason on stderr and exits 2 for an invalid or truncated string.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass, field
from datetime import UTC, datetime

ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
_VALUES = {ch: i for i, ch in enumerate(ALPHABET)}
MAX_LENGTH = 64 * 1024  # a string with every vendor of the list in a bitfield is ~2 KB
# range entries expand to every id they span: a few KB of entries ("1-65535" over and over)
# would otherwise become hundreds of millions of ids. The whole vendor list is under 2,000.
MAX_IDS_PER_SEGMENT = 200_000

SEGMENT_DISCLOSED_VENDORS = 1
SEGMENT_ALLOWED_VENDORS = 2
SEGMENT_PUBLISHER_TC = 3
RESTRICTION_TYPES = {0: "not_allowed", 1: "require_consent", 2: "require_legitimate_interest",
                     3: "undefined"}


class InvalidTCString(ValueError):
    """Not a valid TCF v2 TC string; ``reason`` says what is wrong and where."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class PublisherRestriction:
    purpose_id: int
    restriction_type: int
    vendor_ids: list[int]


@dataclass(frozen=True)
class PublisherTC:
    pub_purposes_consent: list[int]
    pub_purposes_li_transparency: list[int]
    custom_purposes_consent: list[int]
    custom_purposes_li_transparency: list[int]


@dataclass(frozen=True)
class TCString:
    version: int
    created: datetime
    last_updated: datetime
    cmp_id: int
    cmp_version: int
    consent_screen: int
    consent_language: str
    vendor_list_version: int
    tcf_policy_version: int
    is_service_specific: bool
    use_non_standard_texts: bool
    special_feature_optins: list[int]
    purpose_consents: list[int]
    purpose_legitimate_interests: list[int]
    purpose_one_treatment: bool
    publisher_country_code: str
    vendor_consents: list[int]
    vendor_legitimate_interests: list[int]
    publisher_restrictions: list[PublisherRestriction] = field(default_factory=list)
    disclosed_vendors: list[int] | None = None
    allowed_vendors: list[int] | None = None
    publisher_tc: PublisherTC | None = None

    def to_dict(self) -> dict:
        """JSON-ready: the CLI's output and what the consent ledger keeps as proof."""
        data = {
            "version": self.version,
            "created": _iso(self.created),
            "last_updated": _iso(self.last_updated),
            "cmp_id": self.cmp_id,
            "cmp_version": self.cmp_version,
            "consent_screen": self.consent_screen,
            "consent_language": self.consent_language,
            "vendor_list_version": self.vendor_list_version,
            "tcf_policy_version": self.tcf_policy_version,
            "is_service_specific": self.is_service_specific,
            "use_non_standard_texts": self.use_non_standard_texts,
            "special_feature_optins": self.special_feature_optins,
            "purpose_consents": self.purpose_consents,
            "purpose_legitimate_interests": self.purpose_legitimate_interests,
            "purpose_one_treatment": self.purpose_one_treatment,
            "publisher_country_code": self.publisher_country_code,
            "vendor_consents": self.vendor_consents,
            "vendor_legitimate_interests": self.vendor_legitimate_interests,
            "publisher_restrictions": [vars(r) for r in self.publisher_restrictions],
        }
        if self.disclosed_vendors is not None:
            data["disclosed_vendors"] = self.disclosed_vendors
        if self.allowed_vendors is not None:
            data["allowed_vendors"] = self.allowed_vendors
        if self.publisher_tc is not None:
            data["publisher_tc"] = vars(self.publisher_tc)
        return data


class _Bits:
    """A segment's bits, read front to back; reading past the end raises InvalidTCString."""

    def __init__(self, segment: str, name: str):
        value = 0
        for position, char in enumerate(segment):
            index = _VALUES.get(char)
            if index is None:
                raise InvalidTCString(
                    f"{name}: character {position + 1} is not base64url")
            value = value << 6 | index
        self._value = value
        self._length = 6 * len(segment)
        self._position = 0
        self._ids_left = MAX_IDS_PER_SEGMENT
        self.name = name

    def int(self, bits: int, what: str) -> int:
        if self._position + bits > self._length:
            raise InvalidTCString(
                f"{self.name} is truncated: {what} needs bits "
                f"{self._position}-{self._position + bits - 1} of {self._length}")
        shift = self._length - self._position - bits
        self._position += bits
        return (self._value >> shift) & ((1 << bits) - 1)

    def bool(self, what: str) -> bool:
        return bool(self.int(1, what))

    def bitfield(self, bits: int, what: str) -> list[int]:
        """Ids (1-based) whose bit is set, ascending."""
        value = self.int(bits, what) if bits else 0
        return [i + 1 for i in range(bits) if value >> (bits - 1 - i) & 1]

    def timestamp(self, what: str) -> datetime:
        deciseconds = self.int(36, what)
        return datetime.fromtimestamp(deciseconds / 10, UTC)

    def letters(self, what: str) -> str:
        first, second = self.int(6, what), self.int(6, what)
        if first > 25 or second > 25:
            raise InvalidTCString(f"{what} is not two letters A-Z")
        return chr(ord("A") + first) + chr(ord("A") + second)

    def ranges(self, count: int, what: str, max_id: int | None = None) -> list[int]:
        ids: set[int] = set()
        for index in range(count):
            is_range = self.bool(what)
            start = self.int(16, what)
            end = self.int(16, what) if is_range else start
            if start < 1 or end < start:
                raise InvalidTCString(f"{what}: range entry {index + 1} ({start}-{end}) is "
                                      "not a valid id range")
            if max_id is not None and end > max_id:
                raise InvalidTCString(f"{what}: range entry {index + 1} ends at {end}, above "
                                      f"the declared maximum id {max_id}")
            self._ids_left -= end - start + 1
            if self._ids_left < 0:
                raise InvalidTCString(f"{self.name}: its range entries span more than "
                                      f"{MAX_IDS_PER_SEGMENT:,} ids")
            ids.update(range(start, end + 1))
        return sorted(ids)

    def vendors(self, what: str) -> list[int]:
        """A vendor section: MaxVendorId, then a bitfield or range entries."""
        max_id = self.int(16, f"{what} max vendor id")
        if self.bool(f"{what} encoding type"):
            return self.ranges(self.int(12, f"{what} entries"), what, max_id)
        return self.bitfield(max_id, what)


def decode(tc_string: str) -> TCString:
    """Decode a TCF v2 TC string. Raises InvalidTCString with the reason (empty, not
    base64url, not version 2, truncated, inconsistent ranges, unknown or repeated segment)."""
    if not isinstance(tc_string, str) or not tc_string.strip():
        raise InvalidTCString("the TC string is empty")
    tc_string = tc_string.strip()
    if len(tc_string) > MAX_LENGTH:
        raise InvalidTCString(f"the TC string is longer than {MAX_LENGTH} characters")
    core, *others = tc_string.split(".")
    if not core:
        raise InvalidTCString("the core segment is empty")
    bits = _Bits(core.rstrip("="), "core segment")
    version = bits.int(6, "version")
    if version != 2:
        raise InvalidTCString(f"version {version} is not TCF v2 (version 2)")
    fields = {
        "version": version,
        "created": bits.timestamp("created"),
        "last_updated": bits.timestamp("last_updated"),
        "cmp_id": bits.int(12, "cmp_id"),
        "cmp_version": bits.int(12, "cmp_version"),
        "consent_screen": bits.int(6, "consent_screen"),
        "consent_language": bits.letters("consent_language"),
        "vendor_list_version": bits.int(12, "vendor_list_version"),
        "tcf_policy_version": bits.int(6, "tcf_policy_version"),
        "is_service_specific": bits.bool("is_service_specific"),
        "use_non_standard_texts": bits.bool("use_non_standard_texts"),
        "special_feature_optins": bits.bitfield(12, "special_feature_optins"),
        "purpose_consents": bits.bitfield(24, "purpose_consents"),
        "purpose_legitimate_interests": bits.bitfield(24, "purpose_legitimate_interests"),
        "purpose_one_treatment": bits.bool("purpose_one_treatment"),
        "publisher_country_code": bits.letters("publisher_country_code"),
        "vendor_consents": bits.vendors("vendor_consents"),
        "vendor_legitimate_interests": bits.vendors("vendor_legitimate_interests"),
        "publisher_restrictions": _restrictions(bits),
    }
    seen: set[int] = set()
    for number, segment in enumerate(others, start=2):
        # base64 padding is not in the format, but some encoders (Java's) add it
        segment = segment.rstrip("=")
        if not segment:
            raise InvalidTCString(f"segment {number} is empty")
        bits = _Bits(segment, f"segment {number}")
        kind = bits.int(3, "segment type")
        if kind in seen:
            raise InvalidTCString(f"segment {number}: segment type {kind} appears twice")
        seen.add(kind)
        if kind == SEGMENT_DISCLOSED_VENDORS:
            fields["disclosed_vendors"] = bits.vendors("disclosed_vendors")
        elif kind == SEGMENT_ALLOWED_VENDORS:
            fields["allowed_vendors"] = bits.vendors("allowed_vendors")
        elif kind == SEGMENT_PUBLISHER_TC:
            fields["publisher_tc"] = _publisher_tc(bits)
        else:
            raise InvalidTCString(f"segment {number}: unknown segment type {kind}")
    return TCString(**fields)


def _restrictions(bits: _Bits) -> list[PublisherRestriction]:
    restrictions = []
    for _ in range(bits.int(12, "publisher restrictions count")):
        purpose = bits.int(6, "publisher restriction purpose id")
        kind = bits.int(2, "publisher restriction type")
        vendors = bits.ranges(bits.int(12, "publisher restriction entries"),
                              f"publisher restriction for purpose {purpose}")
        restrictions.append(PublisherRestriction(purpose, kind, vendors))
    return restrictions


def _publisher_tc(bits: _Bits) -> PublisherTC:
    consent = bits.bitfield(24, "pub_purposes_consent")
    transparency = bits.bitfield(24, "pub_purposes_li_transparency")
    custom = bits.int(6, "number of custom purposes")
    return PublisherTC(consent, transparency, bits.bitfield(custom, "custom_purposes_consent"),
                       bits.bitfield(custom, "custom_purposes_li_transparency"))


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m services.consent.tcf",
                                     description="Decode an IAB TCF v2 TC string to JSON.")
    parser.add_argument("tc_string")
    args = parser.parse_args(argv)
    try:
        decoded = decode(args.tc_string)
    except InvalidTCString as exc:
        print(f"invalid TC string: {exc.reason}", file=sys.stderr)
        return 2
    print(json.dumps(decoded.to_dict(), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
