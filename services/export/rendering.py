"""From profile snapshots to the bytes a partner receives: consent gating, field treatment,
batches with deterministic idempotency keys, signatures.

Everything here is pure: snapshots and consent states in, rows and bytes out. The run executor
(services.export.runs) feeds it from the read model and delivers what it returns.

A profile is exported only when every purpose the contract requires is allowed for it at the
moment its batch is rendered, it is not restricted, it is in the contract's segment (when one
is set) and at least one allowed field has a value. An excluded profile is counted under the
reason it was left out.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import hmac
import io
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson

from services.export import hashing
from services.export.contracts import Destination, FieldRule, PartnerContract

CSV_LIST_SEPARATOR = "|"
SIGNATURE_HEADER = "X-Muisti-Signature"


@dataclass(frozen=True)
class ConsentState:
    allowed: bool
    state: str


def exclusion_reason(contract: PartnerContract, consents: Mapping[str, ConsentState],
                     restricted: bool = False) -> str | None:
    """Why a profile may not be sent now (``consent:<purpose>:<state>``, ``restricted``), or
    None when every required purpose is allowed. A purpose never decided is ``missing``."""
    if restricted:
        return "restricted"
    for purpose in contract.required_purposes:
        consent = consents.get(purpose)
        if consent is None:
            return f"consent:{purpose}:missing"
        if not consent.allowed:
            return f"consent:{purpose}:{consent.state}"
    return None


def in_segment(contract: PartnerContract, snapshot: Mapping[str, Any]) -> bool:
    return contract.segment is None or contract.segment in (snapshot.get("segments") or ())


def _source_values(rule: FieldRule, snapshot: Mapping[str, Any]) -> list[Any]:
    if rule.source == "profile_id":
        return [snapshot["profile_id"]]
    section, _, name = rule.source.partition(".")
    value = (snapshot.get(section) or {}).get(name)
    if value is None:
        return []
    return list(value) if isinstance(value, list) else [value]


def treat(rule: FieldRule, value: Any, contract: PartnerContract) -> Any:
    """One value in the form the partner receives; raises hashing.InvalidValue when a hashed
    field's value cannot be normalised."""
    if rule.treatment == "plain":
        return value
    text = value if isinstance(value, str) else str(value)
    if rule.treatment == "sha256":
        return hashing.normalise_and_hash(rule.platform, rule.platform_field, text,
                                          contract.phone_region)[1]
    return hmac.new(contract.pseudonym_key.encode(), text.encode(), hashlib.sha256).hexdigest()


@dataclass
class RenderedRow:
    profile_id: str
    values: dict[str, Any]
    invalid_fields: list[str]

    def identifiers(self, contract: PartnerContract) -> dict[str, list[Any]]:
        """The identifying fields as the partner receives them (for deletion notices)."""
        out = {}
        for rule in contract.identifying_fields:
            if rule.name in self.values:
                value = self.values[rule.name]
                out[rule.name] = value if isinstance(value, list) else [value]
        return out


def render_row(contract: PartnerContract, snapshot: Mapping[str, Any]) -> RenderedRow:
    """The allowed fields of one profile, treated. Identifier sources give a list (a profile
    may hold several emails); an invalid value is left out and its field named."""
    values: dict[str, Any] = {}
    invalid: list[str] = []
    for rule in contract.fields:
        treated = []
        for value in _source_values(rule, snapshot):
            try:
                item = treat(rule, value, contract)
            except hashing.InvalidValue:
                invalid.append(rule.name)
                continue
            if item not in treated:
                treated.append(item)
        if not treated:
            continue
        many = rule.source.startswith("identifiers.")
        values[rule.name] = treated if many else treated[0]
    return RenderedRow(snapshot["profile_id"], values, invalid)


@dataclass
class Batch:
    """One batch of a run: the rows to send and what was left out, with its counts."""

    number: int
    rows: list[RenderedRow] = field(default_factory=list)
    considered: int = 0
    excluded: Counter = field(default_factory=Counter)
    invalid_values: Counter = field(default_factory=Counter)
    last_profile_id: str | None = None


def build_batch(contract: PartnerContract, number: int, snapshots: Iterable[Mapping[str, Any]],
                consents: Mapping[str, Mapping[str, ConsentState]],
                restricted: Iterable[str] = ()) -> Batch:
    """Gate and render ``snapshots`` (one page of the read model, in profile-id order).

    ``consents`` maps profile id → purpose → state; ``restricted`` lists profiles under a
    processing restriction. Profiles outside the segment are skipped, not counted."""
    restricted = set(restricted)
    batch = Batch(number=number)
    for snapshot in snapshots:
        batch.last_profile_id = snapshot["profile_id"]
        if not in_segment(contract, snapshot):
            continue
        batch.considered += 1
        reason = exclusion_reason(contract, consents.get(snapshot["profile_id"], {}),
                                  snapshot["profile_id"] in restricted)
        if reason is not None:
            batch.excluded[reason] += 1
            continue
        row = render_row(contract, snapshot)
        batch.invalid_values.update(row.invalid_fields)
        if not row.values:
            batch.excluded["no_allowed_field_has_a_value"] += 1
            continue
        batch.rows.append(row)
    return batch


def encode_rows(contract: PartnerContract, rows: Iterable[Mapping[str, Any]],
                columns: list[str] | None = None) -> bytes:
    """Rows as the contract's format (CSV with a header, or JSON Lines), gzipped when asked.
    ``columns`` are the CSV's (the contract's fields by default). The bytes are deterministic
    (gzip without a timestamp), so the content hash is stable."""
    if contract.format == "jsonl":
        body = b"".join(orjson.dumps(row) + b"\n" for row in rows)
    else:
        text = io.StringIO()
        writer = csv.writer(text, lineterminator="\n")
        names = columns or [rule.name for rule in contract.fields]
        writer.writerow(names)
        for row in rows:
            writer.writerow([_csv_cell(row.get(name)) for name in names])
        body = text.getvalue().encode()
    return gzip.compress(body, mtime=0) if contract.gzip else body


def _csv_cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, list):
        return CSV_LIST_SEPARATOR.join(str(item) for item in value)
    return str(value)


def content_type(contract: PartnerContract) -> str:
    return "application/x-ndjson" if contract.format == "jsonl" else "text/csv; charset=utf-8"


def file_name(contract: PartnerContract, stem: str) -> str:
    return f"{stem}.{contract.format}" + (".gz" if contract.gzip else "")


def batch_idempotency_key(run_id: str, number: int) -> str:
    """The key a batch carries on every attempt, also after a crash and a resume."""
    return f"{run_id}:batch:{number:06d}"


def sign(secret: str, body: bytes) -> str:
    """The ``X-Muisti-Signature`` value: ``sha256=`` and the hex HMAC-SHA256 of the body."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def signature_valid(secret: str, body: bytes, header: str | None) -> bool:
    return header is not None and hmac.compare_digest(sign(secret, body), header)


def treated_identifiers(contract: PartnerContract, identifiers: Iterable[tuple[str, str]]
                        ) -> dict[str, list[Any]]:
    """The subject's identifiers (type, normalised value) as the partner would have received
    them, by the contract's field name: how a subject known only by identifiers is found
    among what was sent."""
    out: dict[str, list[Any]] = {}
    for rule in contract.identifying_fields:
        section, _, type_ = rule.source.partition(".")
        if section != "identifiers":
            continue
        for kind, value in identifiers:
            if kind != type_:
                continue
            try:
                treated = treat(rule, value, contract)
            except hashing.InvalidValue:
                continue
            if treated not in out.setdefault(rule.name, []):
                out[rule.name].append(treated)
    return {name: values for name, values in out.items() if values}


def deletion_notice_body(contract: PartnerContract, notice_id: str, reason: str,
                         identifiers: Mapping[str, list[Any]]) -> bytes:
    """A deletion notice: the partner's own copy of the subject's identifiers (as it received
    them, e.g. hashed) and why they must be deleted."""
    return orjson.dumps({"kind": "deletion", "partner_id": contract.partner_id,
                         "notice_id": notice_id, "reason": reason,
                         "identifiers": dict(identifiers)})


def destination_label(destination: Destination) -> str:
    return destination.url if destination.kind == "https" else f"directory:{destination.path}"


def render_snapshots(count: int, contract: PartnerContract | None = None) -> int:
    """Bench hook: gate, treat and encode ``count`` synthetic snapshots in batches of 500 as a
    run would; returns the bytes produced. ``make bench`` can time it against a raw CSV write
    of the same rows."""
    from services.export.contracts import parse_contract

    contract = contract or parse_contract("bench", {
        "name": "Bench", "required_purposes": ["marketing"], "format": "csv",
        "destination": {"kind": "directory", "path": "bench"},
        "fields": [
            {"name": "em", "source": "identifiers.email", "treatment": "sha256",
             "platform": "meta", "platform_field": "em"},
            {"name": "ph", "source": "identifiers.phone", "treatment": "sha256",
             "platform": "meta", "platform_field": "ph"},
            {"name": "fn", "source": "traits.first_name", "treatment": "sha256",
             "platform": "meta", "platform_field": "fn"},
            {"name": "purchases", "source": "computed.purchase_count"}]})
    allowed = {purpose: ConsentState(True, "granted") for purpose in contract.required_purposes}
    produced = 0
    for start in range(0, count, 500):
        snapshots = [_synthetic_snapshot(i) for i in range(start, min(start + 500, count))]
        batch = build_batch(contract, start // 500, snapshots,
                            {s["profile_id"]: allowed for s in snapshots})
        produced += len(encode_rows(contract, [row.values for row in batch.rows]))
    return produced


def _synthetic_snapshot(i: int) -> dict[str, Any]:
    return {"profile_id": f"p{i:09d}",
            "identifiers": {"email": [f"Customer.{i}@Example.com"],
                            "phone": [f"+35840{i % 10_000_000:07d}"]},
            "traits": {"first_name": f"Asiakas{i % 97}"},
            "computed": {"purchase_count": i % 13}, "segments": []}
