"""A hetu an agent types into a call's notes never reaches Kafka: the identity API masks it
before it produces the call event."""

from __future__ import annotations

import pytest
import requests

from services.common import topics
from tests.support.hetus import valid_hetu
from tests.support.kafka import create_topic, read_all
from tests.support.processes import ServiceApi, wait_until


@pytest.fixture(scope="module")
def identity_api(test_env, settings):
    create_topic(settings, topics.EVENTS_PHONE)  # the API produces; workers create topics
    api = ServiceApi("identity", test_env).start()
    yield api
    api.stop()


def test_a_hetu_in_an_agents_call_notes_is_masked_before_the_event_is_produced(
        identity_api, api_keys, settings, unique):
    hetu, call_id = valid_hetu(unique), f"call-hetu-{unique}"
    response = requests.post(f"{identity_api.url}/v1/calls", auth=(api_keys["collector"], ""),
                             timeout=10, json={
                                 "call_id": call_id, "event": "ended",
                                 "caller_number": "040 765 4321",
                                 "notes": f"asiakas kertoi hetun {hetu}, tilaus 123456-7890"})
    assert response.status_code == 200, response.text

    event = wait_until(lambda: [m for m in read_all(settings, topics.EVENTS_PHONE)
                                if m["payload"].get("call_id") == call_id], 60, interval=0.5,
                       what="the call event on cdp.events.phone")[0]
    assert event["payload"]["notes"] == "asiakas kertoi hetun [hetu], tilaus 123456-7890"
    assert hetu not in str(event)
