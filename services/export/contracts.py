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

Modes: ``full`` and ``incremental`` runs; ``streaming`` sends each changed profile as the
change arrives (a run of a streaming contract is a full backfill); ``aggregate`` sends no
individuals, only segment-level statistics by ``aggregate.dimensions`` (services.export
.aggregates), each cell published only when it holds at least k profiles.

Secrets (``destination.signing_secret``, ``destination.authorization`` — the endpoint's
credentials, sent as the Authorization header — and ``pseudonym_key``) are sealed by the store
(services.export.sealing) and never shown back.

A destination is checked as strictly as the HTTP client will use it, and ``phone_region``
against the regions phone numbers are parsed for: a contract accepted here can always be
attempted, and its hashed phone numbers can match.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import asdict, dataclass, field
from typing import Any
from urllib.parse import urlsplit

from services.export import hashing

FORMATS = ("csv", "jsonl")
MODES = ("full", "incremental", "streaming", "aggregate")
RUN_MODES = ("full", "incremental")
TREATMENTS = ("plain", "sha256", "hmac")
PARTNER_ID = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")
SOURCE = re.compile(r"profile_id|(identifiers|traits|computed)\.[A-Za-z0-9_]{1,64}")
# aggregates group and sum by attributes, never by who someone is
AGGREGATE_SOURCE = re.compile(r"(traits|computed)\.[A-Za-z0-9_]{1,64}")
MAX_DIMENSIONS = 4
MIN_K = 2
FIELD_NAME = re.compile(r"[A-Za-z0-9_]{1,64}")
MIN_SECRET_LENGTH = 16
MAX_URL_LENGTH = 2048
HOST_LABEL = re.compile(r"(?!-)[a-z0-9-]{1,63}(?<!-)")
# an HTTP field value the client sends as it is: visible ASCII, spaces only inside
HEADER_VALUE = re.compile(r"[\x21-\x7e](?:[\x20-\x7e]*[\x21-\x7e])?")


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
    authorization: str | None = None


@dataclass(frozen=True)
class Column:
    """An aggregate's dimension or measure: the output name and the snapshot source."""

    name: str
    source: str


@dataclass(frozen=True)
class AggregateSpec:
    """Statistics by ``dimensions``: per cell the profile count and, per measure, the sum
    and average of its numeric values. ``k``: the contract's minimum cell size (the service's
    CDP_EXPORT_MIN_CELL_SIZE applies when it is larger)."""

    dimensions: tuple[Column, ...]
    measures: tuple[Column, ...] = ()
    k: int | None = None


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
    aggregate: AggregateSpec | None = None
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
    if not hashing.is_phone_region(region):
        # a region the phone library does not know makes every hashed value unmatchable
        problems["phone_region"] = ("a region code phone numbers are known for, upper case, "
                                    "such as FI (the United Kingdom is GB)")
    pseudonym_key = data.get("pseudonym_key")
    aggregate = None
    if mode == "aggregate":
        if data.get("fields"):
            problems["fields"] = "an aggregate contract sends no individual fields"
        rules = []
        aggregate = _parse_aggregate(data.get("aggregate"), problems)
    else:
        rules = _parse_fields(data.get("fields"), problems)
        if data.get("aggregate") is not None:
            problems["aggregate"] = "only a contract in mode aggregate has one"
    if any(rule.treatment == "hmac" for rule in rules) and not _secret_ok(pseudonym_key):
        problems["pseudonym_key"] = (f"hmac fields need a pseudonym_key of "
                                     f"{MIN_SECRET_LENGTH}+ characters")
    destination = _parse_destination(data.get("destination"), problems, allow_http)
    if problems:
        raise InvalidContract(problems)
    return PartnerContract(
        partner_id=partner_id, name=name.strip(), required_purposes=tuple(dict.fromkeys(purposes)),
        fields=tuple(rules), destination=destination, format=fmt, gzip=data.get("gzip", False),
        mode=mode, segment=segment, pseudonym_key=pseudonym_key, phone_region=region,
        aggregate=aggregate)


def _parse_aggregate(raw: Any, problems: dict[str, str]) -> AggregateSpec | None:
    if not isinstance(raw, dict):
        problems["aggregate"] = "an object with dimensions, measures and optionally k"
        return None
    dimensions = _parse_columns(raw.get("dimensions"), "aggregate.dimensions", problems)
    measures = _parse_columns(raw.get("measures") or [], "aggregate.measures", problems)
    if not dimensions or len(dimensions) > MAX_DIMENSIONS:
        problems.setdefault("aggregate.dimensions", f"1-{MAX_DIMENSIONS} dimensions")
    names = [column.name for column in (*dimensions, *measures)]
    if len(names) != len(set(names)) or "count" in names:
        problems["aggregate"] = "dimension and measure names must be unique and not 'count'"
    k = raw.get("k")
    if k is not None and (not isinstance(k, int) or isinstance(k, bool) or k < MIN_K):
        problems["aggregate.k"] = f"an integer of at least {MIN_K}"
    return AggregateSpec(tuple(dimensions), tuple(measures), k)


def _parse_columns(raw: Any, path: str, problems: dict[str, str]) -> list[Column]:
    if not isinstance(raw, list):
        problems[path] = "a list of {name, source}"
        return []
    columns = []
    for index, item in enumerate(raw):
        if (not isinstance(item, dict) or not isinstance(item.get("name"), str)
                or not FIELD_NAME.fullmatch(item["name"])
                or not isinstance(item.get("source"), str)
                or not AGGREGATE_SOURCE.fullmatch(item["source"])):
            problems[f"{path}.{index}"] = ("{name: letters, digits or _, source: traits.<name> "
                                           "or computed.<name>}")
            continue
        columns.append(Column(item["name"], item["source"]))
    return columns


def _secret_ok(value: Any) -> bool:
    # printable: a control character or a lone surrogate could not be encoded to sign with
    return isinstance(value, str) and len(value) >= MIN_SECRET_LENGTH and value.isprintable()


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
        if (problem := _url_problem(url, allow_http)) is not None:
            problems["destination.url"] = problem
        if not _secret_ok(raw.get("signing_secret")):
            problems["destination.signing_secret"] = (
                f"a secret of {MIN_SECRET_LENGTH}+ printable characters (bodies are signed "
                f"with it)")
        authorization = raw.get("authorization")
        if authorization is not None and not (
                isinstance(authorization, str) and 8 <= len(authorization) <= 4096
                and HEADER_VALUE.fullmatch(authorization)):
            problems["destination.authorization"] = (
                "the Authorization header value the endpoint expects: 8-4096 visible ASCII "
                "characters, spaces only between them")
        return Destination(kind="https", url=url, signing_secret=raw.get("signing_secret"),
                           authorization=authorization)
    if kind == "directory":
        path = raw.get("path")
        if (not isinstance(path, str) or not path or not path.isprintable()
                or path.startswith("/") or ".." in path.split("/")):
            problems["destination.path"] = "a relative path inside the export directory root"
        return Destination(kind="directory", path=path)
    problems["destination.kind"] = "https or directory"
    return Destination(kind="invalid")


def _url_problem(url: Any, allow_http: bool) -> str | None:
    """What makes ``url`` unusable as a partner's endpoint, or None. At least as strict as
    the HTTP client, so that every delivery to an accepted contract can be attempted."""
    scheme = "an http:// or https:// URL" if allow_http else "an https:// URL"
    if not isinstance(url, str) or not 0 < len(url) <= MAX_URL_LENGTH:
        return f"{scheme} of at most {MAX_URL_LENGTH} characters"
    if not all("\x21" <= ch <= "\x7e" for ch in url):
        return ("no spaces, control or non-ASCII characters (an international host name in "
                "its xn-- form, other characters percent-encoded)")
    try:
        parts = urlsplit(url)
        port = parts.port  # raises for a port out of range or not a number
    except ValueError as exc:
        return f"not a valid URL ({exc})"
    if parts.scheme not in (("http", "https") if allow_http else ("https",)):
        return scheme
    if parts.username is not None or parts.password is not None:
        # the URL is stored and shown in the clear; credentials are sealed apart
        return "no credentials in the URL: put them in destination.authorization"
    if not _host_ok(parts.hostname):
        return "a host name (letters, digits, - and .) or an IP address after the scheme"
    if port == 0:
        return "a port from 1 to 65535"
    return None


def _host_ok(host: str | None) -> bool:
    if not host:
        return False
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        pass
    name = host.removesuffix(".")
    return 0 < len(name) <= 253 and all(HOST_LABEL.fullmatch(label)
                                        for label in name.split("."))


def to_document(contract: PartnerContract) -> dict[str, Any]:
    """The contract as a plain document, secrets in clear (the store seals them)."""
    doc = asdict(contract)
    doc["fields"] = [asdict(rule) for rule in contract.fields]
    doc["required_purposes"] = list(contract.required_purposes)
    doc.pop("extra", None)
    return doc


def _aggregate_from(doc: dict[str, Any] | None) -> AggregateSpec | None:
    if doc is None:
        return None
    return AggregateSpec(dimensions=tuple(Column(**c) for c in doc["dimensions"]),
                         measures=tuple(Column(**c) for c in doc["measures"]), k=doc.get("k"))


def from_document(doc: dict[str, Any]) -> PartnerContract:
    return PartnerContract(
        partner_id=doc["partner_id"], name=doc["name"],
        required_purposes=tuple(doc["required_purposes"]),
        fields=tuple(FieldRule(**rule) for rule in doc["fields"]),
        destination=Destination(**doc["destination"]), format=doc["format"], gzip=doc["gzip"],
        mode=doc["mode"], segment=doc.get("segment"), pseudonym_key=doc.get("pseudonym_key"),
        phone_region=doc.get("phone_region", hashing.DEFAULT_REGION),
        aggregate=_aggregate_from(doc.get("aggregate")))


def public_view(contract: PartnerContract) -> dict[str, Any]:
    """The contract without its secrets (shown as whether they are set)."""
    doc = to_document(contract)
    destination = dict(doc["destination"])
    secret = destination.pop("signing_secret", None)
    authorization = destination.pop("authorization", None)
    doc["destination"] = {key: value for key, value in destination.items() if value is not None}
    if contract.destination.kind == "https":
        doc["destination"]["signing_secret_set"] = bool(secret)
        doc["destination"]["authorization_set"] = bool(authorization)
    doc["pseudonym_key_set"] = bool(doc.pop("pseudonym_key", None))
    doc["fields"] = [{key: value for key, value in rule.items() if value is not None}
                     for rule in doc["fields"]]
    return doc
