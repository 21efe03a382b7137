"""Web, store and phone events of one customer end in one profile an agent can look up by the
number the customer calls from, written the local way. Identity and profile services run as
separate processes against the real broker and store."""

from __future__ import annotations

import pytest
import requests

from services.common import topics
from services.common.bus import Outgoing, Producer
from services.common.envelope import new_envelope
from tests.support.hetus import valid_hetu
from tests.support.processes import ServiceApi, ServiceWorker, wait_until


@pytest.fixture(scope="module")
def stack(test_env):
    processes = [ServiceApi("identity", test_env).start(), ServiceApi("profile", test_env).start(),
                 ServiceWorker("services.identity", test_env, name="identity-worker").start(),
                 ServiceWorker("services.profile", test_env, name="profile-worker").start()]
    yield {"identity": processes[0].url, "profile": processes[1].url}
    for process in processes:
        process.stop()


def lookup(stack, api_keys, role="agent", **params):
    return requests.get(f"{stack['profile']}/v1/profiles", params=params, timeout=10,
                        headers={"Authorization": f"Bearer {api_keys[role]}",
                                 "X-Purpose": "customer_service"})


def test_agent_finds_web_purchase_and_call_history_by_the_local_phone_number(
        stack, api_keys, unique):
    collector = (api_keys["collector"], "")
    cookie, loyalty = f"c-{unique}", f"L-{unique}"
    # this run's own number: a broker shared with earlier runs replays their customers
    digits = f"{int(unique, 16) % 10**7:07d}"
    international, local = f"+358 44 {digits}", f"044 {digits[:3]} {digits[3:]}"
    batch = [
        {"type": "page", "anonymousId": cookie, "name": "Shoes", "messageId": f"v-{unique}",
         "properties": {"url": "https://shop.example.fi/shoes"}},
        {"type": "identify", "userId": loyalty, "anonymousId": cookie,
         "messageId": f"i-{unique}",
         "traits": {"firstName": "Aino", "lastName": "Korhonen", "email": f"aino.{unique}@ex.fi",
                    "phone": international, "address": {"city": "Tampere"}}},
        {"type": "track", "userId": loyalty, "event": "Order Completed",
         "messageId": f"o-{unique}", "properties": {"order_id": "12345", "total": 89.9}},
    ]
    assert requests.post(f"{stack['identity']}/v1/batch", json={"batch": batch}, auth=collector,
                         timeout=10).status_code == 200
    call = {"call_id": unique, "event": "offered", "caller_number": local,
            "queue": "orders"}
    assert requests.post(f"{stack['identity']}/v1/calls", json=call, auth=collector,
                         timeout=10).status_code == 200

    def complete():
        response = lookup(stack, api_keys, type="phone", value=local.replace(" ", ""))
        if response.status_code != 200:
            return None
        profile = response.json()
        return profile if profile["computed"]["calls"] == 1 and profile["computed"][
            "purchase_count"] == 1 and len(profile["timeline"]) == 4 else None

    profile = wait_until(complete, 60, interval=0.5, what="the whole story in one profile")
    assert profile["traits"]["first_name"]["value"] == "Aino"
    assert profile["traits"]["city"]["value"] == "Tampere"
    assert profile["computed"]["purchase_total"] == 89.9
    assert {e["channel"] for e in profile["timeline"]} == {"web", "phone"}
    assert profile["identifiers"]["user_id"] == [loyalty]

    by_id = requests.get(f"{stack['profile']}/v1/profiles/{profile['profile_id']}/timeline",
                         params={"channel": "phone"}, timeout=10,
                         headers={"Authorization": f"Bearer {api_keys['agent']}"}).json()
    assert [e["type"] for e in by_id["entries"]] == ["Call Started"]

    def agents_reads():
        log = requests.get(f"{stack['profile']}/v1/profiles/{profile['profile_id']}/access-log",
                           headers={"Authorization": f"Bearer {api_keys['dpo']}"},
                           timeout=10).json()
        return [e for e in log["entries"]
                if e["purpose"] == "customer_service" and e["roles"] == ["agent"]]

    wait_until(agents_reads, 30, what="the agent's reads in the access log")


def test_hetu_is_masked_for_agents_and_whole_for_supervisors(stack, api_keys, settings, unique):
    # the contact centre's CTI verified the caller and sends the hetu with the customer number
    hetu = valid_hetu(unique)
    envelope = new_envelope("Customer Verified", "phone",
                            identifiers={"user_id": f"H-{unique}", "hetu": hetu})
    producer = Producer(settings, "tests")
    producer.send([Outgoing(topics.EVENTS_PHONE, f"user_id:H-{unique}", envelope)])
    producer.close()

    def with_hetu(role):
        response = lookup(stack, api_keys, role, type="user_id", value=f"H-{unique}")
        profile = response.json() if response.status_code == 200 else {}
        return profile if profile.get("identifiers", {}).get("hetu") else None

    agent_view = wait_until(lambda: with_hetu("agent"), 60, interval=0.5, what="hetu on profile")
    assert agent_view["identifiers"]["hetu"] == [hetu[:6] + "*****"]
    assert with_hetu("supervisor")["identifiers"]["hetu"] == [hetu]


def test_lookup_with_an_unreadable_number_gets_422_and_an_unknown_one_404(stack, api_keys):
    assert lookup(stack, api_keys, type="phone", value="not a number").status_code == 422
    assert lookup(stack, api_keys, type="phone", value="0401110000").status_code == 404


def test_partner_role_cannot_read_profiles(stack, api_keys):
    assert lookup(stack, api_keys, "partner", type="phone", value="0401110000").status_code == 403
