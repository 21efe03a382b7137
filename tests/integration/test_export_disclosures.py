"""What partners were given and told, over the export API and worker as processes and a fake
partner (tests/support/export_partner.py): GET /v1/exports/disclosures (which partners
received one profile's data and when) and a partner's deletion notices (listed, and sent again
once they failed for good, or closed unsent by the dpo)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
import requests

from services.common import topics
from tests.support.export_partner import (
    FakePartner,
    auth,
    consent_changed,
    finished_run,
    profile_changed,
    publish,
    put_partner,
    wait_for_read_model,
)
from tests.support.processes import ServiceApi, ServiceWorker, wait_until


@pytest.fixture(scope="module")
def export_env(test_env, tmp_path_factory):
    return {**test_env, "CDP_EXPORT_ALLOW_HTTP": "true", "CDP_EXPORT_LEASE_SECONDS": "3",
            "CDP_EXPORT_DIRECTORY_ROOT": str(tmp_path_factory.mktemp("exports"))}


@pytest.fixture(scope="module")
def export_api(export_env):
    api = ServiceApi("export", export_env).start()
    worker = ServiceWorker("services.export", export_env, name="export-worker").start()
    yield api
    worker.stop()
    api.stop()


def disclosures(export_api, api_keys, profile_id: str, role: str = "dpo") -> requests.Response:
    return requests.get(f"{export_api.url}/v1/exports/disclosures", timeout=10,
                        params={"profile_id": profile_id}, headers=auth(api_keys, role))


def test_disclosures_list_the_partner_and_times_a_profiles_data_was_sent(
        export_api, settings, db, api_keys, unique):
    partner = FakePartner()
    segment, partner_id = f"seg-{unique}", f"ads-{unique}"
    sent, withheld = f"{unique}-sent", f"{unique}-withheld"
    publish(settings, topics.PROFILE_CHANGES,
            [profile_changed(pid, f"{pid}@example.com", segment) for pid in (sent, withheld)])
    publish(settings, topics.CONSENT_CHANGES, [consent_changed(sent, "granted"),
                                               consent_changed(withheld, "denied")])
    wait_for_read_model(db, [sent, withheld], [sent, withheld])
    put_partner(export_api, api_keys, partner_id, partner.url, segment)
    started = requests.post(f"{export_api.url}/v1/exports/{partner_id}/runs", json={},
                            headers=auth(api_keys, "dpo"), timeout=10)
    assert started.status_code == 202, started.text
    run = finished_run(export_api, api_keys, partner_id, started.json()["run_id"])
    assert run["status"] == "succeeded", run

    answer = disclosures(export_api, api_keys, sent)
    assert answer.status_code == 200, answer.text
    [disclosure] = answer.json()["disclosures"]
    assert (disclosure["partner_id"], disclosure["partner_name"], disclosure["via"]) == (
        partner_id, "Fake ads", "run")
    assert disclosure["fields"] == ["em", "pid"]
    assert datetime.fromisoformat(disclosure["first_sent_at"]) <= datetime.fromisoformat(
        disclosure["last_sent_at"])
    assert disclosures(export_api, api_keys, withheld).json() == {
        "profile_id": withheld, "disclosures": []}
    assert disclosures(export_api, api_keys, sent, role="admin").status_code == 200
    assert disclosures(export_api, api_keys, sent, role="partner").status_code == 403
    partner.close()


def test_disclosures_need_a_profile_id(export_api, api_keys):
    response = requests.get(f"{export_api.url}/v1/exports/disclosures", timeout=10,
                            headers=auth(api_keys, "dpo"))
    assert response.status_code == 422
    assert response.headers["Content-Type"].startswith("application/problem+json")


def notices(export_api, api_keys, partner_id: str, role: str = "dpo", **params):
    response = requests.get(f"{export_api.url}/v1/exports/{partner_id}/notices", timeout=10,
                            params=params, headers=auth(api_keys, role))
    assert response.status_code == 200, response.text
    return response.json()


def test_a_deletion_notice_that_failed_for_good_is_listed_and_goes_out_once_the_contract_is_fixed(
        export_api, settings, db, api_keys, unique):
    partner = FakePartner()
    segment, partner_id, pid = f"seg-{unique}", f"ads-{unique}", f"{unique}-leaving"
    publish(settings, topics.PROFILE_CHANGES, [profile_changed(pid, f"{pid}@example.com",
                                                               segment)])
    publish(settings, topics.CONSENT_CHANGES, [consent_changed(pid, "granted")])
    wait_for_read_model(db, [pid], [pid])
    put_partner(export_api, api_keys, partner_id, partner.url, segment)
    started = requests.post(f"{export_api.url}/v1/exports/{partner_id}/runs", json={},
                            headers=auth(api_keys, "dpo"), timeout=10)
    run = finished_run(export_api, api_keys, partner_id, started.json()["run_id"])
    assert run["status"] == "succeeded", run
    # the contract now holds a secret the partner does not know: it refuses every request
    put_partner(export_api, api_keys, partner_id, partner.url, segment,
                secret="a-secret-the-partner-never-had-0123")

    publish(settings, topics.CONSENT_CHANGES, [consent_changed(pid, "withdrawn")])
    failed = wait_until(lambda: notices(export_api, api_keys, partner_id,
                                        status="failed")["notices"], 60,
                        what="the deletion notice to fail for good")
    [notice] = failed
    assert (notice["profile_id"], notice["status"], notice["attempts"]) == (pid, "failed", 1)
    assert "401" in notice["last_error"] and "identifiers" not in notice
    assert partner.keys("deletion") == [notice["notice_id"]]  # tried once, refused
    metrics = requests.get(f"{export_api.url}/metrics", timeout=10).text
    assert 'muisti_deletion_notices{service="export",state="failed"}' in metrics

    retried = requests.post(f"{export_api.url}/v1/exports/{partner_id}/notices/retry",
                            headers=auth(api_keys, "dpo"), timeout=10)
    assert retried.json() == {"partner_id": partner_id, "requeued": 1}
    wait_until(lambda: len(partner.keys("deletion")) == 2, 60, what="the notice tried again")
    wait_until(lambda: notices(export_api, api_keys, partner_id, status="failed")["notices"],
               60, what="the notice to fail again: the contract is still wrong")

    put_partner(export_api, api_keys, partner_id, partner.url, segment)  # fixed
    sent = wait_until(lambda: notices(export_api, api_keys, partner_id,
                                      status="sent")["notices"], 60,
                      what="the notice sent once the contract is fixed")
    assert sent[0]["notice_id"] == notice["notice_id"] and sent[0]["attempts"] == 3
    assert sent[0]["partner_receipt"]["status"] == 200
    [body] = partner.bodies("deletion")
    assert notice["notice_id"] in body.decode()
    assert notices(export_api, api_keys, partner_id)["counts"] == {"sent": 1}
    assert requests.get(f"{export_api.url}/v1/exports/{partner_id}/notices", timeout=10,
                        headers=auth(api_keys, "partner")).status_code == 403
    assert requests.get(f"{export_api.url}/v1/exports/nobody-{unique}/notices", timeout=10,
                        headers=auth(api_keys, "dpo")).status_code == 404
    partner.close()


def test_a_notice_that_cannot_be_sent_is_abandoned_by_the_dpo_with_the_reason(
        export_api, db, api_keys, unique):
    partner_id = f"gone-{unique}"
    put_partner(export_api, api_keys, partner_id, "https://partner.example/in", f"seg-{unique}")
    db.export_notices.insert_many([
        {"_id": f"{unique}-failed", "partner_id": partner_id, "profile_id": "p1",
         "reason": "erasure", "identifiers": {"em": ["hashed"]}, "status": "failed",
         "attempts": 3, "last_error": "HTTP 410", "next_attempt_at": datetime.now(UTC),
         "created_at": datetime.now(UTC)},
        {"_id": f"{unique}-sent", "partner_id": partner_id, "profile_id": "p2",
         "reason": "erasure", "identifiers": {}, "status": "sent", "attempts": 1,
         "next_attempt_at": datetime.now(UTC), "created_at": datetime.now(UTC)}])

    def abandon(notice_id: str, role: str = "dpo") -> requests.Response:
        return requests.post(
            f"{export_api.url}/v1/exports/{partner_id}/notices/{notice_id}/abandon",
            json={"reason": "the partner closed; told by registered letter"},
            headers=auth(api_keys, role), timeout=10)

    assert abandon(f"{unique}-failed", role="supervisor").status_code == 403
    answer = abandon(f"{unique}-failed")
    assert answer.status_code == 200, answer.text
    closed = answer.json()
    assert (closed["status"], closed["abandoned_reason"]) == (
        "abandoned", "the partner closed; told by registered letter")
    assert closed["abandoned_by"] and "identifiers" not in closed
    assert db.export_notices.find_one({"_id": f"{unique}-failed"})["identifiers"] == {}
    assert notices(export_api, api_keys, partner_id)["counts"] == {"abandoned": 1, "sent": 1}
    assert abandon(f"{unique}-failed").status_code == 409  # closed already
    assert abandon(f"{unique}-sent").status_code == 409
    assert abandon(f"{unique}-nothing").status_code == 404
