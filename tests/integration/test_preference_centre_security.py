"""The preference centre against hostile use, over real HTTP against the consent, identity and
profile processes: enumeration, brute-forced codes, CSRF, session fixation, XSS; and that a
switch on the page is a ledger decision made by the customer's session."""

from __future__ import annotations

import re

import pytest
import requests

from services.consent.preferences.sessions import COOKIE
from tests.support.preference_stack import add_customer, preference_stack, read_code

ATTEMPTS = 3


@pytest.fixture(scope="module")
def stack(test_env, tmp_path_factory):
    with preference_stack(test_env, tmp_path_factory.mktemp("outbox"),
                          CDP_PREFERENCES_CODE_ATTEMPTS=str(ATTEMPTS),
                          CDP_PREFERENCES_CODES_PER_IDENTIFIER="4",
                          CDP_PREFERENCES_CODES_PER_IP="500") as running:
        yield running


def visit(stack) -> tuple[requests.Session, str]:
    """A browser-like client on the sign-in page; returns it and the page's CSRF token."""
    client = requests.Session()
    client.headers["Accept-Language"] = "en-GB,en;q=0.9"
    page = client.get(stack["consent"] + "/preferences", timeout=10)
    assert page.status_code == 200
    return client, csrf(page.text)


def csrf(html: str) -> str:
    return re.search(r'name="csrf_token" value="([^"]+)"', html).group(1)


def post(client, stack, path: str, **form) -> requests.Response:
    return client.post(stack["consent"] + "/preferences" + path, data=form, timeout=10)


def sign_in(stack, customer) -> tuple[requests.Session, str]:
    client, token = visit(stack)
    post(client, stack, "/code", csrf_token=token, identifier=customer["email"])
    code = read_code(stack["outbox"], customer["email"])
    page = post(client, stack, "/sign-in", csrf_token=token, code=code)
    assert page.status_code == 200 and "Korhonen" in page.text, page.text
    return client, csrf(page.text)


def without_token(html: str) -> str:
    return re.sub(r'name="csrf_token" value="[^"]+"', "", html)


def test_known_and_unknown_identifiers_get_the_same_answer_and_only_the_known_a_code(
        stack, api_keys, unique):
    customer = add_customer(stack, api_keys, unique)
    answers = []
    for identifier in (customer["email"], f"nobody.{unique}@example.fi"):
        client, token = visit(stack)
        response = post(client, stack, "/code", csrf_token=token, identifier=identifier)
        answers.append((response.status_code, without_token(response.text)))
        wrong = post(client, stack, "/sign-in", csrf_token=token, code="000000")
        answers.append((wrong.status_code, without_token(wrong.text)))
    assert answers[0] == answers[2] and answers[1] == answers[3]
    assert answers[1][0] == 400
    read_code(stack["outbox"], customer["email"])
    assert not [p for p in stack["outbox"].glob("*.json") if "nobody" in p.read_text()]


def test_a_code_is_dead_after_too_many_wrong_guesses_even_the_right_one(
        stack, api_keys, unique):
    customer = add_customer(stack, api_keys, unique)
    client, token = visit(stack)
    post(client, stack, "/code", csrf_token=token, identifier=customer["email"])
    code = read_code(stack["outbox"], customer["email"])
    wrong = f"{(int(code) + 1) % 10**6:06d}"
    for _ in range(ATTEMPTS):
        assert post(client, stack, "/sign-in", csrf_token=token, code=wrong).status_code == 400
    refused = post(client, stack, "/sign-in", csrf_token=token, code=code)
    assert refused.status_code == 400 and "Korhonen" not in refused.text
    assert COOKIE in client.cookies


def test_codes_per_identifier_are_limited_alike_for_known_and_unknown(stack, api_keys, unique):
    customer = add_customer(stack, api_keys, unique)
    for identifier in (customer["phone"], f"+358 50 {int(unique, 16) % 10**7:07d}"):
        statuses = []
        for _ in range(5):
            client, token = visit(stack)
            statuses.append(post(client, stack, "/code", csrf_token=token,
                                 identifier=identifier).status_code)
        assert statuses == [200, 200, 200, 200, 429]


def test_every_form_refuses_a_missing_or_wrong_csrf_token(stack, api_keys, unique):
    customer = add_customer(stack, api_keys, unique)
    client, token = sign_in(stack, customer)
    forms = ("/code", "/sign-in", "/restart", "/consents", "/objection", "/access",
             "/rectification", "/erasure", "/erasure/confirm", "/sign-out")
    for path in forms:
        assert post(client, stack, path).status_code == 403, path
        assert post(client, stack, path, csrf_token=token[:-2] + "xx").status_code == 403, path
        assert post(requests.Session(), stack, path, csrf_token=token).status_code == 403, path
    page = client.get(stack["consent"] + "/preferences", timeout=10)
    assert "Korhonen" in page.text, "the refused forms changed nothing"


def test_signing_in_starts_a_new_session_so_a_planted_id_stays_anonymous(
        stack, api_keys, unique):
    customer = add_customer(stack, api_keys, unique)
    client, token = visit(stack)
    planted = client.cookies.get(COOKIE)
    post(client, stack, "/code", csrf_token=token, identifier=customer["email"])
    signed_in = post(client, stack, "/sign-in", csrf_token=token,
                     code=read_code(stack["outbox"], customer["email"]))
    assert "Korhonen" in signed_in.text
    assert client.cookies.get(COOKIE) != planted
    attacker = requests.Session()
    attacker.cookies.set(COOKIE, planted, path="/preferences")
    page = attacker.get(stack["consent"] + "/preferences", timeout=10)
    assert "Korhonen" not in page.text and 'name="identifier"' in page.text


def test_the_session_cookie_is_httponly_and_samesite(stack):
    response = requests.get(stack["consent"] + "/preferences", timeout=10)
    cookie = response.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Lax" in cookie and "Path=/preferences" in cookie


def test_markup_in_names_is_shown_as_text_under_a_strict_policy(stack, api_keys, unique):
    customer = add_customer(stack, api_keys, unique, name='<script>alert("x")</script><b>Aino')
    client, _ = sign_in(stack, customer)
    page = client.get(stack["consent"] + "/preferences", timeout=10)
    assert "<script>alert" not in page.text and "<b>Aino" not in page.text
    assert "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;&lt;b&gt;Aino" in page.text
    policy = page.headers["Content-Security-Policy"]
    assert "default-src 'none'" in policy and "script-src" not in policy
    assert page.headers["X-Content-Type-Options"] == "nosniff"


def test_a_switch_records_a_ledger_decision_by_the_customers_session(stack, api_keys, unique):
    customer = add_customer(stack, api_keys, unique)
    client, token = sign_in(stack, customer)
    response = post(client, stack, "/consents", csrf_token=token, purpose="marketing_email",
                    state="granted")
    assert response.status_code == 200 and "Receipt" in response.text
    ledger = requests.get(f"{stack['consent']}/v1/consents/{customer['profile_id']}",
                          headers={"Authorization": f"Bearer {api_keys['dpo']}"}, timeout=10)
    entry = ledger.json()["history"][-1]
    assert (entry["purpose"], entry["state"], entry["source"]) == (
        "marketing_email", "granted", "preference_centre")
    assert entry["receipt"]
    check = requests.get(f"{stack['consent']}/v1/consents/{customer['profile_id']}/check",
                         params={"purpose": "marketing_email"}, timeout=10,
                         headers={"Authorization": f"Bearer {api_keys['dpo']}"})
    assert check.json()["allowed"] is True


def test_a_signed_in_session_cannot_send_the_erasure_code_to_another_address(
        stack, api_keys, unique):
    customer = add_customer(stack, api_keys, unique)
    client, token = sign_in(stack, customer)  # say, a session cookie someone stole
    thief = f"thief.{unique}@example.fi"

    assert post(client, stack, "/code", csrf_token=token, identifier=thief).status_code == 403
    assert post(client, stack, "/erasure", csrf_token=token).status_code == 200

    read_code(stack["outbox"], customer["email"])
    assert not [p for p in stack["outbox"].glob("*.json") if thief in p.read_text()]


def test_erasure_codes_are_limited_like_sign_in_codes(stack, api_keys, unique):
    customer = add_customer(stack, api_keys, unique)
    client, token = sign_in(stack, customer)  # the identifier's first code of four
    for _ in range(3):
        post(client, stack, "/erasure", csrf_token=token)
        read_code(stack["outbox"], customer["email"])

    limited = post(client, stack, "/erasure", csrf_token=token)

    assert limited.status_code == 200 and "Too many attempts" in limited.text
    assert not [p for p in stack["outbox"].glob("*.json")
                if customer["email"] in p.read_text()]


def test_a_switch_to_an_unknown_state_is_refused_with_a_problem_not_a_500(
        stack, api_keys, unique):
    client, token = sign_in(stack, add_customer(stack, api_keys, unique))

    refused = post(client, stack, "/consents", csrf_token=token, purpose="marketing_email",
                   state="maybe")

    assert refused.status_code == 400
    assert refused.json()["detail"] == "state must be granted or denied"
