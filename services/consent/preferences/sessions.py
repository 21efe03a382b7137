"""Preference-centre sessions, kept server-side: the browser holds only a random id (in an
HttpOnly, SameSite=Lax cookie), the store only that id's hash.

Every visitor gets an anonymous session first (it carries the CSRF token of the sign-in form and
the pending challenge); signing in ends it and starts a new session under a new id, so an id
planted in a victim's browser before sign-in (session fixation) never becomes a signed-in one.
Every form carries the session's CSRF token; a POST without the right one is refused.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Protocol

COOKIE = "muisti_preferences"


@dataclass(frozen=True)
class Session:
    key: str  # hash of the cookie value
    csrf: str
    expires_at: datetime
    profile_id: str | None = None  # None: not signed in
    identifier_type: str | None = None
    identifier_value: str | None = None  # where the erasure confirmation code goes
    challenge_id: str | None = None  # sign-in (or erasure) code awaited
    pending: dict = field(default_factory=dict)  # requests filed, shown back: kind → id

    @property
    def signed_in(self) -> bool:
        return self.profile_id is not None

    @property
    def reference(self) -> str:
        """Who acts in audit trails: the session, never the cookie value or the person."""
        return "customer-session:" + self.key[:16]


class Sessions(Protocol):
    def save(self, session: Session) -> None: ...

    def get(self, key: str) -> Session | None: ...

    def delete(self, key: str) -> None: ...


def session_key(cookie_value: str) -> str:
    return hashlib.sha256(cookie_value.encode()).hexdigest()


class SessionManager:
    def __init__(self, sessions: Sessions, lifetime: timedelta):
        self.sessions = sessions
        self.lifetime = lifetime

    def _new(self, now: datetime, **values) -> tuple[str, Session]:
        cookie = secrets.token_urlsafe(32)
        session = Session(key=session_key(cookie), csrf=secrets.token_urlsafe(32),
                          expires_at=now + self.lifetime, **values)
        self.sessions.save(session)
        return cookie, session

    def current(self, cookie: str | None, now: datetime) -> Session | None:
        """The live session of ``cookie`` (its lifetime renewed), or None."""
        if not cookie or len(cookie) > 128:
            return None
        session = self.sessions.get(session_key(cookie))
        if session is None or session.expires_at <= now:
            return None
        renewed = replace(session, expires_at=now + self.lifetime)
        self.sessions.save(renewed)
        return renewed

    def anonymous(self, now: datetime) -> tuple[str, Session]:
        return self._new(now)

    def sign_in(self, previous: Session, *, profile_id: str, identifier_type: str,
                identifier_value: str, now: datetime) -> tuple[str, Session]:
        """End ``previous`` and start a signed-in session under a new id and CSRF token."""
        self.sessions.delete(previous.key)
        return self._new(now, profile_id=profile_id, identifier_type=identifier_type,
                         identifier_value=identifier_value)

    def update(self, session: Session, **changes) -> Session:
        updated = replace(session, **changes)
        self.sessions.save(updated)
        return updated

    def end(self, session: Session) -> None:
        self.sessions.delete(session.key)


def csrf_ok(session: Session | None, presented: str | None) -> bool:
    return bool(session and presented and hmac.compare_digest(session.csrf, presented))
