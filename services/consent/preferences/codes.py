"""One-time sign-in codes: made at random, kept only as a keyed hash, valid for a while, used
once, and dead after a few wrong guesses. Plain Python over a ``Challenges`` repository (Mongo
in store.py, a dict in the unit tests).

A challenge is made for every sign-in attempt, whether or not the identifier belongs to a
profile: an unknown identifier's challenge simply has no profile and no code that could ever
match, so the page answers both alike and a guess is refused the same way.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Protocol

CODE_DIGITS = 6


@dataclass(frozen=True)
class Challenge:
    id: str
    identifier_type: str
    identifier_digest: str
    profile_id: str | None
    code_hash: str
    expires_at: datetime
    purpose: str = "sign_in"  # or "erasure": the second code confirming an erasure
    attempts: int = 0
    used: bool = False


class Challenges(Protocol):
    def add(self, challenge: Challenge) -> None: ...

    def get(self, challenge_id: str) -> Challenge | None: ...

    def count_attempt(self, challenge_id: str, max_attempts: int) -> Challenge | None:
        """Add one attempt unless the challenge is used or out of attempts; the updated
        challenge, or None when no attempt was left."""

    def use(self, challenge_id: str) -> bool:
        """Mark used; False when it already was (two tabs racing with the same code)."""


class CodeRefused(Exception):
    """The code does not sign in; ``reason`` is for logs, never shown (one message fits all)."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


def new_code() -> str:
    return f"{secrets.randbelow(10 ** CODE_DIGITS):0{CODE_DIGITS}d}"


def code_hash(secret: bytes, challenge_id: str, code: str) -> str:
    """Keyed and bound to its challenge: a stolen table is no list of codes to try."""
    message = f"{challenge_id}:{code.strip()}".encode()
    return hmac.new(secret, message, hashlib.sha256).hexdigest()


class OneTimeCodes:
    def __init__(self, challenges: Challenges, secret: bytes, *, lifetime: timedelta,
                 max_attempts: int):
        self.challenges = challenges
        self.secret = secret
        self.lifetime = lifetime
        self.max_attempts = max_attempts

    def issue(self, *, identifier_type: str, identifier_digest: str, profile_id: str | None,
              now: datetime, purpose: str = "sign_in") -> tuple[Challenge, str | None]:
        """A new challenge and the code to send (None for an unknown identifier: nothing is
        sent, and no code matches its challenge)."""
        challenge_id = secrets.token_urlsafe(24)
        code = new_code() if profile_id else None
        stored_hash = (code_hash(self.secret, challenge_id, code) if code
                       else "unknown:" + secrets.token_hex(32))  # matches no code
        challenge = Challenge(
            id=challenge_id, identifier_type=identifier_type,
            identifier_digest=identifier_digest, profile_id=profile_id, code_hash=stored_hash,
            expires_at=now + self.lifetime, purpose=purpose)
        self.challenges.add(challenge)
        return challenge, code

    def verify(self, challenge_id: str, code: str, now: datetime, *,
               purpose: str = "sign_in") -> Challenge:
        """The challenge the code answers, now used. Raises CodeRefused."""
        challenge = self.challenges.get(challenge_id)
        if challenge is None or challenge.purpose != purpose:
            raise CodeRefused("no such challenge")
        if challenge.used:
            raise CodeRefused("already used")
        if now >= challenge.expires_at:
            raise CodeRefused("expired")
        counted = self.challenges.count_attempt(challenge_id, self.max_attempts)
        if counted is None:
            raise CodeRefused("out of attempts")
        expected = code_hash(self.secret, challenge_id, code)
        if not hmac.compare_digest(expected, challenge.code_hash):
            raise CodeRefused("wrong code")
        if challenge.profile_id is None or not self.challenges.use(challenge_id):
            raise CodeRefused("already used")
        return challenge
