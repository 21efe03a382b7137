"""The profile worker and API as processes on the real broker and store: snapshots on
cdp.profile.changes, the paged full history, name search, segments, purpose-bound reads and
data-subject requests. Resolved events are produced directly, as the identity worker would."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
import requests

from services.common import topics
from services.common.bus import Outgoing, Producer
from services.common.envelope import new_envelope
from services.common.store import ProcessedLedger
from services.profile.worker import CONSENT_GROUP
from tests.support.kafka import read_all
from tests.support.processes import ServiceApi, ServiceWorker, wait_until

T0 = datetime.now(UTC).replace(microsecond=0) - timedelta(days=3)


@pytest.fixture(scope="module")
def profile_service(test_env):
    processes = [ServiceApi("profile", test_env).start(),
                 ServiceWorker("services.profile", test_env, name="profile-worker").start()]
    yield processes[0].url
    for process in processes:
        process.stop()


@pytest.fixture(scope="module")
def producer(settings):
    producer = Producer(settings, "tests")
    yield producer
    producer.close()


class Client:
    def __init__(self, url, api_keys):
        self.url, self.keys = url, api_keys

    def call(self, method, path, role="agent", purpose="customer_service", **kwargs):
        headers = {"Authorization": f"Bearer {self.keys[role]}", "X-Purpose": purpose}
        return requests.request(method, self.url + path, headers=headers, timeout=10, **kwargs)

    def get(self, path, role="agent", **kwargs):
        return self.call("GET", path, role, **kwargs)


@pytest.fixture
def api(profile_service, api_keys):
    return Client(profile_service, api_keys)


def resolved(profile_id, n, type_="Identify", channel="web", *, traits=None, properties=None,
             identifiers=None, message_id=None, **payload):
    body = dict(payload)
    if traits:
        body["traits"] = traits
    if properties:
        body["properties"] = properties
    return new_envelope(type_, channel, identifiers=identifiers or {}, payload=body,
                        occurred_at=T0 + timedelta(minutes=n),
                        message_id=message_id or f"{profile_id}-m{n}").resolved_to(profile_id)


def send(producer, *envelopes, topic=topics.EVENTS_RESOLVED, key=None):
    producer.send([Outgoing(topic, key or e.profile_id, e) for e in envelopes])


def profile_when(api, profile_id, condition, what, role="agent"):
    def ready():
        response = api.get(f"/v1/profiles/{profile_id}", role)
        return response.json() if response.status_code == 200 and condition(
            response.json()) else None

    return wait_until(ready, 60, interval=0.3, what=what)


def changes(settings, profile_id):
    return [m for m in read_all(settings, topics.PROFILE_CHANGES, idle_ms=500)
            if m.get("profile_id") == profile_id]


def test_every_change_carries_the_profile_snapshot(api, producer, settings, unique):
    pid = f"p-snap-{unique}"
    send(producer, resolved(pid, 1, traits={"firstName": "Aino", "lastName": "Snap"},
                            identifiers={"email": f"aino.{unique}@example.com"}),
         resolved(pid, 2, "Order Completed", properties={"order_id": "1", "total": 40.0}))
    profile_when(api, pid, lambda p: p["computed"]["purchase_count"] == 1, "the order applied")
    found = wait_until(lambda: [m for m in changes(settings, pid)
                                if m["payload"]["cause_message_id"] == f"{pid}-m2"] or None,
                       30, what="the change on cdp.profile.changes")
    snapshot = found[0]["payload"]["profile"]
    assert found[0]["payload"]["kind"] == "event_applied"
    assert snapshot["profile_id"] == pid
    assert snapshot["traits"]["first_name"] == "Aino"
    assert snapshot["identifiers"]["email"] == [f"aino.{unique}@example.com"]
    assert snapshot["computed"]["purchase_total"] == 40.0
    assert snapshot["merged_into"] is None and snapshot["segments"] == []


def test_merged_profile_is_announced_as_merged_away(api, producer, settings, unique):
    survivor, absorbed = f"p-surv-{unique}", f"p-gone-{unique}"
    send(producer, resolved(survivor, 1, "Order Completed", properties={"total": 10.0}),
         resolved(absorbed, 2, "Order Completed", properties={"total": 5.0}))
    profile_when(api, absorbed, lambda p: p["computed"]["purchase_count"] == 1, "absorbed")
    profile_when(api, survivor, lambda p: p["computed"]["purchase_count"] == 1, "survivor")
    merge = new_envelope("Profiles Merged", "system", message_id=f"merge-{unique}",
                         payload={"survivor": survivor, "merged": absorbed,
                                  "identifier": None, "cause_message_id": "x"})
    send(producer, merge.resolved_to(survivor), topic=topics.IDENTITY_MERGES)
    merged = profile_when(api, survivor, lambda p: p["computed"]["purchase_count"] == 2,
                          "the merge")
    assert merged["merged_from"] == [absorbed]
    away = wait_until(lambda: [m for m in changes(settings, absorbed)
                               if m["payload"]["kind"] == "merged_away"] or None, 30,
                      what="merged_away")
    assert away[0]["payload"]["profile"] is None
    assert away[0]["payload"]["merged_into"] == survivor


def test_timeline_pages_through_the_full_history_and_replays_add_nothing(
        api, producer, unique):
    pid = f"p-hist-{unique}"
    events = [resolved(pid, n, "Page Viewed", name=f"page {n}") for n in range(60)]
    send(producer, *events)
    profile_when(api, pid, lambda p: len(p["timeline"]) == 10, "the history applied")
    # the history is written after the profile: it may still be empty here
    wait_until(lambda: [e["message_id"] for e in api.get(
        f"/v1/profiles/{pid}/timeline", params={"limit": 1}).json()["entries"]]
        == [f"{pid}-m59"], 30, what="the newest event in the history")
    # a replay, then a new event on the same partition: once it is in, the replay was read
    send(producer, *events[:5], resolved(pid, 60, "Page Viewed", name="page 60"))

    def all_pages():
        seen, cursor = [], None
        while True:
            page = api.get(f"/v1/profiles/{pid}/timeline",
                           params={"limit": 25, **({"cursor": cursor} if cursor else {})}).json()
            seen.extend(e["message_id"] for e in page["entries"])
            cursor = page["next_cursor"]
            if cursor is None:
                return seen

    seen = wait_until(lambda: (lambda s: s if f"{pid}-m60" in s else None)(all_pages()), 30,
                      what="the event after the replay")
    assert seen == [f"{pid}-m{n}" for n in reversed(range(61))]
    older = api.get(f"/v1/profiles/{pid}/timeline",
                    params={"before": (T0 + timedelta(minutes=10)).isoformat()}).json()
    assert [e["message_id"] for e in older["entries"]] == [f"{pid}-m{n}"
                                                           for n in reversed(range(10))]


def test_agents_find_profiles_by_name_prefix_ignoring_case_and_accents(api, producer, unique):
    pid = f"p-name-{unique}"
    last = f"Hämä{unique[:6]}"
    send(producer, resolved(pid, 1, traits={"firstName": "Äijä", "lastName": last}))

    def found(query):
        body = api.get("/v1/profiles/search", params={"name": query}).json()
        return [r for r in body["results"] if r["profile_id"] == pid]

    hit = wait_until(lambda: found(f"hama{unique[:3]}"), 30, what="name indexed")
    assert hit[0]["name"] == f"Äijä {last}"
    assert found(f"aija hama{unique[:2]}")
    assert api.get("/v1/profiles/search", params={"name": "a"}).status_code == 422
    assert api.get("/v1/profiles/search", params={"name": "a. "}).status_code == 422


def segment_members(api, segment_id):
    return api.get(f"/v1/segments/{segment_id}/members").json()


def test_profiles_enter_and_leave_a_segment_as_they_change(api, producer, settings, unique):
    segment = f"city-{unique}"
    rule = {"field": "traits.city", "op": "eq", "value": f"Espoo{unique}"}
    created = api.call("POST", "/v1/segments", "supervisor",
                       json={"id": segment, "name": "Espoo", "rule": rule})
    assert created.status_code == 201, created.text
    assert api.call("POST", "/v1/segments", "agent",
                    json={"id": segment, "name": "x", "rule": rule}).status_code == 403
    pid = f"p-seg-{unique}"
    send(producer, resolved(pid, 1, traits={"address": {"city": f"Espoo{unique}"}}))
    wait_until(lambda: segment_members(api, segment)["count"] == 1, 60, what="member")
    assert segment_members(api, segment)["members"][0]["profile_id"] == pid
    assert profile_when(api, pid, lambda p: p["segments"], "segments listed")["segments"] == [
        segment]
    send(producer, resolved(pid, 2, traits={"address": {"city": "Vantaa"}}))
    wait_until(lambda: segment_members(api, segment)["count"] == 0, 60, what="left")
    kinds = wait_until(lambda: (lambda k: k if "segment_left" in k else None)(
        [m["payload"]["kind"] for m in changes(settings, pid)]), 30, what="segment_left")
    assert "segment_entered" in kinds


def test_changing_a_definition_recomputes_every_profiles_membership(api, producer, unique):
    pids = [f"p-def-{unique}-{n}" for n in range(3)]
    send(producer, *[resolved(pid, 1, "Order Completed", properties={"total": 100.0 * n},
                              traits={"postcode": f"00{n + 1}00", "batch": unique})
                     for n, pid in enumerate(pids)])
    for pid in pids:
        profile_when(api, pid, lambda p: p["computed"]["purchase_count"] == 1, "orders")
    segment = f"postcodes-{unique}"
    rule = {"all": [{"field": "traits.postcode", "op": "between", "value": ["00100", "00300"]},
                    {"event": "Order Completed", "min_count": 1, "within_days": 30},
                    {"field": "traits.postcode", "op": "prefix", "value": "00"},
                    {"field": "traits.batch", "op": "eq", "value": unique}]}
    assert api.call("POST", "/v1/segments", "admin",
                    json={"id": segment, "name": "P", "rule": rule}).status_code == 201

    def members():
        body = segment_members(api, segment)
        return sorted(m["profile_id"] for m in body["members"] if m["profile_id"] in pids)

    wait_until(lambda: members() == pids, 60, what="all three by the background pass")
    rule["all"].append({"field": "computed.purchase_total", "op": "gte", "value": 100})
    updated = api.call("PUT", f"/v1/segments/{segment}", "supervisor", json={"rule": rule})
    assert updated.status_code == 200 and updated.json()["version"] == 2
    wait_until(lambda: members() == pids[1:], 60, what="the cheap buyer removed")
    page = api.get(f"/v1/segments/{segment}/members", params={"limit": 1}).json()
    assert page["count"] == 2 and len(page["members"]) == 1 and page["next_after"]
    bad = api.call("PUT", f"/v1/segments/{segment}", "admin",
                   json={"rule": {"field": "traits.x", "op": "like", "value": 1}})
    assert bad.status_code == 422 and "op" in bad.text
    assert api.call("DELETE", f"/v1/segments/{segment}", "admin").status_code == 204
    assert api.get(f"/v1/segments/{segment}").status_code == 404


def consent(profile_id, purpose, allowed, n):
    return new_envelope(
        "Consent Changed", "system", message_id=f"consent-{profile_id}-{n}",
        payload={"purpose": purpose, "state": "granted" if allowed else "withdrawn",
                 "allowed": allowed, "reason": "test", "receipt_id": f"r-{n}",
                 "notice_version": "2025-01",
                 "collected_at": (T0 + timedelta(minutes=n)).isoformat(), "source": "web"}
    ).resolved_to(profile_id)


def test_marketing_reads_get_contact_details_only_as_consents_allow(api, producer, db,
                                                                    unique):
    pid = f"p-consent-{unique}"
    send(producer, resolved(pid, 1, traits={"firstName": "Eino", "email": f"e.{unique}@x.fi",
                                            "phone": "+358401234567"},
                            identifiers={"email": f"e.{unique}@x.fi"}))
    profile_when(api, pid, lambda p: p["traits"], "traits")
    withheld = api.get(f"/v1/profiles/{pid}", purpose="marketing").json()
    assert withheld["traits"] == {} and withheld["identifiers"] == {}
    send(producer, consent(pid, "marketing_email", True, 1), topic=topics.CONSENT_CHANGES)
    allowed = wait_until(lambda: (lambda p: p if p["identifiers"] else None)(
        api.get(f"/v1/profiles/{pid}", purpose="marketing").json()), 30, what="consent")
    assert allowed["identifiers"]["email"] == [f"e.{unique}@x.fi"]
    assert "phone" not in allowed["traits"]
    send(producer, consent(pid, "marketing_email", False, 2), consent(pid, "marketing_email",
                                                                      True, 0),
         topic=topics.CONSENT_CHANGES)  # the older grant arrives late and loses
    wait_until(lambda: api.get(f"/v1/profiles/{pid}", purpose="marketing").json()[
        "identifiers"] == {}, 30, what="withdrawal")
    late = f"consent-{pid}-0"
    wait_until(lambda: ProcessedLedger(db, CONSENT_GROUP).seen([late]), 30,
               what="the late grant read")
    assert api.get(f"/v1/profiles/{pid}", purpose="marketing").json()["identifiers"] == {}
    assert api.get(f"/v1/profiles/{pid}").json()["identifiers"]["email"]


def privacy_request(kind, request_id, profile_ids, **extra):
    type_ = {"erasure": "Erasure Requested", "access": "Access Requested",
             "restriction": "Restriction Requested", "restriction_lifted": "Restriction Lifted",
             "rectification": "Rectification Requested"}[kind]
    return new_envelope(type_, "system", payload={
        "request_id": request_id, "kind": kind, "profile_ids": profile_ids,
        "identifiers": [], "requested_by": "dpo-key", **extra})


def acks(settings, request_id):
    return [m for m in read_all(settings, topics.PRIVACY_ACKS, idle_ms=500)
            if m["payload"]["request_id"] == request_id and m["payload"]["service"] == "profile"]


def test_erasure_removes_everything_held_for_the_subject_and_acks_once(
        api, producer, settings, db, unique):
    pid, twin = f"p-erase-{unique}", f"p-erase-twin-{unique}"
    last = f"Erase{unique[:6]}"
    send(producer, resolved(pid, 1, "Order Completed", properties={"total": 9.0},
                            traits={"firstName": "Ella", "lastName": last,
                                    "address": {"city": f"E{unique}"}},
                            identifiers={"email": f"ella.{unique}@x.fi"}),
         resolved(twin, 2, identifiers={"phone": "+358401112233"}))
    segment = f"erase-{unique}"
    api.call("POST", "/v1/segments", "admin", json={"id": segment, "name": "e", "rule": {
        "field": "traits.city", "op": "eq", "value": f"E{unique}"}})
    wait_until(lambda: segment_members(api, segment)["count"] == 1, 60, what="member")
    profile_when(api, twin, lambda p: p, "twin")
    send(producer, consent(pid, "analytics", True, 1), topic=topics.CONSENT_CHANGES)
    wait_until(lambda: db.profile_consents.find_one({"_id": pid}), 30, what="consent kept")
    wait_until(lambda: api.get("/v1/profiles/search", params={"name": last}).json()["results"],
               30, what="name indexed")

    request_id = f"req-erase-{unique}"
    send(producer, privacy_request("erasure", request_id, [pid, twin]),
         topic=topics.PRIVACY_REQUESTS, key=request_id)
    ack = wait_until(lambda: acks(settings, request_id), 60, what="the ack")
    assert len(ack) == 1
    assert ack[0]["type"] == "Privacy Request Acknowledged"
    assert ack[0]["payload"]["status"] == "done" and ack[0]["payload"]["kind"] == "erasure"
    assert ack[0]["payload"]["summary"]["profiles"] == 2
    assert "data" not in ack[0]["payload"]
    for profile_id in (pid, twin):
        assert api.get(f"/v1/profiles/{profile_id}").status_code == 404
        for collection, field in (("profiles", "_id"), ("profile_identifiers", "profile_id"),
                                  ("profile_events", "profile_id"),
                                  ("profile_timeline", "profile_id"),
                                  ("profile_segment_members", "profile_id"),
                                  ("profile_access_log", "profile_id"),
                                  ("profile_names", "profile_id"),
                                  ("profile_consents", "_id")):
            assert db[collection].count_documents({field: profile_id}) == 0, collection
    assert api.get("/v1/profiles/search", params={"name": last}).json()["results"] == []
    assert segment_members(api, segment)["count"] == 0
    erased = wait_until(lambda: [m for m in changes(settings, pid)
                                 if m["payload"]["kind"] == "erased"] or None, 30, what="erased")
    assert erased[0]["payload"]["profile"] is None


def test_erasing_a_survivor_erases_what_is_kept_under_the_profiles_merged_into_it(
        api, producer, settings, db, unique):
    survivor, absorbed = f"p-esurv-{unique}", f"p-egone-{unique}"
    send(producer, resolved(survivor, 1, "Order Completed", properties={"total": 10.0},
                            identifiers={"email": f"s.{unique}@x.fi"}),
         resolved(absorbed, 2, "Order Completed", properties={"total": 5.0},
                  identifiers={"phone": f"+35850{abs(hash(unique)) % 10**7:07d}"}))
    profile_when(api, absorbed, lambda p: p["computed"]["purchase_count"] == 1, "absorbed")
    send(producer, new_envelope("Profiles Merged", "system", message_id=f"emerge-{unique}",
                                payload={"survivor": survivor, "merged": absorbed,
                                         "identifier": None, "cause_message_id": "x"},
                                ).resolved_to(survivor), topic=topics.IDENTITY_MERGES)
    profile_when(api, survivor, lambda p: p["computed"]["purchase_count"] == 2, "the merge")
    held = [("profile_events", "profile_id"), ("profile_timeline", "profile_id"),
            ("profile_identifiers", "profile_id"), ("profile_access_log", "profile_id"),
            ("profiles", "_id")]
    assert db.profile_events.count_documents({"profile_id": absorbed}) == 1

    def distinct_acks():  # a redelivered request may be acknowledged again, as itself
        return list({m["message_id"]: m for m in acks(settings, f"req-es-{unique}")}.values())

    # the request names the survivor only, as the privacy service would after an expansion
    # that missed the merge; a retry of it (a new message id) comes after the first
    for attempt, request in enumerate((privacy_request("erasure", f"req-es-{unique}",
                                                       [survivor]),
                                       privacy_request("erasure", f"req-es-{unique}",
                                                       [survivor], retry={"attempt": 1}))):
        send(producer, request, topic=topics.PRIVACY_REQUESTS, key=f"req-es-{unique}")
        wait_until(lambda n=attempt + 1: len(distinct_acks()) == n, 60,
                   what=f"ack {attempt + 1}")
    first, retried = distinct_acks()
    assert first["payload"]["summary"]["profiles"] == 2
    assert first["payload"]["summary"]["history_events"] == 2
    assert retried["payload"]["status"] == "done"
    # the retry found nothing left: it reports what the erasure deleted
    assert retried["payload"]["summary"] == first["payload"]["summary"]
    for profile_id in (survivor, absorbed):
        for collection, field in held:
            assert db[collection].count_documents({field: profile_id}) == 0, collection


def test_access_request_is_answered_with_the_subjects_data(api, producer, settings, unique):
    pid = f"p-access-{unique}"
    send(producer, resolved(pid, 1, traits={"firstName": "Aada"}),
         resolved(pid, 2, "Order Completed", properties={"total": 12.0}))
    profile_when(api, pid, lambda p: p["computed"]["purchase_count"] == 1, "profile")
    wait_until(lambda: api.get(f"/v1/profiles/{pid}/access-log", "dpo").json()["entries"], 30,
               what="the agent's read stored by the worker")
    request_id = f"req-access-{unique}"
    send(producer, privacy_request("access", request_id, [pid]), topic=topics.PRIVACY_REQUESTS,
         key=request_id)
    data = wait_until(lambda: acks(settings, request_id), 60, what="ack")[0]["payload"]["data"]
    assert data["profiles"][0]["traits"]["first_name"]["value"] == "Aada"
    assert data["history"]["count"] == 2
    assert [e["type"] for e in data["history"]["recent"]] == ["Order Completed", "Identify"]
    assert any(entry["roles"] == ["agent"] for entry in data["access_log"])
    assert data["segments"] == []


def test_dpo_sees_who_read_a_profile_when_and_for_which_purpose(api, producer, unique):
    pid = f"p-read-{unique}"
    send(producer, resolved(pid, 1, traits={"firstName": "Eino"}))
    profile_when(api, pid, lambda p: p["traits"], "profile")
    assert api.call("GET", f"/v1/profiles/{pid}", "supervisor",
                    purpose="fraud_prevention").status_code == 200

    def entries():
        logged = api.get(f"/v1/profiles/{pid}/access-log", "dpo").json()["entries"]
        return logged if any(e["purpose"] == "fraud_prevention" for e in logged) else None

    logged = wait_until(entries, 30, what="both reads in the access log")
    assert logged[0]["purpose"] == "fraud_prevention" and logged[0]["roles"] == ["supervisor"]
    assert {(e["purpose"], e["endpoint"]) for e in logged} == {
        ("fraud_prevention", f"/v1/profiles/{pid}"), ("customer_service", f"/v1/profiles/{pid}")}
    assert logged == sorted(logged, key=lambda e: e["at"], reverse=True)
    assert api.get(f"/v1/profiles/{pid}/access-log", "agent").status_code == 403


def test_restriction_blocks_agent_reads_until_lifted_and_rectification_wins(
        api, producer, settings, unique):
    pid = f"p-restrict-{unique}"
    send(producer, resolved(pid, 1, traits={"lastName": "Wrong"}))
    profile_when(api, pid, lambda p: p["traits"], "profile")
    request_id = f"req-restrict-{unique}"
    send(producer, privacy_request("restriction", request_id, [pid]),
         topic=topics.PRIVACY_REQUESTS, key=request_id)
    wait_until(lambda: api.get(f"/v1/profiles/{pid}").status_code == 403, 60, what="restricted")
    refused = api.get(f"/v1/profiles/{pid}", "supervisor")
    assert refused.status_code == 403 and "restricted" in refused.json()["detail"]
    assert api.get(f"/v1/profiles/{pid}", "dpo").status_code == 200
    assert len(wait_until(lambda: acks(settings, request_id), 30, what="ack")) == 1

    lift_id = f"req-lift-{unique}"
    send(producer, privacy_request("restriction_lifted", lift_id, [pid]),
         topic=topics.PRIVACY_REQUESTS, key=lift_id)
    wait_until(lambda: api.get(f"/v1/profiles/{pid}").status_code == 200, 60, what="lifted")

    fix_id = f"req-fix-{unique}"
    send(producer, privacy_request("rectification", fix_id, [pid],
                                   fields={"lastName": "Right"}),
         topic=topics.PRIVACY_REQUESTS, key=fix_id)
    fixed = profile_when(api, pid, lambda p: p["traits"]["last_name"]["value"] == "Right",
                         "rectified")
    assert fixed["traits"]["last_name"]["source"] == "data_subject"
    send(producer, resolved(pid, 5, traits={"lastName": "Wrong"}))
    profile_when(api, pid, lambda p: len(p["timeline"]) == 2, "a later event")
    assert api.get(f"/v1/profiles/{pid}").json()["traits"]["last_name"]["value"] == "Right"
