"""Consent receipts: a signed statement of one ledger entry that the customer (or anyone)
can verify without trusting Muisti's database.

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

import base64
import binascii
import hashlib
import logging
from dataclasses import dataclass

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
        receipt = {
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
            "algorithm": ALGORITHM,
            "key_id": self.key_id,
        }
        signature = self.private_key.sign(_canonical(receipt))
        return {**receipt, "signature": base64.urlsafe_b64encode(signature).decode()}


def verify(receipt: dict, public_key: bytes) -> bool:
    """True when ``receipt`` was signed by the private key of ``public_key`` (raw 32 bytes)
    and has not been altered since."""
    body = {k: v for k, v in receipt.items() if k != "signature"}
    try:
        signature = base64.urlsafe_b64decode(receipt.get("signature") or "")
        Ed25519PublicKey.from_public_bytes(public_key).verify(signature, _canonical(body))
    except (InvalidSignature, ValueError, binascii.Error):
        return False
    return True
