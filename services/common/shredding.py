"""Crypto-shredding: personal fields encrypted under per-subject data keys, so that deleting
one key makes every copy of those fields unreadable, wherever it was kept (an append-only
ledger, a retained Kafka message, a backup).

* ``MasterKey`` (``CDP_MASTER_KEY``, base64 of 32 bytes) wraps the data keys. It never
  leaves the process; the store only holds wrapped keys.
* ``SubjectKeys`` keeps one AES-256 data key per subject (``MongoWrappedKeys``: the
  ``subject_keys`` collection), wrapped with AES-256-GCM under the master key with the key id
  as associated data, so a wrapped key cannot be moved to another subject. ``destroy``
  deletes keys: that is erasure.
* ``FieldCipher.seal`` encrypts any JSON value with AES-256-GCM under a subject's key and
  returns a small JSON-safe document naming the key; ``open`` returns the value, or raises
  ``Shredded`` once the key is gone.
* Key ids: ``profile_key_id(profile_id)`` for a profile, ``identifier_key_id(...)`` for a bare
  identifier (built from its keyed digest, so the key id itself reveals nothing).
* ``identifier_digest`` is a keyed hash (HMAC-SHA-256 under ``CDP_PRIVACY_DIGEST_KEY``) of a
  normalised identifier, ``type:value``: what may be kept after erasure (suppression lists,
  erasure proofs) without keeping the identifier. Every service computes the same digest, so
  an erasure proof can be checked against the identity service's suppression list.

Data keys are not cached between calls: a key destroyed by one process must stop decrypting
in every other at once.

Rotating the master key (``MasterKey.from_settings``):

1. set the new key as ``CDP_MASTER_KEY`` and the old one as ``CDP_MASTER_KEY_PREVIOUS`` on
   every service and restart them: new data keys are wrapped under the new key, old ones
   still open under the previous;
2. ``python -m services.common.shredding rewrap`` (same settings) wraps every stored data key
   under the new key; it is resumable and safe beside running services (a key is replaced
   only if it is unchanged since read, so a key erased meanwhile stays erased) and prints a
   JSON report; exit 1 if a key opens under neither (it is left as it is); the export
   service's partner secrets, sealed under another sub-key of the same master key
   (``RotatingCipher``), are re-sealed by ``python -m services.export rewrap-secrets``;
3. remove ``CDP_MASTER_KEY_PREVIOUS`` everywhere.

``python -m services.common.shredding`` alone prints a fresh master key.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime
from typing import Any

import orjson
import pymongo.errors
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.hashes import SHA256
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from pymongo.database import Database

from services.common.store import delete_by_ids, documents_after

KEY_BYTES = 32
WRAPPING_PURPOSE = b"muisti data-key wrapping"
NONCE_BYTES = 12
SEALED_VERSION = 1


class InvalidMasterKey(ValueError):
    """The configured master key is missing or not base64 of 32 bytes."""


class Shredded(LookupError):
    """The data key of a sealed value is gone: the value was erased and cannot be read."""

    def __init__(self, key_id: str):
        super().__init__(f"the data key {key_id!r} was destroyed; the value is erased")
        self.key_id = key_id


class RotatingCipher:
    """AES-256-GCM under a key derived (HKDF-SHA256, ``purpose`` as info) from the master key,
    and during a rotation from ``CDP_MASTER_KEY_PREVIOUS`` too, which only opens: the one
    construction for every key derived from the master key (the data-key wrapping here, the
    export service's partner secrets), so one rotation procedure covers them all."""

    def __init__(self, purpose: bytes, raw: bytes, previous: bytes | None = None):
        for key in (raw, previous or raw):
            if len(key) != KEY_BYTES:
                raise InvalidMasterKey(
                    f"the master key must be {KEY_BYTES} bytes, not {len(key)}")
        self._current = AESGCM(_derive(raw, purpose))
        self._previous = AESGCM(_derive(previous, purpose)) if previous else None

    def encrypt(self, plaintext: bytes, associated: bytes) -> tuple[bytes, bytes]:
        """(nonce, ciphertext) under the current key."""
        nonce = os.urandom(NONCE_BYTES)
        return nonce, self._current.encrypt(nonce, plaintext, associated)

    def decrypt(self, nonce: bytes, ciphertext: bytes, associated: bytes) -> tuple[bytes, bool]:
        """The plaintext and whether the current key (rather than the previous) opened it;
        raises InvalidTag when neither did."""
        try:
            return self._current.decrypt(nonce, ciphertext, associated), True
        except InvalidTag:
            if self._previous is None:
                raise
        return self._previous.decrypt(nonce, ciphertext, associated), False


class MasterKey:
    """The process's master key, used (through a derived sub-key) to wrap data keys; during a
    rotation also the previous master key, which only unwraps."""

    def __init__(self, raw: bytes, previous: bytes | None = None):
        self._cipher = RotatingCipher(WRAPPING_PURPOSE, raw, previous)

    @classmethod
    def from_setting(cls, value: str) -> MasterKey:
        """Parse ``CDP_MASTER_KEY``; raises InvalidMasterKey with the reason."""
        return cls(parse_master_key(value))

    @classmethod
    def from_settings(cls, settings: Any) -> MasterKey:
        """``CDP_MASTER_KEY`` with ``CDP_MASTER_KEY_PREVIOUS`` when a rotation is under way;
        raises InvalidMasterKey with the reason."""
        return cls(*master_keys(settings))

    def wrap(self, key_id: str, data_key: bytes) -> bytes:
        nonce, sealed = self._cipher.encrypt(data_key, key_id.encode())
        return nonce + sealed

    def unwrap(self, key_id: str, wrapped: bytes) -> bytes:
        """The data key; raises InvalidTag when neither the master key nor the previous one
        wrapped it."""
        return self._unwrap(key_id, wrapped)[0]

    def rewrapped(self, key_id: str, wrapped: bytes) -> bytes | None:
        """``wrapped`` wrapped anew under the master key, or None when it already is.
        Raises InvalidTag when neither key opens it."""
        data_key, current = self._unwrap(key_id, wrapped)
        return None if current else self.wrap(key_id, data_key)

    def _unwrap(self, key_id: str, wrapped: bytes) -> tuple[bytes, bool]:
        return self._cipher.decrypt(wrapped[:NONCE_BYTES], wrapped[NONCE_BYTES:],
                                    key_id.encode())


def parse_master_key(value: str) -> bytes:
    """The 32 raw bytes of a base64 master key; raises InvalidMasterKey."""
    if not value:
        raise InvalidMasterKey("CDP_MASTER_KEY is not set (base64 of 32 random bytes; "
                               "generate one with: python -m services.common.shredding)")
    try:
        raw = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidMasterKey("the master key is not valid base64") from None
    if len(raw) != KEY_BYTES:
        raise InvalidMasterKey(f"the master key must decode to {KEY_BYTES} bytes, not {len(raw)}")
    return raw


def master_keys(settings: Any) -> tuple[bytes, bytes | None]:
    """The raw ``CDP_MASTER_KEY`` and, during a rotation, ``CDP_MASTER_KEY_PREVIOUS``;
    raises InvalidMasterKey."""
    previous = settings.master_key_previous
    return (parse_master_key(settings.master_key),
            parse_master_key(previous) if previous else None)


def new_master_key() -> str:
    """A fresh base64 master key, for ``CDP_MASTER_KEY``."""
    return base64.b64encode(os.urandom(KEY_BYTES)).decode()


def _derive(raw: bytes, purpose: bytes) -> bytes:
    return HKDF(algorithm=SHA256(), length=KEY_BYTES, salt=None, info=purpose).derive(raw)


def identifier_digest(digest_key: bytes, type_: str, value: str) -> str:
    """Keyed hash of a normalised identifier: equal identifiers give equal digests, and
    without the key a digest cannot be tested against guessed values."""
    return hmac.new(digest_key, f"{type_}:{value}".encode(), hashlib.sha256).hexdigest()


def profile_key_id(profile_id: str) -> str:
    return f"profile:{profile_id}"


def identifier_key_id(digest_key: bytes, type_: str, value: str) -> str:
    return f"identifier:{identifier_digest(digest_key, type_, value)}"


class WrappedKeyStore:
    """Where wrapped data keys live. ``MongoWrappedKeys`` is the real one; unit tests use an
    in-memory subclass."""

    def get(self, key_id: str) -> bytes | None:
        raise NotImplementedError

    def add_if_absent(self, key_id: str, wrapped: bytes) -> None:
        """Store ``wrapped`` unless ``key_id`` already has a key (the first writer wins)."""
        raise NotImplementedError

    def delete(self, key_ids: list[str]) -> int:
        """Delete the keys; returns how many existed."""
        raise NotImplementedError

    def pages(self, size: int) -> Iterator[list[tuple[str, bytes]]]:
        """Every (key id, wrapped key) pair, ``size`` at a time."""
        raise NotImplementedError

    def replace_if_unchanged(self, key_id: str, old: bytes, new: bytes) -> bool:
        """Store ``new`` for ``key_id`` only if it still holds ``old`` (never re-creates a
        destroyed key); True when replaced."""
        raise NotImplementedError


class MongoWrappedKeys(WrappedKeyStore):
    """Wrapped keys in the ``subject_keys`` collection, ``_id`` = key id."""

    COLLECTION = "subject_keys"

    def __init__(self, db: Database):
        self._keys = db[self.COLLECTION]

    def get(self, key_id: str) -> bytes | None:
        doc = self._keys.find_one({"_id": key_id})
        return None if doc is None else bytes(doc["wrapped"])

    def add_if_absent(self, key_id: str, wrapped: bytes) -> None:
        try:
            self._keys.insert_one({"_id": key_id, "wrapped": wrapped,
                                   "created_at": datetime.now(UTC)})
        except pymongo.errors.DuplicateKeyError:
            pass

    def delete(self, key_ids: list[str]) -> int:
        return delete_by_ids(self._keys, key_ids)

    def pages(self, size: int) -> Iterator[list[tuple[str, bytes]]]:
        for docs in documents_after(self._keys, None, size):
            yield [(doc["_id"], bytes(doc["wrapped"])) for doc in docs]

    def replace_if_unchanged(self, key_id: str, old: bytes, new: bytes) -> bool:
        result = self._keys.update_one({"_id": key_id, "wrapped": old},
                                       {"$set": {"wrapped": new,
                                                 "rewrapped_at": datetime.now(UTC)}})
        return result.modified_count == 1


class SubjectKeys:
    """Per-subject AES-256 data keys, kept wrapped under the master key."""

    def __init__(self, store: WrappedKeyStore, master: MasterKey):
        self._store = store
        self._master = master

    def key(self, key_id: str, *, create: bool) -> bytes | None:
        """The data key of ``key_id``; with ``create``, made on first use (two processes
        creating it at once agree on one: the first insert wins). None when absent."""
        wrapped = self._store.get(key_id)
        if wrapped is None and create:
            self._store.add_if_absent(
                key_id, self._master.wrap(key_id, AESGCM.generate_key(bit_length=256)))
            wrapped = self._store.get(key_id)
        if wrapped is None:
            return None
        return self._master.unwrap(key_id, wrapped)

    def destroy(self, key_ids: Iterable[str]) -> int:
        """Delete the keys (idempotent): whatever was sealed under them is now unreadable.
        Returns how many existed."""
        ids = sorted(set(key_ids))
        return self._store.delete(ids) if ids else 0

    def rewrap_all(self, batch: int = 500) -> dict[str, Any]:
        """Wrap every stored data key under the current master key (a rotation's second step;
        idempotent and resumable). Returns counts, and the ids of keys neither master key
        opens (left untouched)."""
        report: dict[str, Any] = {"scanned": 0, "rewrapped": 0, "already_current": 0,
                                  "changed_meanwhile": 0, "unreadable": []}
        for page in self._store.pages(batch):
            for key_id, wrapped in page:
                report["scanned"] += 1
                try:
                    fresh = self._master.rewrapped(key_id, wrapped)
                except InvalidTag:
                    report["unreadable"].append(key_id)
                    continue
                if fresh is None:
                    report["already_current"] += 1
                elif self._store.replace_if_unchanged(key_id, wrapped, fresh):
                    report["rewrapped"] += 1
                else:  # destroyed (erased) or rewrapped by another run since it was read
                    report["changed_meanwhile"] += 1
        return report


class FieldCipher:
    """Seal and open personal values under subject keys."""

    def __init__(self, keys: SubjectKeys):
        self._keys = keys

    def seal(self, key_id: str, value: Any) -> dict[str, Any]:
        """``value`` (anything orjson serialises) encrypted under ``key_id``'s data key,
        created if needed. The result is a plain document, safe in JSON and BSON."""
        data_key = self._keys.key(key_id, create=True)
        nonce = os.urandom(NONCE_BYTES)
        ciphertext = AESGCM(data_key).encrypt(nonce, orjson.dumps(value), key_id.encode())
        return {"sealed": SEALED_VERSION, "key_id": key_id,
                "ciphertext": base64.b64encode(nonce + ciphertext).decode()}

    def open(self, sealed: dict[str, Any]) -> Any:
        """The value sealed by ``seal``. Raises Shredded when its key was destroyed and
        ValueError when the document is not a sealed value or was tampered with."""
        if not is_sealed(sealed):
            raise ValueError("not a sealed value")
        key_id = sealed["key_id"]
        data_key = self._keys.key(key_id, create=False)
        if data_key is None:
            raise Shredded(key_id)
        blob = base64.b64decode(sealed["ciphertext"])
        try:
            plain = AESGCM(data_key).decrypt(blob[:NONCE_BYTES], blob[NONCE_BYTES:],
                                             key_id.encode())
        except InvalidTag:
            raise ValueError("the sealed value does not match its key") from None
        return orjson.loads(plain)


def is_sealed(value: Any) -> bool:
    return (isinstance(value, dict) and value.get("sealed") == SEALED_VERSION
            and isinstance(value.get("key_id"), str) and isinstance(value.get("ciphertext"), str))


def main(argv: list[str] | None = None) -> int:
    """``python -m services.common.shredding`` prints a new master key; ``... rewrap``
    re-wraps every data key under ``CDP_MASTER_KEY`` (see the module docstring)."""
    import argparse
    import json
    import sys

    from services.common import store
    from services.common.config import ConfigError, Settings

    parser = argparse.ArgumentParser(prog="python -m services.common.shredding",
                                     description="Master keys for crypto-shredding.")
    parser.add_argument("action", nargs="?", choices=("new-key", "rewrap"), default="new-key",
                        help="new-key (default): print a fresh CDP_MASTER_KEY; rewrap: wrap "
                             "every stored data key under CDP_MASTER_KEY, opening those still "
                             "under CDP_MASTER_KEY_PREVIOUS")
    args = parser.parse_args(argv)
    if args.action == "new-key":
        print(new_master_key())
        return 0
    try:
        settings = Settings.from_env()
        master = MasterKey.from_settings(settings)
    except (ConfigError, InvalidMasterKey) as exc:
        print(f"cannot rewrap: {exc}", file=sys.stderr)
        return 2
    client = store.connect(settings)
    try:
        report = SubjectKeys(MongoWrappedKeys(store.database(client, settings)),
                             master).rewrap_all()
    finally:
        client.close()
    print(json.dumps(report, indent=2))
    return 1 if report["unreadable"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
