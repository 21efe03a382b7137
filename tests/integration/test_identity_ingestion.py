"""Identity ingestion over HTTP against the real broker: official SDKs, limits, bad input."""

from __future__ import annotations

import gzip
import uuid

import orjson
import pytest
import requests

from services.common import topics
from services.common.identifiers import is_hetu_digest
from tests.support.hetus import valid_hetu
from tests.support.kafka import read_all, read_records
from tests.support.processes import ServiceApi, wait_until

# times whose UTC moment no datetime holds, and one a sentAt of year 1 once moved to year 4050
BAD_TIMES = [{"timestamp": "0001-01-01T00:00:00+02:00"},
             {"timestamp": "9999-12-31T23:00:00-05:00"},
             {"timestamp": "2024-05-01T10:00:00Z", "sentAt": "0001-01-01T00:00:00Z"},
             {"timestamp": "1999-12-31T23:59:59Z"}]


@pytest.fixture(scope="module")
def identity_api(test_env):
    api = ServiceApi("identity", test_env).start()
    yield api
    api.stop()


@pytest.fixture
def collector(api_keys):
    return (api_keys["collector"], "")


def events_with(settings, topic: str, predicate, count: int = 1, timeout: float = 30):
    def found():
        matches = [m for m in read_all(settings, topic, idle_ms=300) if predicate(m)]
        return matches if len(matches) >= count else None

    return wait_until(found, timeout, interval=0.5, what=f"{count} matching events on {topic}")


def test_official_segment_sdk_delivers_identify_and_track_to_the_web_topic(
        identity_api, api_keys, settings, unique):
    from segment.analytics import Client

    errors = []
    client = Client(write_key=api_keys["collector"], host=identity_api.url, sync_mode=True,
                    on_error=lambda error, batch: errors.append(error), max_retries=1)
    user = f"loyalty-{unique}"
    client.identify(user, {"email": f"Anna.{unique}@Example.com", "phone": "040 123 4567",
                           "name": "Anna Virtanen"})
    client.track(user, "Order Completed", {"order_id": "12345", "total": 59.9})
    client.flush()
    assert not errors
    found = events_with(settings, topics.EVENTS_WEB,
                        lambda m: m.get("identifiers", {}).get("user_id") == user, 2)
    by_type = {m["type"]: m for m in found}
    assert by_type["Identify"]["identifiers"]["email"] == f"anna.{unique}@example.com"
    assert by_type["Identify"]["identifiers"]["phone"] == "+358401234567"
    assert by_type["Order Completed"]["payload"]["properties"]["order_id"] == "12345"
    assert "library" in by_type["Order Completed"]["payload"]["context"]


def test_official_rudderstack_sdk_delivers_gzip_batches(identity_api, api_keys, settings, unique):
    from rudderstack.analytics.client import Client

    errors = []
    client = Client(write_key=api_keys["collector"], host=identity_api.url, sync_mode=True,
                    gzip=True, on_error=lambda error, batch: errors.append(error), max_retries=1)
    anonymous = f"cookie-{unique}"
    client.page(anonymous_id=anonymous, name="Shoes", properties={"url": "https://shop/shoes"})
    client.track(anonymous_id=anonymous, event="Product Viewed", properties={"sku": "S-1"})
    client.flush()
    assert not errors
    found = events_with(settings, topics.EVENTS_WEB,
                        lambda m: m.get("identifiers", {}).get("anonymous_id") == anonymous, 2)
    assert sorted(m["type"] for m in found) == ["Page Viewed", "Product Viewed"]


def test_retried_message_keeps_its_message_id_so_consumers_apply_it_once(
        identity_api, collector, settings, unique):
    message = {"userId": f"u-{unique}", "event": "Email Opened", "messageId": f"m-{unique}"}
    for _ in range(2):
        assert requests.post(f"{identity_api.url}/v1/track", json=message, auth=collector,
                             timeout=10).status_code == 200
    found = events_with(settings, topics.EVENTS_WEB,
                        lambda m: m["message_id"] == f"m-{unique}", 2)
    assert {m["message_id"] for m in found} == {f"m-{unique}"}


def test_card_number_in_free_text_is_redacted_before_it_reaches_kafka(
        identity_api, collector, settings, unique):
    response = requests.post(f"{identity_api.url}/v1/track", auth=collector, timeout=10, json={
        "userId": f"u-{unique}", "event": "Feedback Submitted",
        "properties": {"text": "my card 4111 1111 1111 1111 was charged twice"}})
    assert response.status_code == 200
    found = events_with(settings, topics.EVENTS_WEB,
                        lambda m: m.get("identifiers", {}).get("user_id") == f"u-{unique}")
    text = found[0]["payload"]["properties"]["text"]
    assert "4111" not in text and "[REDACTED CARD]" in text


def test_invalid_message_gets_400_naming_the_fields(identity_api, collector):
    response = requests.post(f"{identity_api.url}/v1/track", auth=collector, timeout=10,
                             json={"properties": {"a": 1}})
    assert response.status_code == 400
    body = response.json()
    assert response.headers["Content-Type"] == "application/problem+json"
    assert set(body["errors"]) >= {"userId", "event"} or "userId" in body["errors"]


def test_message_over_32_kb_gets_413(identity_api, collector):
    response = requests.post(f"{identity_api.url}/v1/track", auth=collector, timeout=10,
                             json={"userId": "u", "event": "Big", "properties": {
                                 "blob": "x" * 33_000}})
    assert response.status_code == 413


def test_batch_over_500_kb_gets_413_even_when_gzip_makes_it_small(identity_api, collector):
    batch = {"batch": [{"type": "track", "userId": "u", "event": "E",
                        "properties": {"pad": "y" * 20_000}} for _ in range(30)]}
    body = gzip.compress(orjson.dumps(batch))
    assert len(body) < 10_000  # a decompression bomb in miniature
    response = requests.post(f"{identity_api.url}/v1/batch", data=body, auth=collector,
                             timeout=10, headers={"Content-Type": "application/json",
                                                  "Content-Encoding": "gzip"})
    assert response.status_code == 413
    assert "decompressed" in response.json()["detail"]


def test_batch_with_some_bad_messages_accepts_the_good_ones_and_lists_the_rest(
        identity_api, collector, settings, unique):
    good = {"type": "track", "userId": f"u-{unique}", "event": "Product Viewed"}
    response = requests.post(f"{identity_api.url}/v1/batch", auth=collector, timeout=10, json={
        "batch": [good, {"type": "track", "event": "No Id"}, "not an object",
                  {"type": "teleport", "userId": "x"}, good]})
    assert response.status_code == 200
    body = response.json()
    assert body["accepted"] == 2
    assert [r["index"] for r in body["rejected"]] == [1, 2, 3]
    assert "type" in body["rejected"][2]["errors"]
    events_with(settings, topics.EVENTS_WEB,
                lambda m: m.get("identifiers", {}).get("user_id") == f"u-{unique}", 2)


@pytest.mark.parametrize("body, content_type", [
    (b"{not json", "application/json"),
    (b'{"userId": "\xff\xfe", "event": "x"}', "application/json"),
    (b"[" * 5000 + b"]" * 5000, "application/json"),
])
def test_malformed_bodies_get_400_never_500(identity_api, collector, body, content_type):
    response = requests.post(f"{identity_api.url}/v1/track", data=body, auth=collector,
                             headers={"Content-Type": content_type}, timeout=10)
    assert response.status_code == 400


def test_mongo_operator_in_an_identifier_is_just_a_string(identity_api, collector, api_keys):
    response = requests.post(f"{identity_api.url}/v1/identify", auth=collector, timeout=10,
                             json={"userId": {"$gt": ""}, "traits": {}})
    assert response.status_code == 400
    lookup = requests.get(f"{identity_api.url}/v1/identity/resolve",
                          params={"type": "user_id", "value": '{"$gt": ""}'},
                          headers={"Authorization": f"Bearer {api_keys['agent']}"}, timeout=10)
    assert lookup.status_code == 404


def test_call_event_goes_to_the_phone_topic_with_the_caller_number_in_e164(
        identity_api, collector, settings, unique):
    call_id = f"call-{unique}"
    response = requests.post(f"{identity_api.url}/v1/calls", auth=collector, timeout=10, json={
        "call_id": call_id, "event": "ended", "caller_number": "040 765 4321",
        "dialled_number": "0800 123 456", "agent_id": "agent-7", "queue": "billing",
        "wait_seconds": 35, "talk_seconds": 240, "disposition": "resolved",
        "notes": "asked about order 12345"})
    assert response.status_code == 200
    found = events_with(settings, topics.EVENTS_PHONE,
                        lambda m: m["payload"].get("call_id") == call_id)
    event = found[0]
    assert event["type"] == "Call Ended" and event["channel"] == "phone"
    assert event["identifiers"] == {"phone": "+358407654321"}
    assert event["payload"]["unverified_identifiers"] == ["phone"]
    assert event["payload"]["talk_seconds"] == 240


def test_call_from_a_withheld_number_is_refused_with_422(identity_api, collector):
    response = requests.post(f"{identity_api.url}/v1/calls", auth=collector, timeout=10, json={
        "call_id": str(uuid.uuid4()), "event": "offered", "caller_number": "anonymous"})
    assert response.status_code == 422
    assert "caller number" in response.json()["detail"]


def test_ingestion_needs_the_collector_role(identity_api, api_keys):
    response = requests.post(f"{identity_api.url}/v1/track", timeout=10,
                             auth=(api_keys["agent"], ""), json={"userId": "u", "event": "E"})
    assert response.status_code == 403


@pytest.mark.parametrize("times", BAD_TIMES)
def test_a_time_outside_2000_to_a_day_ahead_gets_400_naming_the_field_never_500(
        identity_api, collector, times):
    response = requests.post(f"{identity_api.url}/v1/track", auth=collector, timeout=10,
                             json={"userId": "u", "event": "E", **times})
    assert response.status_code == 400, response.text
    assert "timestamp" in response.json()["errors"]


def test_a_batch_with_times_out_of_range_sends_every_other_message_and_lists_those(
        identity_api, collector, settings, unique):
    good = [{"type": "track", "userId": f"u-{unique}", "event": "E", "messageId": f"{unique}-{i}"}
            for i in range(3)]
    bad = [{"type": "track", "userId": f"u-{unique}", "event": "E", **times} for times in BAD_TIMES]
    response = requests.post(f"{identity_api.url}/v1/batch", auth=collector, timeout=10,
                             json={"batch": [good[0], *bad, good[1], good[2]]})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["accepted"] == 3
    assert [(r["index"], r["status"]) for r in body["rejected"]] == [
        (i + 1, 400) for i in range(len(BAD_TIMES))]
    assert all("timestamp" in r["errors"] for r in body["rejected"])
    events_with(settings, topics.EVENTS_WEB,
                lambda m: m.get("identifiers", {}).get("user_id") == f"u-{unique}", 3)


@pytest.mark.parametrize("timestamp", ["0001-01-01T00:00:00+02:00", "2999-01-01T00:00:00Z"])
def test_a_call_at_a_time_out_of_range_gets_422_never_500(identity_api, collector, timestamp):
    response = requests.post(f"{identity_api.url}/v1/calls", auth=collector, timeout=10, json={
        "call_id": str(uuid.uuid4()), "event": "ended", "caller_number": "040 765 4321",
        "timestamp": timestamp})
    assert response.status_code == 422, response.text
    assert "timestamp" in response.json()["errors"]["json"]


def test_a_message_without_a_usable_identifier_gets_422_saying_why(
        identity_api, collector, settings, unique):
    unusable = {"userId": "a\u0001b", "anonymousId": "c\u0000d", "event": "E"}
    response = requests.post(f"{identity_api.url}/v1/track", auth=collector, timeout=10,
                             json=unusable)
    assert response.status_code == 422, response.text
    assert response.json()["errors"]["identifiers"] == {
        "user_id": ["contains control characters"],
        "anonymous_id": ["contains control characters"]}
    good = {"type": "track", "userId": f"u-{unique}", "event": "E"}
    batch = requests.post(f"{identity_api.url}/v1/batch", auth=collector, timeout=10,
                          json={"batch": [{"type": "track", **unusable}, good]})
    assert batch.status_code == 200, batch.text
    assert batch.json()["accepted"] == 1
    [rejected] = batch.json()["rejected"]
    assert (rejected["index"], rejected["status"]) == (0, 422)
    assert "no usable identifier" in rejected["detail"]


def test_a_user_id_that_is_a_hetu_reaches_kafka_only_as_digest_and_sealed_trait(
        identity_api, collector, settings, unique):
    hetu, call_hetu = valid_hetu(unique), valid_hetu(unique[::-1])
    identify = requests.post(f"{identity_api.url}/v1/identify", auth=collector, timeout=10,
                             json={"userId": hetu, "messageId": f"hetu-user-{unique}",
                                   "traits": {"firstName": "Aino"}})
    assert identify.status_code == 200, identify.text
    call_id = f"call-hetu-user-{unique}"
    call = requests.post(f"{identity_api.url}/v1/calls", auth=collector, timeout=10, json={
        "call_id": call_id, "event": "answered", "caller_number": "040 765 4321",
        "customer_number": call_hetu})
    assert call.status_code == 200, call.text

    [web] = events_with(settings, topics.EVENTS_WEB,
                        lambda m: m["message_id"] == f"hetu-user-{unique}")
    [phone] = events_with(settings, topics.EVENTS_PHONE,
                          lambda m: m["payload"].get("call_id") == call_id)
    for event in (web, phone):
        assert "user_id" not in event["identifiers"]
        assert is_hetu_digest(event["identifiers"]["hetu"])
        assert event["payload"]["traits"]["hetu"].startswith("sealed1:")
    for topic, code in ((topics.EVENTS_WEB, hetu), (topics.EVENTS_PHONE, call_hetu)):
        for key, value in read_records(settings, topic):
            assert code.encode() not in (key or b"") + value, topic
