"""Partner secrets encrypted at rest: signing secrets, pseudonym keys, endpoint credentials.

A secret is stored as ``{"sealed": 1, "nonce": b64, "ciphertext": b64}``: AES-256-GCM under a
key derived with HKDF-SHA256 from ``CDP_MASTER_KEY`` (info ``muisti export partner
secrets``, so it is independent of every other key derived from the master key). The
associated data is ``<partner id>/<secret name>``: a sealed value copied onto another partner
or into another field does not open. Only the export store seals and opens; the API never
returns a secret, sealed or not.

During a master-key rotation (``CDP_MASTER_KEY_PREVIOUS`` set, services.common.shredding) a
secret sealed under the previous key still opens, and :meth:`SecretBox.resealed` gives it
sealed under the current one: ``python -m services.export rewrap-secrets`` re-seals every
stored partner's secrets that way before the previous key is removed.
"""

from __future__ import annotations

import base64
from typing import Any

from cryptography.exceptions import InvalidTag

from services.common.shredding import RotatingCipher, master_keys

SEALED_VERSION = 1
DERIVATION_INFO = b"muisti export partner secrets"


class SecretUnreadable(ValueError):
    """A sealed secret that does not open: another master key, or tampered with."""


class SecretBox:
    """Seals and opens partner secrets under the key derived from the master key (and opens
    those still under the previous master key during a rotation)."""

    def __init__(self, master_key: bytes, previous: bytes | None = None):
        self._cipher = RotatingCipher(DERIVATION_INFO, master_key, previous)

    @classmethod
    def from_settings(cls, settings: Any) -> SecretBox:
        """From ``CDP_MASTER_KEY`` (and ``CDP_MASTER_KEY_PREVIOUS``); raises
        shredding.InvalidMasterKey when one is unusable."""
        return cls(*master_keys(settings))

    def seal(self, owner: str, name: str, secret: str | None) -> dict[str, Any] | None:
        if secret is None:
            return None
        nonce, ciphertext = self._cipher.encrypt(secret.encode(), _context(owner, name))
        return {"sealed": SEALED_VERSION, "nonce": _b64(nonce), "ciphertext": _b64(ciphertext)}

    def open(self, owner: str, name: str, sealed: dict[str, Any] | None) -> str | None:
        if sealed is None:
            return None
        return self._open(owner, name, sealed)[0]

    def resealed(self, owner: str, name: str, sealed: dict[str, Any]) -> dict[str, Any] | None:
        """``sealed`` sealed anew under the current master key, or None when it already is;
        raises SecretUnreadable when neither key opens it."""
        secret, current = self._open(owner, name, sealed)
        return None if current else self.seal(owner, name, secret)

    def _open(self, owner: str, name: str, sealed: Any) -> tuple[str, bool]:
        if not isinstance(sealed, dict) or sealed.get("sealed") != SEALED_VERSION:
            raise SecretUnreadable(f"{owner}/{name} is not a sealed secret")
        try:
            plain, current = self._cipher.decrypt(base64.b64decode(sealed["nonce"]),
                                                  base64.b64decode(sealed["ciphertext"]),
                                                  _context(owner, name))
        except (InvalidTag, KeyError, ValueError):
            raise SecretUnreadable(f"{owner}/{name} does not open under this master key") \
                from None
        return plain.decode(), current


def _context(owner: str, name: str) -> bytes:
    return f"{owner}/{name}".encode()


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()
