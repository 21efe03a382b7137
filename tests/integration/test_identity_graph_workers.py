"""The identity-graph worker against the real broker and store: resolution across channels,
merges announced, repairs through the API, and several workers agreeing with one."""

from __future__ import annotations

import random
from datetime import UTC, datetime

import pytest
import requests

from services.common import topics
from services.common.bus import Outgoing, Producer
from services.common.envelope import new_envelope
from services.identity.channels import partition_key
from services.identity.graph import Identifier, canonical, resolve
from services.identity.graph_store import LINKS, MongoGraph
from services.identity.suggestions import SuggestionStore
from tests.support.kafka import read_all
from tests.support.processes import ServiceApi, ServiceWorker, wait_until


@pytest.fixture(scope="module")
def identity_api(test_env):
    api = ServiceApi("identity", test_env).start()
    yield api
    api.stop()


@pytest.fixture(scope="module")
def identity_worker(test_env):
    worker = ServiceWorker("services.identity", test_env, name="identity-worker").start()
    yield worker
    worker.stop()


def agent(api_keys):
    return {"Authorization": f"Bearer {api_keys['agent']}"}


def resolved_for(settings, message_id: str) -> dict:
    def find():
        return next((m for m in read_all(settings, topics.EVENTS_RESOLVED, idle_ms=300)
                     if m["message_id"] == message_id), None)

    return wait_until(find, 60, interval=0.5, what=f"resolved event {message_id}")


def test_web_registration_and_a_call_from_the_local_number_resolve_to_one_profile(
        identity_api, identity_worker, api_keys, settings, unique):
    collector = (api_keys["collector"], "")
    digits = unique_digits(unique)  # a number of this run's own: the broker outlives runs
    identify = {"userId": f"L-{unique}", "messageId": f"reg-{unique}",
                "traits": {"email": f"maija.{unique}@example.com",
                           "phone": f"+358 50 111 {digits}"}}
    assert requests.post(f"{identity_api.url}/v1/identify", json=identify, auth=collector,
                         timeout=10).status_code == 200
    web = resolved_for(settings, f"reg-{unique}")
    call = {"call_id": unique, "event": "offered", "caller_number": f"050 111 {digits}",
            "message_id": f"call-{unique}"}
    assert requests.post(f"{identity_api.url}/v1/calls", json=call, auth=collector,
                         timeout=10).status_code == 200
    phone = resolved_for(settings, f"call-{unique}")
    assert phone["profile_id"] == web["profile_id"]

    lookup = requests.get(f"{identity_api.url}/v1/identity/resolve", headers=agent(api_keys),
                          params={"type": "phone", "value": f"050111{digits}"}, timeout=10).json()
    assert lookup.get("profile_id") == web["profile_id"], lookup
    assert {(i["type"], i["value"]) for i in lookup["identifiers"]} >= {
        ("user_id", f"L-{unique}"), ("email", f"maija.{unique}@example.com"),
        ("phone", f"+35850111{digits}")}


def test_an_identifier_merge_protection_holds_back_does_not_travel_with_the_event(
        identity_api, identity_worker, api_keys, settings, unique):
    collector = (api_keys["collector"], "")
    for user_id, email in ((f"A-{unique}", f"a.{unique}@example.com"),
                           (f"B-{unique}", f"b.{unique}@example.com")):
        body = {"userId": user_id, "messageId": f"reg-{user_id}", "traits": {"email": email}}
        assert requests.post(f"{identity_api.url}/v1/identify", json=body, auth=collector,
                             timeout=10).status_code == 200
        resolved_for(settings, f"reg-{user_id}")
    # B claims A's email: two user_ids on one profile would break the limit
    claim = {"userId": f"B-{unique}", "messageId": f"claim-{unique}",
             "traits": {"email": f"a.{unique}@example.com"}}
    assert requests.post(f"{identity_api.url}/v1/identify", json=claim, auth=collector,
                         timeout=10).status_code == 200
    resolved = resolved_for(settings, f"claim-{unique}")
    assert resolved["identifiers"] == {"user_id": f"B-{unique}"}


def test_alias_merges_the_cookie_profile_and_announces_the_merge(
        identity_api, identity_worker, api_keys, settings, unique):
    collector = (api_keys["collector"], "")
    steps = [
        ("track", {"anonymousId": f"c-{unique}", "event": "Product Viewed",
                   "messageId": f"view-{unique}"}),
        ("identify", {"userId": f"L-{unique}", "messageId": f"login-{unique}"}),
        ("alias", {"userId": f"L-{unique}", "previousId": f"c-{unique}",
                   "messageId": f"alias-{unique}"}),
    ]
    profiles = {}
    for call, body in steps:
        assert requests.post(f"{identity_api.url}/v1/{call}", json=body, auth=collector,
                             timeout=10).status_code == 200
        profiles[call] = resolved_for(settings, body["messageId"])["profile_id"]
    assert profiles["track"] != profiles["identify"]
    assert profiles["alias"] in (profiles["track"], profiles["identify"])

    def merge_message():
        return next((m for m in read_all(settings, topics.IDENTITY_MERGES, idle_ms=300)
                     if m["payload"].get("cause_message_id") == f"alias-{unique}"), None)

    merge = wait_until(merge_message, 30, what="merge on cdp.identity.merges")
    assert {merge["payload"]["survivor"], merge["payload"]["merged"]} == {
        profiles["track"], profiles["identify"]}
    log = requests.get(f"{identity_api.url}/v1/identity/profiles/{profiles['alias']}/log",
                       headers={"Authorization": f"Bearer {api_keys['supervisor']}"},
                       timeout=10).json()
    assert [entry["kind"] for entry in log["entries"]] == ["merge"]


def test_alias_from_an_earlier_user_id_merges_the_renamed_accounts_profiles(
        identity_api, identity_worker, api_keys, settings, unique):
    collector = (api_keys["collector"], "")
    old, new = f"old-{unique}", f"new-{unique}"
    steps = [
        ("identify", {"userId": old, "messageId": f"reg-old-{unique}",
                      "traits": {"email": f"old.{unique}@example.com"}}),
        ("identify", {"userId": new, "messageId": f"reg-new-{unique}"}),
        # Segment: previousId "might be ... a User ID you previously identified them with"
        ("alias", {"userId": new, "previousId": old, "messageId": f"rename-{unique}"}),
    ]
    resolved = {}
    for call, body in steps:
        assert requests.post(f"{identity_api.url}/v1/{call}", json=body, auth=collector,
                             timeout=10).status_code == 200
        resolved[body["messageId"]] = resolved_for(settings, body["messageId"])
    old_profile = resolved[f"reg-old-{unique}"]["profile_id"]
    new_profile = resolved[f"reg-new-{unique}"]["profile_id"]
    assert old_profile != new_profile
    # the previousId travels as the user_id it is, not as an anonymous id
    assert resolved[f"rename-{unique}"]["identifiers"] == {"user_id": new}

    def merge_message():
        return next((m for m in read_all(settings, topics.IDENTITY_MERGES, idle_ms=300)
                     if m["payload"].get("cause_message_id") == f"rename-{unique}"), None)

    merge = wait_until(merge_message, 30, what="merge on cdp.identity.merges")
    assert {merge["payload"]["survivor"], merge["payload"]["merged"]} == {old_profile,
                                                                           new_profile}
    lookup = requests.get(f"{identity_api.url}/v1/identity/resolve", headers=agent(api_keys),
                          params={"type": "email", "value": f"old.{unique}@example.com"},
                          timeout=10).json()
    assert {(i["type"], i["value"]) for i in lookup["identifiers"]} == {
        ("user_id", old), ("user_id", new), ("email", f"old.{unique}@example.com")}


def test_unmerge_splits_identifiers_into_a_new_profile(
        identity_api, identity_worker, api_keys, settings, unique):
    collector = (api_keys["collector"], "")
    body = {"userId": f"L-{unique}", "messageId": f"reg-{unique}",
            "traits": {"email": f"shared.{unique}@example.com", "phone": "040 999 8877"}}
    requests.post(f"{identity_api.url}/v1/identify", json=body, auth=collector, timeout=10)
    profile = resolved_for(settings, f"reg-{unique}")["profile_id"]
    admin = {"Authorization": f"Bearer {api_keys['admin']}"}
    response = requests.post(f"{identity_api.url}/v1/identity/unmerge", headers=admin, timeout=10,
                             json={"profile_id": profile, "reason": "household line",
                                   "identifiers": [{"type": "phone", "value": "0409998877"}]})
    assert response.status_code == 200, response.text
    new_profile = response.json()["new_profile_id"]
    lookup = requests.get(f"{identity_api.url}/v1/identity/resolve", headers=agent(api_keys),
                          params={"type": "phone", "value": "+358409998877"}, timeout=10).json()
    assert lookup["profile_id"] == new_profile != profile
    again = requests.post(f"{identity_api.url}/v1/identity/unmerge", headers=admin, timeout=10,
                          json={"profile_id": profile, "reason": "again",
                                "identifiers": [{"type": "phone", "value": "0409998877"}]})
    assert again.status_code == 409


def test_released_number_no_longer_finds_the_old_profile(
        identity_api, identity_worker, api_keys, settings, unique):
    collector = (api_keys["collector"], "")
    body = {"userId": f"L-{unique}", "messageId": f"reg-{unique}",
            "traits": {"phone": "040 555 0101"}}
    requests.post(f"{identity_api.url}/v1/identify", json=body, auth=collector, timeout=10)
    resolved_for(settings, f"reg-{unique}")
    supervisor = {"Authorization": f"Bearer {api_keys['supervisor']}"}
    released = requests.post(f"{identity_api.url}/v1/identity/release", headers=supervisor,
                             json={"type": "phone", "value": "0405550101",
                                   "reason": "number recycled"}, timeout=10)
    assert released.status_code == 200
    lookup = requests.get(f"{identity_api.url}/v1/identity/resolve", headers=agent(api_keys),
                          params={"type": "phone", "value": "0405550101"}, timeout=10)
    assert lookup.status_code == 404


def test_two_workers_on_a_partitioned_topic_build_the_same_graph_as_one_sequential_worker(
        test_env, settings, db, unique):
    rng = random.Random(unique)
    people = []
    for n in range(100):
        ids = [Identifier("user_id", f"{unique}-u{n}"),
               Identifier("email", f"p{n}.{unique}@example.com"),
               Identifier("phone", f"+35840{unique_digits(unique)}{n:03d}"),
               *[Identifier("anonymous_id", f"{unique}-c{n}-{k}") for k in range(3)]]
        people.append(ids)
    events = []
    for ids in people:
        for _ in range(8):
            # an envelope carries one identifier of each type
            by_type = {i.type: i for i in rng.sample(ids, rng.randint(1, 3))}
            events.append(list(by_type.values()))
    rng.shuffle(events)

    expected = union_find_partition(events)
    workers = [ServiceWorker("services.identity", test_env, name=f"identity-worker-{i}").start()
               for i in range(2)]
    try:
        producer = Producer(settings, "tests")
        messages = []
        for event in events:
            identifiers = {i.type: i.value for i in event}
            envelope = new_envelope("Page Viewed", "web", identifiers=identifiers)
            messages.append(Outgoing(topics.EVENTS_WEB, partition_key(identifiers), envelope))
        producer.send(messages)
        producer.close()

        def graph_partition():
            groups: dict[str, set] = {}
            keys = [identifier.key for group in expected for identifier in group]
            for doc in db[LINKS].find({"_id": {"$in": keys}}):
                groups.setdefault(doc["profile_id"], set()).add(
                    Identifier(doc["type"], doc["value"]))
            return {frozenset(g) for g in groups.values()}

        try:
            wait_until(lambda: graph_partition() == expected, 180, interval=1,
                       what="the graph to equal the sequential oracle")
        except AssertionError:
            differing = [sorted(i.key for i in group) for group in graph_partition() - expected]
            raise AssertionError(f"groups the oracle does not have: {differing[:5]}") from None
        assert all(worker.alive() for worker in workers)
    finally:
        for worker in workers:
            worker.stop()


def unique_digits(unique: str) -> str:
    return str(int(unique[:6], 16) % 10000).zfill(4)


def union_find_partition(events) -> set[frozenset]:
    parent: dict = {}

    def find(x):
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for event in events:
        for identifier in event:
            parent.setdefault(identifier, identifier)
        for identifier in event[1:]:
            parent[find(identifier)] = find(event[0])
    groups: dict = {}
    for x in parent:
        groups.setdefault(find(x), set()).add(x)
    return {frozenset(g) for g in groups.values()}


def test_probable_duplicate_is_suggested_with_its_evidence_and_merged_when_accepted(
        identity_api, identity_worker, api_keys, settings, unique):
    collector = (api_keys["collector"], "")
    supervisor = {"Authorization": f"Bearer {api_keys['supervisor']}"}
    address = {"street": "Mannerheimintie 12 B 4", "postalCode": "00100", "city": "Helsinki"}
    registration = {"userId": f"L-{unique}", "messageId": f"loyalty-{unique}", "traits": {
        "firstName": "Johanna", "lastName": f"Virtanen{unique[:4]}", "birthday": "1985-03-12",
        "email": f"johanna.{unique}@example.com", "address": address}}
    phone_order = {"anonymousId": f"c-{unique}", "messageId": f"order-{unique}", "traits": {
        "firstName": "Jonna", "lastName": f"Virtanen{unique[:4]}", "birthday": "1985-03-12",
        "phone": "040 321 7788", "address": address}}
    for body in (registration, phone_order):
        assert requests.post(f"{identity_api.url}/v1/identify", json=body, auth=collector,
                             timeout=10).status_code == 200
    first = resolved_for(settings, f"loyalty-{unique}")["profile_id"]
    second = resolved_for(settings, f"order-{unique}")["profile_id"]
    assert first != second

    run = requests.post(f"{identity_api.url}/v1/identity/suggestions/run", headers=supervisor,
                        timeout=60)
    assert run.status_code == 200 and run.json()["pairs"] >= 1
    suggestions = requests.get(f"{identity_api.url}/v1/identity/suggestions", headers=supervisor,
                               params={"limit": 500}, timeout=10).json()["suggestions"]
    mine = next(s for s in suggestions if set(s["profiles"]) == {first, second})
    evidence = {c["field"]: c["outcome"] for c in mine["contributions"]}
    assert evidence["birth_date"] == "agree" and evidence["given_name"] in ("agree", "partial")

    accepted = requests.post(f"{identity_api.url}/v1/identity/suggestions/{mine['id']}/accept",
                             headers=supervisor, timeout=10)
    assert accepted.status_code == 200, accepted.text
    lookup = requests.get(f"{identity_api.url}/v1/identity/resolve", headers=agent(api_keys),
                          params={"type": "phone", "value": "0403217788"}, timeout=10).json()
    assert lookup["profile_id"] == accepted.json()["profile_id"]
    assert ("user_id", f"L-{unique}") in {(i["type"], i["value"]) for i in lookup["identifiers"]}
    again = requests.post(f"{identity_api.url}/v1/identity/suggestions/{mine['id']}/reject",
                          headers=supervisor, timeout=10)
    assert again.status_code == 409


def test_suggestion_run_merges_pairs_above_the_auto_merge_threshold_and_leaves_the_rest(
        test_env, mongo_client, api_keys, unique):
    # a database of its own: auto-merge must not touch other tests' profiles
    env = {**test_env, "CDP_MONGO_DB": f"muisti_automerge_{unique}",
           "CDP_IDENTITY_AUTO_MERGE_THRESHOLD": "0.9999"}
    graph = MongoGraph(mongo_client[env["CDP_MONGO_DB"]])
    people = SuggestionStore(mongo_client[env["CDP_MONGO_DB"]])
    person = {"given_name": "Johanna", "family_name": "Virtanen", "birth_date": "1985-03-12",
              "street": "Mannerheimintie 12 B 4", "postcode": "00100", "city": "Helsinki"}
    profiles = {}
    for name, identifier, fields in (
            ("loyalty", Identifier("email", f"j.{unique}@example.com"), person),
            ("phone order", Identifier("phone", "+358403217788"), person),
            ("namesake", Identifier("phone", "+358409876543"),
             {**person, "given_name": "Jonna", "street": "Hämeentie 3", "postcode": "00530"})):
        profiles[name] = resolve(graph, [identifier], message_id=f"{name}-{unique}",
                                 at=datetime.now(UTC)).profile_id
        people.remember([(profiles[name], fields, datetime.now(UTC))])
    api = ServiceApi("identity", env).start()
    try:
        run = requests.post(f"{api.url}/v1/identity/suggestions/run", timeout=60,
                            headers={"Authorization": f"Bearer {api_keys['supervisor']}"})
        assert run.status_code == 200, run.text
        assert run.json()["auto_merged"] == 1
        assert canonical(graph, profiles["loyalty"]) == canonical(graph, profiles["phone order"])
        assert canonical(graph, profiles["namesake"]) == profiles["namesake"]
        left = people.page("open", 10, 0)
        assert left and all(d["score"] < 0.9999 for d in left)
    finally:
        api.stop()


def test_a_stored_split_that_kafka_never_heard_of_is_announced_by_the_worker(
        identity_worker, db, settings, unique):
    from datetime import UTC, datetime, timedelta

    from services.identity.graph import Split
    from services.identity.graph_store import MongoGraph

    split = Split(f"split-{unique}", "release", f"p_{unique}", None,
                  (Identifier("phone", "+358401112223"),), "recycled", "key-1",
                  datetime.now(UTC) - timedelta(minutes=2))
    MongoGraph(db).record_split(split)  # as the API does before Kafka refuses

    def announced():
        return next((m for m in read_all(settings, topics.IDENTITY_MERGES, idle_ms=300)
                     if m["message_id"] == f"split-{unique}"), None)

    message = wait_until(announced, 90, interval=1, what="the relay to announce the split")
    assert message["type"] == "Identifier Released"
    # marked after the send: the message may be read before the mark is written
    wait_until(lambda: MongoGraph(db).entry(f"split-{unique}")["announced"] is True, 30,
               what="the split marked announced")


def _privacy_request(kind: str, request_id: str, **subject) -> Outgoing:
    payload = {"request_id": request_id, "kind": kind, "profile_ids": [], "identifiers": [],
               "requested_by": "test", **subject}
    envelope = new_envelope(f"{kind.capitalize()} Requested", "system", payload=payload)
    return Outgoing(topics.PRIVACY_REQUESTS, request_id, envelope)


def _ack(settings, request_id: str) -> dict:
    def find():
        return next((m for m in read_all(settings, topics.PRIVACY_ACKS, idle_ms=300)
                     if m["payload"]["request_id"] == request_id), None)

    return wait_until(find, 60, interval=0.5, what=f"identity's ack of {request_id}")


def test_erasure_by_a_social_handle_erases_the_whole_profile_and_suppresses_its_identifiers(
        identity_api, identity_worker, api_keys, settings, unique):
    handle = f"@Erase_{unique}"[:16]
    identify = {"userId": f"E-{unique}", "messageId": f"erase-reg-{unique}",
                "traits": {"email": f"erase.{unique}@example.com", "twitter": handle}}
    assert requests.post(f"{identity_api.url}/v1/identify", json=identify,
                         auth=(api_keys["collector"], ""), timeout=10).status_code == 200
    profile_id = resolved_for(settings, f"erase-reg-{unique}")["profile_id"]

    producer = Producer(settings, "tests")
    try:
        producer.send([_privacy_request("erasure", f"req-{unique}", identifiers=[
            {"type": "twitter_handle", "value": handle}])])
        ack = _ack(settings, f"req-{unique}")
        assert ack["payload"]["service"] == "identity" and ack["payload"]["status"] == "done"
        summary = ack["payload"]["summary"]
        # user_id, email and handle: each link erased and each identifier suppressed
        assert (summary["profiles"], summary["links"], summary["suppressed"]) == (1, 3, 3)
        dpo = {"Authorization": f"Bearer {api_keys['dpo']}"}
        gone = requests.get(f"{identity_api.url}/v1/identity/resolve", headers=dpo, timeout=10,
                            params={"type": "email", "value": f"erase.{unique}@example.com"})
        assert gone.status_code == 404

        # a new tweet from the erased handle is dropped; a control event behind it on the same
        # partition shows the worker has passed it
        tweet = new_envelope("Social Post", "social", identifiers={"twitter_handle": handle},
                             message_id=f"tweet-{unique}")
        control = new_envelope("Social Post", "social", message_id=f"control-{unique}",
                               identifiers={"twitter_handle": f"@Ctl_{unique}"[:16]})
        producer.send([Outgoing(topics.EVENTS_SOCIAL, profile_id, tweet),
                       Outgoing(topics.EVENTS_SOCIAL, profile_id, control)])
    finally:
        producer.close()
    resolved_for(settings, f"control-{unique}")
    resolved_ids = {m["message_id"] for m in read_all(settings, topics.EVENTS_RESOLVED, 300)}
    assert f"tweet-{unique}" not in resolved_ids


def test_access_request_returns_the_graph_of_the_subject_and_a_bad_request_is_dead_lettered(
        identity_api, identity_worker, api_keys, settings, unique):
    identify = {"userId": f"A-{unique}", "messageId": f"access-reg-{unique}",
                "traits": {"email": f"access.{unique}@example.com"}}
    assert requests.post(f"{identity_api.url}/v1/identify", json=identify,
                         auth=(api_keys["collector"], ""), timeout=10).status_code == 200
    profile_id = resolved_for(settings, f"access-reg-{unique}")["profile_id"]

    dpo = {"Authorization": f"Bearer {api_keys['dpo']}"}
    subject = requests.post(f"{identity_api.url}/v1/identity/subject", headers=dpo, timeout=10,
                            json={"identifiers": [{"type": "email",
                                                   "value": f"ACCESS.{unique}@example.com"}]})
    assert subject.json() == {"profile_ids": [profile_id], "identifiers": [
        {"type": "email", "value": f"access.{unique}@example.com"},
        {"type": "user_id", "value": f"A-{unique}"}]}

    producer = Producer(settings, "tests")
    try:
        producer.send([_privacy_request("access", f"acc-{unique}", profile_ids=[profile_id]),
                       _privacy_request("erasure", f"bad-{unique}")])  # names no subject
    finally:
        producer.close()
    data = _ack(settings, f"acc-{unique}")["payload"]["data"]
    assert data["profiles"] == [profile_id]
    assert {(i["type"], i["value"]) for i in data["identifiers"]} == {
        ("email", f"access.{unique}@example.com"), ("user_id", f"A-{unique}")}

    def dead_lettered():
        return any(letter["key"] == f"bad-{unique}" and "names no profile" in letter["reason"]
                   for letter in read_all(settings, topics.DEAD_LETTER, 300))

    wait_until(dead_lettered, 60, interval=0.5, what="the bad request in the dead-letter topic")
