"""Partner contracts: what a partner may receive, in which form, where and how often.

A contract is plain data (frozen dataclasses) built from a dict by ``parse_contract``, which
raises ``InvalidContract`` naming every problem. The API stores contracts with their secrets;
``public_view`` is what may be shown back (secrets only as "set").

Fields are an allow-list: a row carries exactly the contract's fields and nothing else. Each
field names its ``source`` in a profile snapshot (``profile_id``, ``identifiers.<type>``,
``traits.<name>``, ``computed.<name>``) and its treatment:

* ``plain``: the value as it is;
* ``sha256``: normalised by the platform's rules (services.export.hashing) and hashed;
  ``platform`` is meta or google and ``platform_field`` the platform's parameter name;
* ``hmac``: HMAC-SHA256 under the partner's own pseudonym key (a stable pseudonym that
  another partner, holding another key, cannot link).
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from typing import Any
from urllib.parse import urlparse

from services.export import hashing

FORMATS = ("csv", "jsonl")
MODES = ("full", "incremental")
TREATMENTS = ("plain", "sha256", "hmac")
PARTNER_ID = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")
SOURCE = re.compile(r"profile_id|(identifiers|traits|computed)\.[A-Za-z0-9_]{1,64}")
FIELD_NAME = re.compile(r"[A-Za-z0-9_]{1,64}")
MIN_SECRET_LENGTH = 16


class InvalidContract(ValueError):
    """A contract that cannot be used; ``problems`` maps each field path to what is wrong."""

    def __init__(self, problems: dict[str, str]):
        super().__init__("; ".join(f"{path}: {reason}" for path, reason in problems.items()))
        self.problems = problems


@dataclass(frozen=True)
class FieldRule:
    name: str
    source: str
    treatment: str = "plain"
    platform: str | None = None
    platform_field: str | None = None

    @property
    def identifies(self) -> bool:
        """Whether this field identifies the person to the partner: a deletion notice repeats
        such fields as the partner received them."""
        return self.source == "profile_id" or self.source.startswith("identifiers.")


@dataclass(frozen=True)
class Destination:
    kind: str  # "https" or "directory"
    url: str | None = None
    signing_secret: str | None = None
    path: str | None = None


@dataclass(frozen=True)
class PartnerContract:
    partner_id: str
    name: str
    required_purposes: tuple[str, ...]
    fields: tuple[FieldRule, ...]
    destination: Destination
    format: str = "csv"
    gzip: bool = False
    mode: str = "full"
    segment: str | None = None
    pseudonym_key: str | None = None
    phone_region: str = hashing.DEFAULT_REGION
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def identifying_fields(self) -> tuple[FieldRule, ...]:
        return tuple(rule for rule in self.fields if rule.identifies)


def parse_contract(partner_id: str, data: dict[str, Any], *,
                   allow_http: bool = False) -> PartnerContract:
    """Validate ``data`` (the API body) into a contract; raises InvalidContract.

    ``allow_http`` admits plain http:// destinations (local runs and tests only)."""
    problems: dict[str, str] = {}
    if not PARTNER_ID.fullmatch(partner_id or ""):
        problems["partner_id"] = "1-64 lower-case letters, digits, - or _"
    name = data.get("name")
    if not isinstance(name, str) or not name.strip():
        problems["name"] = "a non-empty string"
    purposes = data.get("required_purposes")
    if (not isinstance(purposes, list) or not purposes
            or not all(isinstance(p, str) and p for p in purposes)):
        problems["required_purposes"] = "a non-empty list of purpose names (all must be allowed)"
        purposes = []
    fmt = data.get("format", "csv")
    if fmt not in FORMATS:
        problems["format"] = f"one of {', '.join(FORMATS)}"
    mode = data.get("mode", "full")
    if mode not in MODES:
        problems["mode"] = f"one of {', '.join(MODES)}"
    if not isinstance(data.get("gzip", False), bool):
        problems["gzip"] = "true or false"
    segment = data.get("segment")
    if segment is not None and (not isinstance(segment, str) or not segment):
        problems["segment"] = "a segment id or null"
    region = data.get("phone_region", hashing.DEFAULT_REGION)
    if not isinstance(region, str) or not re.fullmatch(r"[A-Z]{2}", region):
        problems["phone_region"] = "a two-letter region such as FI"
    pseudonym_key = data.get("pseudonym_key")
    rules = _parse_fields(data.get("fields"), problems)
    if any(rule.treatment == "hmac" for rule in rules) and not _secret_ok(pseudonym_key):
        problems["pseudonym_key"] = (f"hmac fields need a pseudonym_key of "
                                     f"{MIN_SECRET_LENGTH}+ characters")
    destination = _parse_destination(data.get("destination"), problems, allow_http)
    if problems:
        raise InvalidContract(problems)
    return PartnerContract(
        partner_id=partner_id, name=name.strip(), required_purposes=tuple(dict.fromkeys(purposes)),
        fields=tuple(rules), destination=destination, format=fmt, gzip=data.get("gzip", False),
        mode=mode, segment=segment, pseudonym_key=pseudonym_key, phone_region=region)


def _secret_ok(value: Any) -> bool:
    return isinstance(value, str) and len(value) >= MIN_SECRET_LENGTH


def _parse_fields(raw: Any, problems: dict[str, str]) -> list[FieldRule]:
    if not isinstance(raw, list) or not raw:
        problems["fields"] = "a non-empty list of {name, source, treatment, ...}"
        return []
    rules, names = [], set()
    for index, item in enumerate(raw):
        path = f"fields.{index}"
        if not isinstance(item, dict):
            problems[path] = "an object"
            continue
        name, source = item.get("name"), item.get("source")
        treatment = item.get("treatment", "plain")
        if not isinstance(name, str) or not FIELD_NAME.fullmatch(name):
            problems[f"{path}.name"] = "letters, digits or _ (1-64)"
        elif name in names:
            problems[f"{path}.name"] = "names must be unique"
        names.add(name)
        if not isinstance(source, str) or not SOURCE.fullmatch(source):
            problems[f"{path}.source"] = ("profile_id, identifiers.<type>, traits.<name> or "
                                          "computed.<name>")
        if treatment not in TREATMENTS:
            problems[f"{path}.treatment"] = f"one of {', '.join(TREATMENTS)}"
        platform, platform_field = item.get("platform"), item.get("platform_field")
        if treatment == "sha256":
            if platform not in hashing.PLATFORMS:
                problems[f"{path}.platform"] = f"one of {', '.join(hashing.PLATFORMS)}"
            elif platform_field not in hashing.fields_of(platform):
                problems[f"{path}.platform_field"] = (
                    f"one of {', '.join(hashing.fields_of(platform))}")
        elif platform is not None or platform_field is not None:
            problems[f"{path}.platform"] = "only sha256 fields name a platform"
        rules.append(FieldRule(name=name, source=source, treatment=treatment,
                               platform=platform, platform_field=platform_field))
    return rules


def _parse_destination(raw: Any, problems: dict[str, str], allow_http: bool) -> Destination:
    if not isinstance(raw, dict):
        problems["destination"] = "an object with kind https (url, signing_secret) or directory"
        return Destination(kind="invalid")
    kind = raw.get("kind")
    if kind == "https":
        url = raw.get("url")
        scheme = urlparse(url).scheme if isinstance(url, str) else ""
        if scheme != "https" and not (allow_http and scheme == "http"):
            problems["destination.url"] = "an https:// URL"
        if not _secret_ok(raw.get("signing_secret")):
            problems["destination.signing_secret"] = (
                f"a secret of {MIN_SECRET_LENGTH}+ characters (bodies are signed with it)")
        return Destination(kind="https", url=url, signing_secret=raw.get("signing_secret"))
    if kind == "directory":
        path = raw.get("path")
        if (not isinstance(path, str) or not path or path.startswith("/")
                or ".." in path.split("/")):
            problems["destination.path"] = "a relative path inside the export directory root"
        return Destination(kind="directory", path=path)
    problems["destination.kind"] = "https or directory"
    return Destination(kind="invalid")


def to_document(contract: PartnerContract) -> dict[str, Any]:
    """The contract as stored (secrets included)."""
    doc = asdict(contract)
    doc["fields"] = [asdict(rule) for rule in contract.fields]
    doc["required_purposes"] = list(contract.required_purposes)
    doc.pop("extra", None)
    return doc


def from_document(doc: dict[str, Any]) -> PartnerContract:
    return PartnerContract(
        partner_id=doc["partner_id"], name=doc["name"],
        required_purposes=tuple(doc["required_purposes"]),
        fields=tuple(FieldRule(**rule) for rule in doc["fields"]),
        destination=Destination(**doc["destination"]), format=doc["format"], gzip=doc["gzip"],
        mode=doc["mode"], segment=doc.get("segment"), pseudonym_key=doc.get("pseudonym_key"),
        phone_region=doc.get("phone_region", hashing.DEFAULT_REGION))


def public_view(contract: PartnerContract) -> dict[str, Any]:
    """The contract without its secrets (shown as whether they are set)."""
    doc = to_document(contract)
    destination = dict(doc["destination"])
    secret = destination.pop("signing_secret", None)
    doc["destination"] = {key: value for key, value in destination.items() if value is not None}
    if contract.destination.kind == "https":
        doc["destination"]["signing_secret_set"] = bool(secret)
    doc["pseudonym_key_set"] = bool(doc.pop("pseudonym_key", None))
    doc["fields"] = [{key: value for key, value in rule.items() if value is not None}
                     for rule in doc["fields"]]
    return doc
