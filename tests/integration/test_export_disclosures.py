"""GET /v1/exports/disclosures: which partners received one profile's data and when, over the
export API and worker as processes and a fake partner (tests/support/export_partner.py)."""

from __future__ import annotations

from datetime import datetime

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
from tests.support.processes import ServiceApi, ServiceWorker


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
