"""The preference centre's own records and what it shows from the export service, over real
HTTP against the identity, profile, consent and export processes (and the first three's
workers): an erasure clears the subject's sign-in challenges and sessions (by profile id and by
identifier); the page lists the partners the customer's data went to."""

from __future__ import annotations

import re
from types import SimpleNamespace

import pytest
import requests

from services.common.identifiers import normalise
from services.common.shredding import identifier_digest
from services.consent.preferences.store import CHALLENGES, SESSIONS
from services.export.export_store import ExportStore
from services.export.sealing import SecretBox
from tests.support.export_partner import put_partner
from tests.support.preference_stack import add_customer, preference_stack, read_code
from tests.support.processes import wait_until


@pytest.fixture(scope="module")
def stack(test_env, tmp_path_factory):
    with preference_stack(test_env, tmp_path_factory.mktemp("outbox"),
                          CDP_PREFERENCES_CODES_PER_IP="500") as running:
        yield running


def csrf(html: str) -> str:
    return re.search(r'name="csrf_token" value="([^"]+)"', html).group(1)


def visit(stack) -> tuple[requests.Session, str]:
    client = requests.Session()
    client.headers["Accept-Language"] = "en"
    return client, csrf(client.get(stack["consent"] + "/preferences", timeout=10).text)


def post(client, stack, path: str, **form) -> requests.Response:
    response = client.post(stack["consent"] + "/preferences" + path, data=form, timeout=10)
    assert response.status_code == 200, response.text
    return response


def sign_in(stack, identifier: str) -> tuple[requests.Session, str]:
    client, token = visit(stack)
    post(client, stack, "/code", csrf_token=token, identifier=identifier)
    page = post(client, stack, "/sign-in", csrf_token=token,
                code=read_code(stack["outbox"], identifier))
    return client, csrf(page.text)


def test_an_erasure_deletes_the_subjects_challenges_and_sessions_but_the_filing_ones_status(
        stack, api_keys, settings, db, unique):
    customer = add_customer(stack, api_keys, unique)
    phone = normalise("phone", customer["phone"], region="FI")
    erasing, token = sign_in(stack, customer["email"])
    sign_in(stack, customer["email"])  # a second signed-in session, say on another device
    awaiting_code, awaiting_token = visit(stack)  # a code asked for the phone, never entered
    post(awaiting_code, stack, "/code", csrf_token=awaiting_token, identifier=customer["phone"])
    read_code(stack["outbox"], phone)
    key = settings.privacy_digest_key.encode()
    subject = {"$or": [
        {"profile_id": customer["profile_id"]},
        {"identifier_digest": {"$in": [identifier_digest(key, "email", customer["email"]),
                                       identifier_digest(key, "phone", phone)]}}]}
    assert db[CHALLENGES].count_documents(subject) == 3
    assert db[SESSIONS].count_documents(
        {"identifier_value": {"$in": [customer["email"], phone]}}) == 3

    post(erasing, stack, "/erasure", csrf_token=token)
    page = post(erasing, stack, "/erasure/confirm", csrf_token=token,
                code=read_code(stack["outbox"], customer["email"]))
    assert 'id="erasure-status"' in page.text
    # nothing more is recorded for the customer once the erasure is filed
    assert 'name="purpose"' not in page.text
    switched = erasing.post(stack["consent"] + "/preferences/consents", timeout=10, data={
        "csrf_token": token, "purpose": "marketing_email", "state": "granted"})
    assert switched.status_code == 409, switched.text
    assert erasing.get(stack["consent"] + "/preferences/access/download",
                       timeout=10).status_code == 409

    def completed() -> bool:
        page = erasing.get(stack["consent"] + "/preferences", timeout=10).text
        return bool(re.search(r'id="erasure-status">[^<]*: completed<', page))

    wait_until(completed, 90, interval=1, what="the erasure completed across the services")
    assert db[CHALLENGES].count_documents(subject) == 0
    assert db[SESSIONS].count_documents(
        {"identifier_value": {"$in": [customer["email"], phone]}}) == 0
    kept = list(db[SESSIONS].find({"profile_id": customer["profile_id"]}))
    assert len(kept) == 1 and "erasure" in kept[0]["pending"]
    assert kept[0]["identifier_type"] is None and kept[0]["challenge_id"] is None
    assert 'name="identifier"' in awaiting_code.get(
        stack["consent"] + "/preferences", timeout=10).text  # back on the sign-in form


def test_the_page_lists_the_partners_the_customers_data_went_to(
        stack, api_keys, settings, db, unique):
    customer = add_customer(stack, api_keys, unique)
    client, _ = sign_in(stack, customer["email"])
    page = client.get(stack["consent"] + "/preferences", timeout=10).text
    assert "Your data has not been given to any partner." in page

    partner_id = f"ads-{unique}"
    put_partner(SimpleNamespace(url=stack["export"]), api_keys, partner_id,
                "https://ads.example.com/in", f"seg-{unique}")
    ExportStore(db, SecretBox.from_settings(settings)).record_deliveries(
        partner_id, f"run-{unique}", {customer["profile_id"]: {"em": ["hashed"]}})
    page = client.get(stack["consent"] + "/preferences", timeout=10).text
    listed = re.search(r'<ul id="partners">(.*?)</ul>', page, re.S).group(1)
    assert "Fake ads" in listed
    assert re.search(r"first \d{4}-\d\d-\d\d, last \d{4}-\d\d-\d\d", listed), listed
