"""Valid Finnish personal identity codes for tests, different on every run: the broker keeps
earlier runs' events, which a new session's consumer groups replay, so a fixed code would
already belong to another profile. And a hetu protector whose data keys live in memory, for
tests without a store (its key store fake serves the crypto-shredding unit tests too)."""

from __future__ import annotations

import os

from services.common.hetu_protection import HetuProtector
from services.common.shredding import FieldCipher, MasterKey, SubjectKeys, WrappedKeyStore

CHECK_CHARACTERS = "0123456789ABCDEFHJKLMNPRSTUVWXY"


def valid_hetu(seed: str) -> str:
    """A valid 20th-century hetu derived from the hex string ``seed``."""
    number = int(seed, 16)
    day, month, year = 1 + number % 28, 1 + number // 28 % 12, number // 336 % 100
    individual = 2 + number // 33_600 % 898
    digits = f"{day:02d}{month:02d}{year:02d}{individual:03d}"
    return f"{digits[:6]}-{digits[6:]}{CHECK_CHARACTERS[int(digits) % 31]}"


class InMemoryKeys(WrappedKeyStore):
    def __init__(self):
        self.wrapped: dict[str, bytes] = {}

    def get(self, key_id):
        return self.wrapped.get(key_id)

    def add_if_absent(self, key_id, wrapped):
        self.wrapped.setdefault(key_id, wrapped)

    def delete(self, key_ids):
        return sum(self.wrapped.pop(key_id, None) is not None for key_id in key_ids)

    def pages(self, size):
        pairs = sorted(self.wrapped.items())
        for start in range(0, len(pairs), size):
            yield pairs[start:start + size]

    def replace_if_unchanged(self, key_id, old, new):
        if self.wrapped.get(key_id) != old:
            return False
        self.wrapped[key_id] = new
        return True


def in_memory_protector(digest_key: bytes, keys: WrappedKeyStore | None = None) -> HetuProtector:
    """A protector sealing under a fresh master key, its data keys in ``keys``."""
    return HetuProtector(digest_key, FieldCipher(SubjectKeys(keys or InMemoryKeys(),
                                                             MasterKey(os.urandom(32)))))
