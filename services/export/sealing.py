"""Partner secrets encrypted at rest: signing secrets, pseudonym keys, endpoint credentials.

A secret is stored as ``{"sealed": 1, "nonce": b64, "ciphertext": b64}``: AES-256-GCM under a
key derived with HKDF-SHA256 from ``CDP_MASTER_KEY`` (info ``muisti export partner
secrets``, so it is independent of every other key derived from the master key). The
associated data is ``<partner id>/<secret name>``: a sealed value copied onto another partner
or into another field does not open. Only the export store seals and opens; the API never
returns a secret, sealed or not.
"""

from __future__ import annotations

import base64
import os
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.hashes import SHA256
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from services.common.shredding import parse_master_key

KEY_BYTES = 32
NONCE_BYTES = 12
SEALED_VERSION = 1
DERIVATION_INFO = b"muisti export partner secrets"


class SecretUnreadable(ValueError):
    """A sealed secret that does not open: another master key, or tampered with."""


class SecretBox:
    """Seals and opens partner secrets under the key derived from the master key."""

    def __init__(self, master_key: bytes):
        derived = HKDF(algorithm=SHA256(), length=KEY_BYTES, salt=None,
                       info=DERIVATION_INFO).derive(master_key)
        self._aead = AESGCM(derived)

    @classmethod
    def from_setting(cls, value: str) -> SecretBox:
        """From ``CDP_MASTER_KEY``; raises shredding.InvalidMasterKey when it is unusable."""
        return cls(parse_master_key(value))

    def seal(self, owner: str, name: str, secret: str | None) -> dict[str, Any] | None:
        if secret is None:
            return None
        nonce = os.urandom(NONCE_BYTES)
        ciphertext = self._aead.encrypt(nonce, secret.encode(), _context(owner, name))
        return {"sealed": SEALED_VERSION, "nonce": _b64(nonce), "ciphertext": _b64(ciphertext)}

    def open(self, owner: str, name: str, sealed: dict[str, Any] | None) -> str | None:
        if sealed is None:
            return None
        if not isinstance(sealed, dict) or sealed.get("sealed") != SEALED_VERSION:
            raise SecretUnreadable(f"{owner}/{name} is not a sealed secret")
        try:
            plain = self._aead.decrypt(base64.b64decode(sealed["nonce"]),
                                       base64.b64decode(sealed["ciphertext"]),
                                       _context(owner, name))
        except (InvalidTag, KeyError, ValueError):
            raise SecretUnreadable(f"{owner}/{name} does not open under this master key") \
                from None
        return plain.decode()


def _context(owner: str, name: str) -> bytes:
    return f"{owner}/{name}".encode()


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()
