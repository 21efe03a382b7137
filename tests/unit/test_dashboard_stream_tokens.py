"""Stream tokens: signed, bound to a key and to what the stream carries, short-lived."""

from __future__ import annotations

import pytest

from services.profile.dashboard.live import Interest
from services.profile.dashboard.stream_tokens import InvalidStreamToken, StreamTokens

SECRET = b"s" * 32


class Clock:
    def __init__(self, now: float = 1_700_000_000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_a_token_grants_the_key_and_interest_it_was_issued_for():
    tokens = StreamTokens(SECRET, clock=Clock())
    interest = Interest(profile_id="p1", extension="2042")
    token, expires_at = tokens.issue("key-1", interest, tab_id="tab-a")

    grant = tokens.verify(token)
    assert grant.key_id == "key-1" and grant.tab_id == "tab-a"
    assert grant.interest == interest
    assert grant.expires_at == expires_at


def test_a_token_expires_after_its_lifetime():
    clock = Clock()
    tokens = StreamTokens(SECRET, ttl_seconds=60, clock=clock)
    token, _ = tokens.issue("key-1", Interest(profile_id="p1"))

    clock.now += 59
    assert tokens.verify(token).key_id == "key-1"
    clock.now += 1
    with pytest.raises(InvalidStreamToken, match="expired"):
        tokens.verify(token)


def test_a_token_whose_claims_were_changed_is_refused():
    tokens = StreamTokens(SECRET, clock=Clock())
    token, _ = tokens.issue("key-1", Interest(profile_id="p1"))
    claims, _, signature = token.rpartition(".")
    forged = claims[:-2] + ("AA" if not claims.endswith("AA") else "BB") + "." + signature
    with pytest.raises(InvalidStreamToken, match="invalid"):
        tokens.verify(forged)


def test_a_token_signed_with_another_secret_is_refused():
    clock = Clock()
    token, _ = StreamTokens(b"o" * 32, clock=clock).issue("key-1", Interest(profile_id="p1"))
    with pytest.raises(InvalidStreamToken, match="invalid"):
        StreamTokens(SECRET, clock=clock).verify(token)


@pytest.mark.parametrize("garbage", ["", "abc", "a.b.c", "x" * 500])
def test_garbage_is_refused_as_invalid(garbage):
    with pytest.raises(InvalidStreamToken):
        StreamTokens(SECRET, clock=Clock()).verify(garbage)


def test_a_short_secret_is_refused():
    with pytest.raises(ValueError):
        StreamTokens(b"short")
