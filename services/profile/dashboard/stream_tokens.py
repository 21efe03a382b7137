"""Short-lived signed tokens that let a browser's EventSource open a live stream.

EventSource cannot send headers, so the API key cannot travel with it. The dashboard trades
its key (sent as ``X-API-Key``) for a token at ``POST /v1/dashboard/stream-token`` and opens
``/v1/dashboard/stream?token=...``. The token is an HMAC-SHA256-signed claim set (itsdangerous,
Flask's own signing library) naming the key id and exactly what the stream may carry (one
profile's change notices and/or the screen pops of one agent id, extension or queue), and it
expires ``ttl_seconds`` after issue: a token that leaks through a log is useless a minute later.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass

from itsdangerous import BadSignature, URLSafeSerializer

from services.profile.dashboard.live import Interest

SALT = "muisti.dashboard.stream"


class InvalidStreamToken(Exception):
    """The token is malformed, forged, signed with another secret, or expired."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class StreamGrant:
    """What a valid token allows: whose stream (key id) and which notices."""

    key_id: str
    interest: Interest
    expires_at: float
    tab_id: str | None = None


class StreamTokens:
    def __init__(self, secret: bytes, *, ttl_seconds: float = 60.0,
                 clock: Callable[[], float] = time.time):
        if len(secret) < 32:
            raise ValueError("the stream-token secret must be at least 32 bytes")
        self._serializer = URLSafeSerializer(
            secret, salt=SALT, signer_kwargs={"digest_method": hashlib.sha256})
        self.ttl_seconds = ttl_seconds
        self._clock = clock

    def issue(self, key_id: str, interest: Interest,
              tab_id: str | None = None) -> tuple[str, float]:
        """A token for ``interest`` on behalf of ``key_id`` (from the browser tab ``tab_id``)
        and its expiry (epoch seconds)."""
        expires_at = self._clock() + self.ttl_seconds
        claims = {"kid": key_id, "pid": interest.profile_id, "agent": interest.agent_id,
                  "ext": interest.extension, "queue": interest.queue, "tab": tab_id,
                  "exp": expires_at}
        return self._serializer.dumps(claims), expires_at

    def verify(self, token: str) -> StreamGrant:
        """The grant in ``token``; raises InvalidStreamToken saying why it is refused."""
        try:
            claims = self._serializer.loads(token)
        except BadSignature:
            raise InvalidStreamToken("the stream token is invalid") from None
        try:
            expires_at = float(claims["exp"])
            grant = StreamGrant(str(claims["kid"]), Interest(
                profile_id=claims["pid"], agent_id=claims["agent"],
                extension=claims["ext"], queue=claims["queue"]), expires_at, claims["tab"])
        except (KeyError, TypeError, ValueError):
            raise InvalidStreamToken("the stream token is invalid") from None
        if self._clock() >= expires_at:
            raise InvalidStreamToken("the stream token has expired; ask for a new one")
        return grant
