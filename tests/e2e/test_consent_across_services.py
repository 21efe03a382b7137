"""Consent enforced across services, with identity, profile and consent running as separate
processes on the real broker and store:

* special categories: a health trait sent without explicit consent never reaches the profile
  (the refusal is visible on it, by name); once the customer grants explicit consent, health
  traits of later events are kept, those of events from before the grant are not;
* a check by identifier answers with the decisions of the profile the identity graph resolves
  the identifier to, and a later objection on the number itself wins.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
import requests

from services.profile.profile_store import unpack
from tests.support.processes import ServiceApi, ServiceWorker, wait_until


@pytest.fixture(scope="module")
def stack(test_env):
    identity = ServiceApi("identity", test_env).start()
    with_identity = {**test_env, "CDP_IDENTITY_URL": identity.url}
    apis = {"identity": identity, "profile": ServiceApi("profile", test_env).start(),
            "consent": ServiceApi("consent", with_identity).start()}
    workers = [ServiceWorker(f"services.{name}", test_env, name=f"{name}-worker").start()
               for name in ("identity", "profile", "consent")]
    yield {name: api.url for name, api in apis.items()}
    for process in (*workers, *apis.values()):
        process.stop()


def identify(stack, api_keys, user_id, message_id, traits, timestamp=None):
    event = {"type": "identify", "userId": user_id, "messageId": message_id, "traits": traits}
    if timestamp:
        event["timestamp"] = timestamp.isoformat()
    response = requests.post(f"{stack['identity']}/v1/identify", json=event,
                             auth=(api_keys["collector"], ""), timeout=30)
    assert response.status_code == 200, response.text


def profile_when(stack, api_keys, user_id, predicate, what):
    def found():
        response = requests.get(f"{stack['profile']}/v1/profiles", timeout=30,
                                params={"type": "user_id", "value": user_id},
                                headers={"Authorization": f"Bearer {api_keys['agent']}",
                                         "X-Purpose": "customer_service"})
        if response.status_code != 200:
            return None
        return response.json() if predicate(response.json()) else None
    return wait_until(found, 90, interval=0.5, what=what)


def test_a_health_trait_is_stored_only_with_explicit_consent_from_then_on(
        stack, api_keys, db, unique):
    user_id = f"L-{unique}"
    identify(stack, api_keys, user_id, f"before-{unique}",
             {"firstName": "Aino", "allergies": "peanuts"})
    profile = profile_when(stack, api_keys, user_id,
                           lambda p: p["special_category_refusals"], "the refusal noted")
    assert profile["traits"]["first_name"]["value"] == "Aino"
    assert "allergies" not in profile["traits"]
    assert profile["special_category_refusals"][0]["trait"] == "allergies"
    assert profile["special_category_refusals"][0]["purpose"] == "special_health"
    assert "peanuts" not in str(unpack(db["profiles"].find_one({"_id": profile["profile_id"]})))

    granted = requests.post(f"{stack['consent']}/v1/consents", timeout=30, json={
        "profile_id": profile["profile_id"], "purpose": "special_health", "state": "granted",
        "source": "loyalty app health settings"},
        headers={"Authorization": f"Bearer {api_keys['collector']}"})
    assert granted.status_code == 201, granted.text
    wait_until(lambda: ((db["profile_consents"].find_one({"_id": profile["profile_id"]}) or {})
                        .get("purposes") or {}).get("special_health", {}).get("allowed"),
               60, interval=0.5, what="the grant followed by the profile service")

    identify(stack, api_keys, user_id, f"late-{unique}", {"allergies": "sesame"},
             timestamp=datetime.now(UTC) - timedelta(hours=1))
    identify(stack, api_keys, user_id, f"after-{unique}", {"allergies": "peanuts, sesame"})
    profile = profile_when(stack, api_keys, user_id, lambda p: "allergies" in p["traits"],
                           "the health trait kept after the grant")
    assert profile["traits"]["allergies"]["value"] == "peanuts, sesame"
    profile = profile_when(stack, api_keys, user_id,
                           lambda p: len(p["special_category_refusals"]) == 2,
                           "the event from before the grant refused")
    assert profile["special_category_refusals"][1]["message_id"] != profile[
        "special_category_refusals"][0]["message_id"]


def test_a_check_by_phone_number_follows_the_profile_it_belongs_to(stack, api_keys, unique):
    number = f"+35840{int(unique, 16) % 10**7:07d}"
    user_id = f"L-{unique}"
    identify(stack, api_keys, user_id, f"id-{unique}", {"firstName": "Eino", "phone": number})
    profile = profile_when(stack, api_keys, user_id, lambda p: p["identifiers"].get("phone"),
                           "the profile with the phone number")
    collector = {"Authorization": f"Bearer {api_keys['collector']}"}
    granted = requests.post(f"{stack['consent']}/v1/consents", timeout=30, headers=collector,
                            json={"profile_id": profile["profile_id"], "purpose": "marketing_sms",
                                  "state": "granted", "source": "loyalty app"})
    assert granted.status_code == 201, granted.text

    def by_number(purpose):
        response = requests.get(f"{stack['consent']}/v1/consents/by-identifier/check",
                                params={"type": "phone", "value": number, "purpose": purpose},
                                headers=collector, timeout=30)
        assert response.status_code == 200, response.text
        return response.json()

    answer = by_number("marketing_sms")
    assert (answer["allowed"], answer["reason"]) == (True, "explicit_decision")
    assert answer["resolved_profile_id"] == profile["profile_id"]
    objected = requests.post(f"{stack['consent']}/v1/objections", timeout=30, headers=collector,
                             json={"identifier": {"type": "phone", "value": number},
                                   "channel": "phone", "source": "do-not-call register"})
    assert objected.status_code == 201, objected.text
    answer = by_number("marketing_sms")
    assert (answer["allowed"], answer["reason"]) == (False, "objection")
