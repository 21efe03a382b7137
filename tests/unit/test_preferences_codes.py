"""One-time codes, sessions, rate limits, languages and the outbox sender of the preference
centre, on in-memory repositories."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from services.common.config import ConfigError, Settings
from services.consent.preferences.codes import CodeRefused, OneTimeCodes
from services.consent.preferences.limits import CodeLimits
from services.consent.preferences.senders import CodeMessage, OutboxSender, build_sender
from services.consent.preferences.sessions import SessionManager, csrf_ok, session_key
from services.consent.preferences.texts import TEXTS, choose_language

NOW = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)


class Challenges:
    def __init__(self):
        self.items = {}

    def add(self, challenge):
        self.items[challenge.id] = challenge

    def get(self, challenge_id):
        return self.items.get(challenge_id)

    def count_attempt(self, challenge_id, max_attempts):
        found = self.items[challenge_id]
        if found.used or found.attempts >= max_attempts:
            return None
        self.items[challenge_id] = replace(found, attempts=found.attempts + 1)
        return self.items[challenge_id]

    def use(self, challenge_id):
        if self.items[challenge_id].used:
            return False
        self.items[challenge_id] = replace(self.items[challenge_id], used=True)
        return True


class Store(dict):
    def save(self, session):
        self[session.key] = session

    def delete(self, key):
        self.pop(key, None)


class Counters(dict):
    def increment(self, key, expires_at):
        self[key] = self.get(key, 0) + 1
        return self[key]


@pytest.fixture
def codes():
    return OneTimeCodes(Challenges(), b"secret", lifetime=timedelta(minutes=10), max_attempts=3)


def issue(codes, profile_id="p-1"):
    return codes.issue(identifier_type="email", identifier_digest="d", profile_id=profile_id,
                       now=NOW)


def test_a_code_signs_in_once_and_is_stored_only_hashed(codes):
    challenge, code = issue(codes)
    assert len(code) == 6 and code not in str(codes.challenges.items)
    assert codes.verify(challenge.id, code, NOW).profile_id == "p-1"
    with pytest.raises(CodeRefused, match="already used"):
        codes.verify(challenge.id, code, NOW)


def test_a_code_expires(codes):
    challenge, code = issue(codes)
    with pytest.raises(CodeRefused, match="expired"):
        codes.verify(challenge.id, code, NOW + timedelta(minutes=10))


def test_wrong_guesses_kill_the_code(codes):
    challenge, code = issue(codes)
    for _ in range(3):
        with pytest.raises(CodeRefused, match="wrong code"):
            codes.verify(challenge.id, "x" + code, NOW)
    with pytest.raises(CodeRefused, match="out of attempts"):
        codes.verify(challenge.id, code, NOW)


def test_an_unknown_identifier_gets_a_challenge_no_code_answers(codes):
    challenge, code = issue(codes, profile_id=None)
    assert code is None
    for guess in ("000000", "123456"):
        with pytest.raises(CodeRefused, match="wrong code"):
            codes.verify(challenge.id, guess, NOW)


def test_an_erasure_code_does_not_sign_in(codes):
    challenge, code = codes.issue(identifier_type="email", identifier_digest="d",
                                  profile_id="p-1", now=NOW, purpose="erasure")
    with pytest.raises(CodeRefused, match="no such challenge"):
        codes.verify(challenge.id, code, NOW)
    assert codes.verify(challenge.id, code, NOW, purpose="erasure").profile_id == "p-1"


def test_signing_in_replaces_the_session_and_its_csrf_token():
    manager = SessionManager(Store(), timedelta(minutes=30))
    cookie, anonymous = manager.anonymous(NOW)
    assert manager.sessions[session_key(cookie)] == anonymous and cookie not in manager.sessions
    new_cookie, signed_in = manager.sign_in(anonymous, profile_id="p-1", identifier_type="email",
                                            identifier_value="a@b.fi", now=NOW)
    assert new_cookie != cookie and signed_in.csrf != anonymous.csrf
    assert manager.current(cookie, NOW) is None
    assert manager.current(new_cookie, NOW).signed_in
    assert manager.current(new_cookie, NOW + timedelta(minutes=31)) is None


def test_csrf_needs_the_sessions_own_token():
    manager = SessionManager(Store(), timedelta(minutes=30))
    _, session = manager.anonymous(NOW)
    assert csrf_ok(session, session.csrf)
    assert not csrf_ok(session, None) and not csrf_ok(session, session.csrf + "x")
    assert not csrf_ok(None, session.csrf)


def test_code_requests_are_limited_per_identifier_and_per_address():
    limits, counters = CodeLimits(per_identifier=2, per_ip=3), Counters()
    asks = [limits.allows(counters, identifier_digest="a", ip="10.0.0.1", now=NOW)
            for _ in range(3)]
    assert asks == [True, True, False]
    assert limits.allows(counters, identifier_digest="b", ip="10.0.0.1", now=NOW) is False
    assert limits.allows(counters, identifier_digest="b", ip="10.0.0.2", now=NOW) is True
    assert limits.allows(counters, identifier_digest="a", ip="10.0.0.2",
                         now=NOW + timedelta(hours=1)) is True


def test_language_comes_from_the_switch_then_the_browser_then_finnish():
    assert choose_language("sv", "en-GB,en") == "sv"
    assert choose_language(None, "de-DE,sv;q=0.8,en;q=0.9") == "en"
    assert choose_language(None, "de-DE") == "fi"
    assert choose_language("xx", None) == "fi"


def test_every_language_has_every_text():
    assert set(TEXTS["fi"]) == set(TEXTS["sv"]) == set(TEXTS["en"])


def test_the_outbox_sender_writes_one_file_per_code(tmp_path):
    OutboxSender(tmp_path).send(CodeMessage("email", "a@b.fi", "123456", "sv", 10))
    [written] = tmp_path.glob("*.json")
    message = json.loads(written.read_text())
    assert message["code"] == "123456" and "123456" in message["text"]
    assert message["subject"] == "Din inloggningskod"


def test_a_real_sender_without_its_settings_refuses_to_start():
    with pytest.raises(ConfigError, match="CDP_PREFERENCES_SMS_URL"):
        build_sender(Settings.from_env({"CDP_PREFERENCES_SENDER": "sms"}))
    assert build_sender(Settings.from_env({"CDP_PREFERENCES_SENDER": "smtp+sms",
                                           "CDP_PREFERENCES_SMTP_HOST": "mail",
                                           "CDP_PREFERENCES_SMTP_FROM": "a@b.fi",
                                           "CDP_PREFERENCES_SMS_URL": "https://sms"}))
