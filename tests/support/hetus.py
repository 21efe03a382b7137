"""Valid Finnish personal identity codes for tests, different on every run: the broker keeps
earlier runs' events, which a new session's consumer groups replay, so a fixed code would
already belong to another profile."""

from __future__ import annotations

CHECK_CHARACTERS = "0123456789ABCDEFHJKLMNPRSTUVWXY"


def valid_hetu(seed: str) -> str:
    """A valid 20th-century hetu derived from the hex string ``seed``."""
    number = int(seed, 16)
    day, month, year = 1 + number % 28, 1 + number // 28 % 12, number // 336 % 100
    individual = 2 + number // 33_600 % 898
    digits = f"{day:02d}{month:02d}{year:02d}{individual:03d}"
    return f"{digits[:6]}-{digits[6:]}{CHECK_CHARACTERS[int(digits) % 31]}"
