"""Data-subject requests through the consent API and worker on the real broker and store:
fan-out exactly once, acks to completion, a missing ack, the access export, crypto-shredding
by the consent service's own part, bad input and roles."""

from __future__ import annotations

import pytest
import requests

from services.common import topics
from services.common.envelope import derived_message_id, new_envelope
from services.common.shredding import (
    FieldCipher,
    MasterKey,
    MongoWrappedKeys,
    Shredded,
    SubjectKeys,
    identifier_key_id,
)
from services.consent.receipts import parse_public_key, verify
from tests.support.kafka import produce, read_all
from tests.support.processes import ServiceApi, ServiceWorker, wait_until

OTHER_SERVICES = ("identity", "profile", "social", "export")


@pytest.fixture(scope="module")
def consent(test_env):
    identity = ServiceApi("identity", test_env).start()
    env = {**test_env, "CDP_IDENTITY_URL": identity.url}
    api = ServiceApi("consent", env).start()
    worker = ServiceWorker("services.consent", env, name="consent-worker").start()
    yield api
    for process in (worker, api, identity):
        process.stop()


def headers(api_keys, role="dpo"):
    return {"Authorization": f"Bearer {api_keys[role]}"}


def file_request(consent, api_keys, body) -> str:
    response = requests.post(f"{consent.url}/v1/privacy/requests", json=body,
                             headers=headers(api_keys), timeout=30)
    assert response.status_code == 202, response.text
    return response.json()["request_id"]


def fanned_out(settings, request_id) -> list[dict]:
    return [m for m in read_all(settings, topics.PRIVACY_REQUESTS, idle_ms=300)
            if m["payload"].get("request_id") == request_id]


def wait_for_fan_out(settings, request_id) -> dict:
    return wait_until(lambda: fanned_out(settings, request_id), 60, interval=0.5,
                      what="the request on cdp.privacy.requests")[0]


def acknowledge(settings, request: dict, services, data=None, status="done") -> None:
    acks = []
    for service in services:
        payload = {"request_id": request["payload"]["request_id"],
                   "kind": request["payload"]["kind"], "service": service, "status": status,
                   "summary": {"deleted": 1}}
        if status == "failed":
            payload["error"] = "store unavailable"
        if data is not None:
            payload["data"] = data(service)
        acks.append(new_envelope("Privacy Request Acknowledged", "system", payload=payload,
                                 message_id=derived_message_id(request["message_id"],
                                                               f"privacy-ack-{service}")))
    produce(settings, topics.PRIVACY_ACKS, acks, key=lambda i, v: v.payload["request_id"])


def status(consent, api_keys, request_id, role="dpo") -> dict:
    response = requests.get(f"{consent.url}/v1/privacy/requests/{request_id}",
                            headers=headers(api_keys, role), timeout=10)
    assert response.status_code == 200, response.text
    return response.json()


def wait_for(consent, api_keys, request_id, predicate, what):
    return wait_until(lambda: (lambda s: s if predicate(s) else None)(
        status(consent, api_keys, request_id)), 60, interval=0.5, what=what)


def test_erasure_fans_out_once_completes_on_every_ack_and_shreds_the_subjects_keys(
        consent, api_keys, settings, test_env, db, unique):
    email = f"aino.{unique}@example.com"
    keys = SubjectKeys(MongoWrappedKeys(db), MasterKey.from_setting(test_env["CDP_MASTER_KEY"]))
    digest_key = test_env["CDP_PRIVACY_DIGEST_KEY"].encode()
    ledger_proof = FieldCipher(keys).seal(identifier_key_id(digest_key, "email", email),
                                          {"ip": "192.0.2.7", "user_agent": "Mozilla/5.0"})

    request_id = file_request(consent, api_keys, {
        "kind": "erasure", "subject": {"identifier": {"type": "email", "value": email.upper()}},
        "reason": "ticket 4711"})
    request = wait_for_fan_out(settings, request_id)
    assert request["type"] == "Erasure Requested"
    assert {"type": "email", "value": email} in request["payload"]["identifiers"]

    acknowledge(settings, request, OTHER_SERVICES)
    done = wait_for(consent, api_keys, request_id, lambda s: s["state"] == "completed",
                    "the erasure completed")
    assert sorted(a["service"] for a in done["acknowledged"]) == sorted(
        (*OTHER_SERVICES, "consent"))
    assert done["missing"] == []
    assert len(fanned_out(settings, request_id)) == 1
    with pytest.raises(Shredded):
        FieldCipher(keys).open(ledger_proof)
    forgotten = wait_for(consent, api_keys, request_id,
                         lambda s: s["proof"]["personal_data_forgotten"], "identifiers forgotten")
    assert unique not in str(forgotten)
    assert forgotten["proof"]["identifier_digests"][0]["type"] == "email"


def test_a_completed_erasure_yields_a_signed_receipt_anyone_can_verify(
        consent, api_keys, settings, test_env, unique):
    email = f"eino.{unique}@example.com"
    request_id = file_request(consent, api_keys, {
        "kind": "erasure", "subject": {"identifier": {"type": "email", "value": email}},
        "reason": "ticket 4720"})
    request = wait_for_fan_out(settings, request_id)
    receipt_url = f"{consent.url}/v1/privacy/requests/{request_id}/receipt"
    assert requests.get(receipt_url, headers=headers(api_keys), timeout=10).status_code == 409
    acknowledge(settings, request, ("identity", "profile", "social"))
    export_ack = new_envelope("Privacy Request Acknowledged", "system", payload={
        "request_id": request_id, "kind": "erasure", "service": "export", "status": "done",
        "summary": {"deletion_notices_queued": 1, "partners_notified": [f"lehti-{unique}"]}},
        message_id=derived_message_id(request["message_id"], "privacy-ack-export"))
    produce(settings, topics.PRIVACY_ACKS, [export_ack], key=lambda i, v: request_id)
    wait_for(consent, api_keys, request_id, lambda s: s["state"] == "completed",
             "the erasure completed")

    response = wait_until(lambda: (lambda r: r if r.status_code == 200 else None)(
        requests.get(receipt_url, headers=headers(api_keys), timeout=10)), 30,
        what="the erasure receipt")
    receipt = response.json()
    assert "attachment" in response.headers["Content-Disposition"]
    assert unique not in str(receipt["subject"]) and email not in response.text
    assert sorted(s["service"] for s in receipt["services"]) == sorted(
        (*OTHER_SERVICES, "consent"))
    assert receipt["partners"][0]["partner_id"] == f"lehti-{unique}"
    public_key = requests.get(f"{consent.url}/v1/consents/receipt-key",
                              headers=headers(api_keys, "partner"), timeout=10).json()
    assert verify(receipt, parse_public_key(public_key["public_key"]))
    assert requests.get(receipt_url, headers=headers(api_keys), timeout=10).json() == receipt
    assert requests.get(receipt_url, headers=headers(api_keys, "supervisor"),
                        timeout=10).status_code == 403

    verify_url = f"{consent.url}/v1/privacy/receipts/verify"
    checked = requests.post(verify_url, json=receipt, headers=headers(api_keys, "partner"),
                            timeout=10)
    assert checked.status_code == 200 and checked.json()["valid"] is True
    tampered = {**receipt, "partners": []}
    assert requests.post(verify_url, json=tampered, headers=headers(api_keys, "agent"),
                         timeout=10).json()["valid"] is False


def test_a_partially_failed_erasure_is_retried_for_the_failed_service_only_and_completes(
        consent, api_keys, settings, unique):
    request_id = file_request(consent, api_keys, {
        "kind": "erasure", "subject": {"profile_id": f"profile-{unique}"},
        "reason": "ticket 4730"})
    request = wait_for_fan_out(settings, request_id)
    acknowledge(settings, request, ("identity", "profile", "export"))
    acknowledge(settings, request, ("social",), status="failed")
    wait_for(consent, api_keys, request_id, lambda s: s["state"] == "partially_failed",
             "the erasure partially failed")

    url = f"{consent.url}/v1/privacy/requests/{request_id}/retry"
    assert requests.post(url, headers=headers(api_keys, "supervisor"),
                         timeout=10).status_code == 403
    retried = requests.post(url, headers=headers(api_keys), timeout=30)
    assert retried.status_code == 202, retried.text
    assert retried.json()["services"] == ["social"] and retried.json()["attempt"] == 1
    again = requests.post(url, headers=headers(api_keys), timeout=30)
    assert again.status_code == 200 and again.json() == retried.json()

    sent = wait_until(lambda: [m for m in fanned_out(settings, request_id)
                               if m["payload"].get("retry")], 60, interval=0.5,
                      what="the retry on cdp.privacy.requests")
    assert len(sent) == 1 and sent[0]["payload"]["retry"]["services"] == ["social"]
    assert sent[0]["message_id"] == retried.json()["message_id"]
    acknowledge(settings, sent[0], ("social",))
    done = wait_for(consent, api_keys, request_id, lambda s: s["state"] == "completed",
                    "the retried erasure completed")
    assert any(e["event"] == "retried" and e["detail"]["services"] == ["social"]
               for e in done["audit"])
    assert requests.post(url, headers=headers(api_keys), timeout=10).status_code == 409


def test_open_erasures_show_in_the_backlog_gauges(consent, api_keys, unique):
    file_request(consent, api_keys, {"kind": "erasure", "subject": {
        "profile_id": f"profile-{unique}"}, "reason": "ticket 4740"})

    def backlog():
        text = requests.get(f"{consent.url}/metrics", timeout=10).text
        samples = dict(line.rsplit(" ", 1) for line in text.splitlines()
                       if line.startswith("muisti_erasure"))
        opened = float(samples.get('muisti_erasure_requests{service="consent",state="open"}', 0))
        return samples if opened >= 1 else None

    samples = wait_until(backlog, 30, interval=1, what="the open erasure in the gauges")
    assert float(samples['muisti_erasure_oldest_open_age_seconds{service="consent"}']) > 0
    assert 'muisti_erasure_requests{service="consent",state="partially_failed"}' in samples


def test_a_missing_ack_keeps_the_request_open_and_shows_who_is_missing(
        consent, api_keys, settings, unique):
    request_id = file_request(consent, api_keys, {
        "kind": "restriction", "subject": {"profile_id": f"profile-{unique}"},
        "reason": "ticket 4712"})
    acknowledge(settings, wait_for_fan_out(settings, request_id), ("identity", "profile",
                                                                   "social"))
    seen = wait_for(consent, api_keys, request_id, lambda s: len(s["acknowledged"]) == 4,
                    "four acks recorded")
    assert seen["state"] == "fanned_out"
    assert seen["missing"] == ["export"]
    listed = requests.get(f"{consent.url}/v1/privacy/requests", params={"state": "fanned_out"},
                          headers=headers(api_keys, "supervisor"), timeout=10).json()
    assert request_id in [r["request_id"] for r in listed["requests"]]


def test_access_export_combines_the_data_of_every_service(consent, api_keys, settings, db,
                                                          test_env, unique):
    profile_id = f"profile-{unique}"
    request_id = file_request(consent, api_keys, {
        "kind": "access", "subject": {"profile_id": profile_id}, "reason": "ticket 4713"})
    request = wait_for_fan_out(settings, request_id)
    assert request["payload"]["profile_ids"] == [profile_id]
    url = f"{consent.url}/v1/privacy/requests/{request_id}/export"
    early = requests.get(url, headers=headers(api_keys), timeout=10)
    assert early.status_code == 409

    acknowledge(settings, request, OTHER_SERVICES,
                data=lambda service: {"held_by": service, "profile_id": profile_id})
    wait_for(consent, api_keys, request_id, lambda s: s["state"] == "completed",
             "the access request completed")
    export = requests.get(url, headers=headers(api_keys), timeout=10)
    assert export.status_code == 200
    assert "attachment" in export.headers["Content-Disposition"]
    services = export.json()["services"]
    assert sorted(services) == sorted((*OTHER_SERVICES, "consent"))
    assert services["social"] == {"held_by": "social", "profile_id": profile_id}
    assert services["consent"]["do_not_contact"] is False
    stored = db["privacy_access_data"].find_one({"request_id": request_id})
    assert profile_id not in str(stored)  # sealed at rest


def test_an_erasure_makes_the_persons_earlier_access_export_unreadable(
        consent, api_keys, settings, unique):
    profile_id = f"profile-{unique}"
    access_id = file_request(consent, api_keys, {
        "kind": "access", "subject": {"profile_id": profile_id}, "reason": "ticket 4714"})
    acknowledge(settings, wait_for_fan_out(settings, access_id), OTHER_SERVICES,
                data=lambda service: {"email": f"aino.{unique}@example.com"})
    wait_for(consent, api_keys, access_id, lambda s: s["state"] == "completed",
             "the access request completed")
    export_url = f"{consent.url}/v1/privacy/requests/{access_id}/export"
    assert f"aino.{unique}" in requests.get(export_url, headers=headers(api_keys),
                                            timeout=10).text

    erasure_id = file_request(consent, api_keys, {
        "kind": "erasure", "subject": {"profile_id": profile_id}, "reason": "ticket 4715"})
    acknowledge(settings, wait_for_fan_out(settings, erasure_id), OTHER_SERVICES)
    wait_for(consent, api_keys, erasure_id, lambda s: s["proof"]["personal_data_forgotten"],
             "the erasure completed")

    export = requests.get(export_url, headers=headers(api_keys), timeout=10)
    assert export.status_code == 200 and f"aino.{unique}" not in export.text
    assert status(consent, api_keys, access_id)["proof"]["personal_data_forgotten"]


def test_an_access_request_still_collecting_when_the_erasure_completes_keeps_nothing(
        consent, api_keys, settings, unique):
    profile_id = f"profile-{unique}"
    access_id = file_request(consent, api_keys, {
        "kind": "access", "subject": {"profile_id": profile_id}, "reason": "ticket 4718"})
    access = wait_for_fan_out(settings, access_id)
    erasure_id = file_request(consent, api_keys, {
        "kind": "erasure", "subject": {"profile_id": profile_id}, "reason": "ticket 4719"})
    acknowledge(settings, wait_for_fan_out(settings, erasure_id), OTHER_SERVICES)
    wait_for(consent, api_keys, erasure_id, lambda s: s["proof"]["personal_data_forgotten"],
             "the erasure completed")

    acknowledge(settings, access, OTHER_SERVICES,  # collected before the erasure, late
                data=lambda service: {"email": f"aino.{unique}@example.com"})
    wait_for(consent, api_keys, access_id, lambda s: s["state"] == "completed",
             "the access request completed")

    export = requests.get(f"{consent.url}/v1/privacy/requests/{access_id}/export",
                          headers=headers(api_keys), timeout=10)
    assert export.status_code == 200 and f"aino.{unique}" not in export.text


def test_an_erasure_forgets_an_open_rectifications_values_but_not_an_open_erasure(
        consent, api_keys, settings, unique):
    profile_id = f"profile-{unique}"
    rectification_id = file_request(consent, api_keys, {
        "kind": "rectification", "subject": {"profile_id": profile_id}, "reason": "t 4720",
        "fields": {"city": f"Kangasniemi-{unique}"}})
    wait_for_fan_out(settings, rectification_id)
    open_erasure_id = file_request(consent, api_keys, {
        "kind": "erasure", "subject": {"profile_id": profile_id}, "reason": "t 4721"})
    wait_for_fan_out(settings, open_erasure_id)  # never acknowledged here
    erasure_id = file_request(consent, api_keys, {
        "kind": "erasure", "subject": {"profile_id": profile_id}, "reason": "t 4722"})
    acknowledge(settings, wait_for_fan_out(settings, erasure_id), OTHER_SERVICES)
    wait_for(consent, api_keys, erasure_id, lambda s: s["proof"]["personal_data_forgotten"],
             "the erasure completed")

    assert status(consent, api_keys, rectification_id)["proof"]["personal_data_forgotten"]
    assert not status(consent, api_keys, open_erasure_id)["proof"]["personal_data_forgotten"]


def test_a_request_id_filed_again_answers_the_same_request_and_refuses_another(
        consent, api_keys, unique):
    body = {"kind": "erasure", "subject": {"profile_id": f"profile-{unique}"},
            "reason": "ticket 4716", "request_id": f"req-{unique}"}
    assert file_request(consent, api_keys, body) == f"req-{unique}"
    assert file_request(consent, api_keys, body) == f"req-{unique}"  # a retry

    for other in ({**body, "kind": "access"},
                  {**body, "subject": {"profile_id": f"other-{unique}"}}):
        reused = requests.post(f"{consent.url}/v1/privacy/requests", json=other,
                               headers=headers(api_keys), timeout=30)
        assert reused.status_code == 409 and "was used for another request" in reused.text
    assert status(consent, api_keys, f"req-{unique}")["kind"] == "erasure"


def test_an_access_export_with_a_failed_part_downloads_only_when_asked_for_partial(
        consent, api_keys, settings, unique):
    request_id = file_request(consent, api_keys, {
        "kind": "access", "subject": {"profile_id": f"profile-{unique}"}, "reason": "t 4717"})
    request = wait_for_fan_out(settings, request_id)
    acknowledge(settings, request, OTHER_SERVICES[1:], data=lambda service: {"s": service})
    acknowledge(settings, request, OTHER_SERVICES[:1], status="failed")
    wait_for(consent, api_keys, request_id, lambda s: s["state"] == "partially_failed",
             "the access request partially failed")
    url = f"{consent.url}/v1/privacy/requests/{request_id}/export"

    refused = requests.get(url, headers=headers(api_keys), timeout=10)
    partial = requests.get(url, params={"partial": "true"}, headers=headers(api_keys),
                           timeout=10)

    assert refused.status_code == 409 and OTHER_SERVICES[0] in refused.json()["detail"]
    assert partial.status_code == 200 and partial.json()["failed"] == [OTHER_SERVICES[0]]


@pytest.mark.parametrize("body", [
    {"kind": "forget", "subject": {"profile_id": "p"}, "reason": "r"},
    {"kind": "erasure", "subject": {}, "reason": "r"},
    {"kind": "erasure", "subject": {"profile_id": "p", "identifier": {
        "type": "email", "value": "a@example.com"}}, "reason": "r"},
    {"kind": "erasure", "subject": {"identifier": {"type": "email", "value": "not-mail"}},
     "reason": "r"},
    {"kind": "rectification", "subject": {"profile_id": "p"}, "reason": "r"},
    {"kind": "erasure", "subject": {"profile_id": "p"}},
    {"kind": "erasure", "subject": {"profile_id": {"$gt": ""}}, "reason": "r"},
    {"kind": "rectification", "subject": {"profile_id": "p"}, "reason": "r",
     "fields": {"$where": "1"}},
])
def test_bad_requests_are_refused_with_a_problem(consent, api_keys, body):
    response = requests.post(f"{consent.url}/v1/privacy/requests", json=body,
                             headers=headers(api_keys), timeout=10)
    assert response.status_code == 422, response.text
    assert response.headers["Content-Type"] == "application/problem+json"


def test_unknown_requests_and_exports_of_other_kinds_are_4xx(consent, api_keys, unique):
    missing = requests.get(f"{consent.url}/v1/privacy/requests/nope-{unique}",
                           headers=headers(api_keys), timeout=10)
    assert missing.status_code == 404
    request_id = file_request(consent, api_keys, {
        "kind": "erasure", "subject": {"profile_id": f"p-{unique}"}, "reason": "r"})
    export = requests.get(f"{consent.url}/v1/privacy/requests/{request_id}/export",
                          headers=headers(api_keys), timeout=10)
    assert export.status_code == 409


def test_only_the_dpo_files_requests_and_downloads_exports(consent, api_keys, unique):
    body = {"kind": "access", "subject": {"profile_id": f"p-{unique}"}, "reason": "r"}
    url = f"{consent.url}/v1/privacy/requests"
    assert requests.post(url, json=body, timeout=10).status_code == 401
    for role in ("agent", "supervisor", "collector", "partner"):
        assert requests.post(url, json=body, headers=headers(api_keys, role),
                             timeout=10).status_code == 403
    request_id = file_request(consent, api_keys, body)
    assert status(consent, api_keys, request_id, "supervisor")["kind"] == "access"
    assert requests.get(f"{url}/{request_id}/export", headers=headers(api_keys, "supervisor"),
                        timeout=10).status_code == 403
    assert requests.get(f"{url}/{request_id}", headers=headers(api_keys, "agent"),
                        timeout=10).status_code == 403


def test_retention_dry_run_reports_without_deleting(consent, api_keys):
    report = requests.get(f"{consent.url}/v1/privacy/retention", headers=headers(api_keys),
                          timeout=10)
    assert report.status_code == 200
    kinds = {k["kind"]: k for k in report.json()["kinds"]}
    assert kinds["access_exports"]["retention_days"] == 30
    assert all(k["deleted"] == 0 for k in kinds.values())
    assert requests.post(f"{consent.url}/v1/privacy/retention/sweep",
                         headers=headers(api_keys), timeout=10).status_code == 403




def test_rectifying_special_category_data_without_explicit_consent_is_refused(
        consent, api_keys, unique):
    profile = f"p-special-{unique}"
    body = {"kind": "rectification", "subject": {"profile_id": profile}, "reason": "ticket 7",
            "fields": {"allergies": "pähkinä", "city": "Oulu"}}
    refused = requests.post(f"{consent.url}/v1/privacy/requests", json=body,
                            headers=headers(api_keys), timeout=10)
    assert refused.status_code == 422, refused.text
    problem = refused.json()
    assert "allergies is health data and needs special_health" in problem["detail"]
    assert list(problem["errors"]["json"]["fields"]) == ["allergies"]

    cleared = {**body, "fields": {"allergies": None}}  # taking such data away needs no consent
    assert requests.post(f"{consent.url}/v1/privacy/requests", json=cleared,
                         headers=headers(api_keys), timeout=10).status_code == 202

    granted = requests.post(f"{consent.url}/v1/consents", headers=headers(api_keys, "collector"),
                            timeout=10, json={
                                "source": "test", "profile_id": profile,
                                "purpose": "special_health", "state": "granted",
                                "decision_id": f"d-special-{unique}",
                                "proof": {"ip": "192.0.2.10", "user_agent": "UA"}})
    assert granted.status_code == 201, granted.text
    accepted = requests.post(f"{consent.url}/v1/privacy/requests", json=body,
                             headers=headers(api_keys), timeout=10)
    assert accepted.status_code == 202, accepted.text
