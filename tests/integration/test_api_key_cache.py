"""How late a revoked API key stops working: at once in the process that revoked it, and in
every other process once the verification cache (CDP_AUTH_CACHE_SECONDS, 5 s by default)
has run out. The cache saves a store round trip on every request."""

from __future__ import annotations

from services.common.auth import ApiKeys
from services.common.config import Settings


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_the_default_cache_lets_a_revoked_key_work_for_at_most_five_seconds():
    assert Settings.from_env({}).auth_cache_seconds <= 5.0


def test_a_key_revoked_elsewhere_is_refused_once_the_cache_time_has_passed(db, unique):
    clock = Clock()
    cache_seconds = Settings.from_env({}).auth_cache_seconds
    this_process = ApiKeys(db, cache_seconds, clock=clock)
    elsewhere = ApiKeys(db, cache_seconds)
    key_id, key = elsewhere.create(f"agent {unique}", ["agent"])
    assert this_process.authenticate(key).key_id == key_id

    elsewhere.revoke(key_id)
    clock.now += cache_seconds * 0.99
    assert this_process.authenticate(key) is not None  # still trusted from the cache
    clock.now += cache_seconds * 0.02
    assert this_process.authenticate(key) is None


def test_a_key_revoked_in_this_process_is_refused_at_once(db, unique):
    keys = ApiKeys(db, 3600.0)
    key_id, key = keys.create(f"agent {unique}", ["agent"])
    assert keys.authenticate(key) is not None
    assert keys.revoke(key_id)
    assert keys.authenticate(key) is None
