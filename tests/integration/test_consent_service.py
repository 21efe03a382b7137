"""The consent API and worker against the real broker and store: decisions and checks,
receipts, objections for a bare phone number reaching its profile, merges where the stricter
state wins, and bad input answered with 4xx."""

from __future__ import annotations

import base64
from datetime import UTC, datetime, timedelta

import pytest
import requests

from services.common import topics
from services.common.bus import ensure_topics
from services.common.envelope import new_envelope
from services.consent.consent_store import CHANGES, LEDGER, STATE
from services.consent.privacy import Identifier
from services.consent.privacy_handlers import DoNotContactList
from services.consent.receipts import verify
from services.identity.graph import Identifier as GraphIdentifier
from services.identity.graph import resolve
from services.identity.graph_store import MongoGraph
from tests.support.kafka import produce, read_all
from tests.support.processes import ServiceApi, ServiceWorker, wait_until

MARKETING = ("marketing_email", "marketing_sms", "marketing_phone", "marketing_post")


@pytest.fixture(scope="module")
def consent_api(test_env, settings):
    ensure_topics(settings)  # the workers create them; the API may answer first
    identity = ServiceApi("identity", test_env).start()
    api = ServiceApi("consent", {**test_env, "CDP_IDENTITY_URL": identity.url}).start()
    yield api
    api.stop()
    identity.stop()


@pytest.fixture(scope="module")
def consent_worker(test_env):
    worker = ServiceWorker("services.consent", test_env, name="consent-worker").start()
    yield worker
    worker.stop()


def as_role(api_keys, role):
    return {"Authorization": f"Bearer {api_keys[role]}"}


def check(api, api_keys, profile_id, purpose):
    response = requests.get(f"{api.url}/v1/consents/{profile_id}/check", timeout=10,
                            params={"purpose": purpose}, headers=as_role(api_keys, "collector"))
    assert response.status_code == 200, response.text
    return response.json()


def decide(api, api_keys, body, role="collector"):
    return requests.post(f"{api.url}/v1/consents", json={"source": "test", **body},
                         headers=as_role(api_keys, role), timeout=10)


def changes_for(settings, key):
    return [m for m in read_all(settings, topics.CONSENT_CHANGES, idle_ms=300)
            if (m.get("profile_id") == key or m["identifiers"] and
                f"id:phone:{m['identifiers'].get('phone')}" == key)]


def test_a_recorded_decision_is_allowed_announced_and_its_receipt_verifies(
        consent_api, api_keys, settings, unique):
    profile = f"p-{unique}"
    assert check(consent_api, api_keys, profile, "marketing_email")["reason"] == (
        "default_by_legal_basis")
    body = {"profile_id": profile, "purpose": "marketing_email", "state": "granted",
            "decision_id": f"d-{unique}", "proof": {"ip": "192.0.2.10", "user_agent": "UA"}}
    response = decide(consent_api, api_keys, body)
    assert response.status_code == 201, response.text
    receipt = response.json()["receipts"][0]
    answer = check(consent_api, api_keys, profile, "marketing_email")
    assert answer == {"profile_id": profile, "purpose": "marketing_email", "allowed": True,
                      "state": "granted", "reason": "explicit_decision",
                      "decided_at": answer["decided_at"]}
    key = requests.get(f"{consent_api.url}/v1/consents/receipt-key", timeout=10,
                       headers=as_role(api_keys, "partner")).json()
    assert verify(receipt, base64.urlsafe_b64decode(key["public_key"]))
    retry = decide(consent_api, api_keys, body)
    assert retry.status_code == 200 and retry.json()["receipts"][0] == receipt
    announced = wait_until(lambda: changes_for(settings, profile), 30, interval=0.3,
                           what="Consent Changed")
    assert len({m["message_id"] for m in announced}) == 1
    assert announced[0]["payload"]["receipt_id"] == receipt["receipt_id"]
    assert announced[0]["payload"]["allowed"] is True
    overview = requests.get(f"{consent_api.url}/v1/consents/{profile}", timeout=10,
                            headers=as_role(api_keys, "agent")).json()
    history = overview["history"]
    assert [h["receipt_id"] for h in history] == [receipt["receipt_id"]]
    email = next(row for row in overview["consents"] if row["purpose"] == "marketing_email")
    assert email["allowed"] is True and set(email["titles"]) == {"fi", "sv", "en"}
    assert history[0]["proof_sealed"] is True


@pytest.mark.parametrize("body, status", [
    ({"profile_id": "x", "purpose": "astrology", "state": "granted"}, 400),
    ({"profile_id": "x", "purpose": "analytics"}, 400),
    ({"profile_id": "x", "proof": {"tc_string": "COtybn4PA_zT4K"}}, 400),
    ({"purpose": "analytics", "state": "granted"}, 422),
    ({"identifier": {"type": "phone", "value": "12"}, "purpose": "analytics",
      "state": "granted"}, 422),
    ({"profile_id": "x", "purpose": "analytics", "state": "maybe"}, 422),
])
def test_bad_decisions_are_refused_with_4xx(consent_api, api_keys, body, status):
    response = decide(consent_api, api_keys, body)
    assert response.status_code == status, response.text
    assert response.headers["Content-Type"] == "application/problem+json"


def test_a_partner_may_not_record_or_check(consent_api, api_keys):
    assert decide(consent_api, api_keys, {"profile_id": "x", "purpose": "analytics",
                                          "state": "granted"}, role="partner").status_code == 403
    assert requests.get(f"{consent_api.url}/v1/consents/x/check?purpose=analytics",
                        headers=as_role(api_keys, "partner"), timeout=10).status_code == 403


def test_an_objected_phone_number_is_denied_and_so_is_the_profile_it_turns_out_to_be(
        consent_api, consent_worker, api_keys, settings, unique):
    number = f"+35840{int(unique, 16) % 10**7:07d}"
    response = requests.post(f"{consent_api.url}/v1/objections", timeout=10,
                             headers=as_role(api_keys, "agent"),
                             json={"identifier": {"type": "phone", "value": number},
                                   "channel": "phone", "source": "do-not-call register"})
    assert response.status_code == 201, response.text
    for purpose in MARKETING:
        answer = requests.get(f"{consent_api.url}/v1/consents/by-identifier/check", timeout=10,
                              headers=as_role(api_keys, "collector"),
                              params={"type": "phone", "value": number,
                                      "purpose": purpose}).json()
        assert (answer["allowed"], answer["state"], answer["reason"]) == (
            False, "denied", "objection"), answer
    profile = f"p-{unique}"
    decide(consent_api, api_keys, {"profile_id": profile, "purpose": "marketing_phone",
                                   "state": "granted"})
    event = new_envelope("Call Started", "phone", identifiers={"phone": number}).resolved_to(
        profile)
    produce(settings, topics.EVENTS_RESOLVED, [event], key=lambda i, v: profile)
    wait_until(lambda: check(consent_api, api_keys, profile, "marketing_phone")["allowed"]
               is False, 60, interval=0.3, what="the objection reaching the profile")
    assert check(consent_api, api_keys, profile, "marketing_phone")["reason"] == "objection"
    assert check(consent_api, api_keys, profile, "marketing_email")["reason"] == "objection"


def test_an_objection_on_a_known_customers_number_reaches_their_profile_at_once(
        consent_api, api_keys, db, unique):
    number = f"+35850{int(unique, 16) % 10**7:07d}"
    profile = resolve(MongoGraph(db), [GraphIdentifier("phone", number),
                                       GraphIdentifier("email", f"known.{unique}@example.fi")],
                      message_id=f"m-{unique}", at=datetime.now(UTC)).profile_id

    response = requests.post(f"{consent_api.url}/v1/objections", timeout=10,
                             headers=as_role(api_keys, "agent"),
                             json={"identifier": {"type": "phone", "value": number},
                                   "channel": "phone", "source": "do-not-call register"})

    assert response.status_code == 201, response.text
    for purpose in MARKETING:  # no event carrying the number needed
        answer = check(consent_api, api_keys, profile, purpose)
        assert (answer["allowed"], answer["reason"]) == (False, "objection"), answer


def test_on_a_merge_the_stricter_state_wins_and_the_merged_profile_follows(
        consent_api, consent_worker, api_keys, settings, unique):
    survivor, merged = f"s-{unique}", f"m-{unique}"
    for profile, state in ((survivor, "granted"), (merged, "denied")):
        assert decide(consent_api, api_keys, {"profile_id": profile, "purpose": "marketing_sms",
                                              "state": state}).status_code == 201
    decide(consent_api, api_keys, {"profile_id": merged, "purpose": "analytics",
                                   "state": "granted"})
    merge = new_envelope("Profiles Merged", "system", message_id=f"merge-{unique}",
                         payload={"kind": "merge", "survivor": survivor, "merged": merged,
                                  "cause_message_id": "x"}).resolved_to(survivor)
    produce(settings, topics.IDENTITY_MERGES, [merge, merge], key=lambda i, v: survivor)
    wait_until(lambda: check(consent_api, api_keys, survivor, "marketing_sms")["allowed"]
               is False, 60, interval=0.3, what="the stricter state on the survivor")
    assert check(consent_api, api_keys, survivor, "marketing_sms")["reason"] == "merge_stricter"
    assert check(consent_api, api_keys, survivor, "analytics")["allowed"] is True
    followed = check(consent_api, api_keys, merged, "marketing_sms")
    assert followed["profile_id"] == survivor
    announced = wait_until(
        lambda: [m for m in changes_for(settings, survivor)
                 if m["payload"]["reason"] == "merge_stricter"], 30, interval=0.3,
        what="the merge announced")
    assert {m["payload"]["purpose"] for m in announced} == {"marketing_sms", "analytics"}
    # a later decision by the customer decides again
    decide(consent_api, api_keys, {"profile_id": merged, "purpose": "marketing_sms",
                                   "state": "granted"})
    assert check(consent_api, api_keys, survivor, "marketing_sms")["allowed"] is True


def test_an_objection_wins_over_a_grant_from_a_clock_running_fast(
        consent_api, api_keys, unique):
    profile = f"fast-{unique}"
    ahead = (datetime.now(UTC) + timedelta(minutes=4)).isoformat()
    assert decide(consent_api, api_keys, {"profile_id": profile, "purpose": "marketing_email",
                                          "state": "granted", "collected_at": ahead}
                  ).status_code == 201

    objected = requests.post(f"{consent_api.url}/v1/objections", timeout=10,
                             headers=as_role(api_keys, "agent"),
                             json={"profile_id": profile, "channel": "phone",
                                   "source": "contact centre"})

    assert objected.status_code == 201, objected.text
    for purpose in MARKETING:
        answer = check(consent_api, api_keys, profile, purpose)
        assert (answer["allowed"], answer["reason"]) == (False, "objection"), answer


def test_a_decision_on_a_hetu_is_kept_under_its_keyed_digest_never_in_the_clear(
        consent_api, api_keys, db, unique):
    code = "131052-308T"  # the tax administration's example code
    subject = {"type": "hetu", "value": code}
    recorded = decide(consent_api, api_keys, {"identifier": subject, "purpose": "marketing_sms",
                                              "state": "denied", "source": f"ivr-{unique}"})
    assert recorded.status_code == 201, recorded.text

    answer = requests.get(f"{consent_api.url}/v1/consents/by-identifier", timeout=10,
                          headers=as_role(api_keys, "agent"), params=subject).json()

    assert answer["subject"].startswith("id:hetu:hmac:")
    assert {c["purpose"]: c["state"] for c in answer["consents"]}["marketing_sms"] == "denied"
    for collection in (LEDGER, STATE, CHANGES):
        assert code not in repr(list(db[collection].find())), collection


def test_a_number_whose_objecting_owner_was_erased_is_still_not_called_for_marketing(
        consent_api, api_keys, settings, db, unique):
    number = f"+35845{int(unique, 16) % 10**7:07d}"
    # what the erasure of a customer who had objected leaves behind
    DoNotContactList(db, settings.privacy_digest_key.encode()).add(
        [Identifier("phone", number)], f"req-{unique}", datetime.now(UTC))

    def answer(purpose):
        return requests.get(f"{consent_api.url}/v1/consents/by-identifier/check", timeout=10,
                            headers=as_role(api_keys, "collector"),
                            params={"type": "phone", "value": number, "purpose": purpose}).json()

    assert (answer("marketing_phone")["allowed"], answer("marketing_phone")["reason"]) == (
        False, "objection")
    assert answer("analytics")["reason"] == "default_by_legal_basis"  # not direct marketing
