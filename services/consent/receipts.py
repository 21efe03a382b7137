"""Signed receipts: a consent receipt states one ledger entry, an erasure receipt a completed
erasure (services/consent/privacy_receipts.py); the customer, or anyone, verifies either
without trusting Muisti's database.

Signed with **Ed25519** (the cryptography package), not HMAC: verification needs only the
public key, which ``GET /v1/consents/receipt-key`` publishes, so a customer, an auditor or a
court can check a receipt without being able to forge one. The private key is the 32-byte seed
in ``CDP_CONSENT_RECEIPT_KEY`` (base64). Without it a fixed development key is used and a
warning logged: fine for local runs and tests, never for production.

The signed bytes are the receipt without its ``signature`` field as canonical JSON (sorted
keys, no spaces, UTF-8); ``signature`` is base64url. The proof is included as a SHA-256 digest,
so the receipt carries no IP address or user agent yet pins them.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import hashlib
import logging
import sys
from dataclasses import dataclass
from pathlib import Path

import orjson
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from services.consent.ledger import Entry

log = logging.getLogger(__name__)

ALGORITHM = "Ed25519"
_DEVELOPMENT_SEED = hashlib.sha256(b"muisti development consent receipt key").digest()


def _iso(moment) -> str:
    return moment.isoformat().replace("+00:00", "Z")


def _canonical(data: dict) -> bytes:
    return orjson.dumps(data, option=orjson.OPT_SORT_KEYS)


def key_error(value: str) -> str | None:
    """Why ``value`` is not a usable CDP_CONSENT_RECEIPT_KEY, or None (empty is allowed)."""
    if not value:
        return None
    try:
        seed = base64.b64decode(value.strip(), validate=True)
    except (binascii.Error, ValueError):
        return "must be base64"
    return None if len(seed) == 32 else "must be a base64 32-byte Ed25519 seed"


@dataclass(frozen=True)
class ReceiptSigner:
    private_key: Ed25519PrivateKey

    @classmethod
    def from_setting(cls, value: str) -> ReceiptSigner:
        if not value:
            log.warning("CDP_CONSENT_RECEIPT_KEY is not set: consent receipts are signed with "
                        "the public development key")
            seed = _DEVELOPMENT_SEED
        else:
            seed = base64.b64decode(value.strip(), validate=True)
        return cls(Ed25519PrivateKey.from_private_bytes(seed))

    @property
    def public_key_bytes(self) -> bytes:
        return self.private_key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)

    @property
    def key_id(self) -> str:
        return hashlib.sha256(self.public_key_bytes).hexdigest()[:16]

    def public_key(self) -> dict:
        return {"algorithm": ALGORITHM, "key_id": self.key_id,
                "public_key": base64.urlsafe_b64encode(self.public_key_bytes).decode()}

    def sign(self, entry: Entry) -> dict:
        """The receipt for ``entry``, signed."""
        return self.sign_document({
            "receipt_id": entry.id,
            "subject": entry.subject.key,
            "purpose": entry.purpose,
            "state": entry.state,
            "kind": entry.kind,
            "reason": entry.reason,
            "channel": entry.channel,
            "source": entry.source,
            "collected_at": _iso(entry.collected_at),
            "recorded_at": _iso(entry.recorded_at),
            "notice_version": entry.notice_version,
            "proof_sha256": hashlib.sha256(_canonical(entry.proof)).hexdigest(),
        })

    def sign_document(self, body: dict) -> dict:
        """``body`` (plain JSON) with ``algorithm``, ``key_id`` and its ``signature`` added."""
        receipt = {**body, "algorithm": ALGORITHM, "key_id": self.key_id}
        signature = self.private_key.sign(_canonical(receipt))
        return {**receipt, "signature": base64.urlsafe_b64encode(signature).decode()}


def verify(receipt: dict, public_key: bytes) -> bool:
    """True when ``receipt`` was signed by the private key of ``public_key`` (raw 32 bytes)
    and has not been altered since."""
    if not isinstance(receipt, dict):
        return False
    body = {k: v for k, v in receipt.items() if k != "signature"}
    try:
        signature = base64.urlsafe_b64decode(receipt.get("signature") or "")
        Ed25519PublicKey.from_public_bytes(public_key).verify(signature, _canonical(body))
    except (InvalidSignature, ValueError, TypeError, binascii.Error, orjson.JSONEncodeError):
        return False
    return True


def parse_public_key(value: str) -> bytes:
    """The raw 32 bytes of a published public key: its base64url text, or the JSON document
    ``/v1/consents/receipt-key`` answers. Raises ValueError."""
    text = value.strip()
    if text.startswith("{"):
        text = str(orjson.loads(text).get("public_key") or "")
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        raise ValueError("the public key is not base64url") from None
    if len(raw) != 32:
        raise ValueError("an Ed25519 public key is 32 bytes")
    return raw


def main(argv: list[str] | None = None) -> int:
    """``python -m services.consent.receipts RECEIPT.json --public-key KEY``: checks a consent
    or erasure receipt offline. Exit 0 valid, 1 invalid or altered, 2 unusable input."""
    parser = argparse.ArgumentParser(prog="python -m services.consent.receipts",
                                     description="Verify a signed Muisti receipt.")
    parser.add_argument("receipt", help="the receipt JSON file (- for standard input)")
    parser.add_argument("--public-key", required=True, help=(
        "the platform's public key: base64url, or a file holding it or the JSON of "
        "/v1/consents/receipt-key"))
    args = parser.parse_args(argv)
    try:
        receipt_text = (sys.stdin.read() if args.receipt == "-"
                        else Path(args.receipt).read_text(encoding="utf-8"))
        key_text = args.public_key
        if Path(key_text).is_file():
            key_text = Path(key_text).read_text(encoding="utf-8")
        public_key = parse_public_key(key_text)
        receipt = orjson.loads(receipt_text)
    except (OSError, ValueError) as exc:  # orjson.JSONDecodeError is a ValueError
        print(f"cannot verify: {exc}", file=sys.stderr)
        return 2
    if verify(receipt, public_key):
        print(f"valid: signed by key {receipt.get('key_id')}")
        return 0
    print("INVALID: the receipt was altered or not signed with this key")
    return 1


if __name__ == "__main__":
    sys.exit(main())
