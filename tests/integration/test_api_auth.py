"""API-key authentication and roles on a real service API backed by the real store."""

from __future__ import annotations

import pytest
import requests

from tests.support.processes import ServiceApi


@pytest.fixture(scope="module")
def identity_api(test_env):
    api = ServiceApi("identity", {**test_env, "CDP_AUTH_CACHE_SECONDS": "0"}).start()
    yield api
    api.stop()


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


NEW_KEY = {"name": "helpdesk 7", "roles": ["agent"]}


def test_request_without_a_key_is_refused_with_401_and_a_problem_document(identity_api):
    response = requests.post(f"{identity_api.url}/v1/auth/keys", json=NEW_KEY, timeout=5)
    assert response.status_code == 401
    assert response.headers["Content-Type"] == "application/problem+json"
    assert response.headers["WWW-Authenticate"].startswith("Bearer")
    assert "API key is required" in response.json()["detail"]


def test_unknown_key_is_refused_with_401(identity_api):
    response = requests.get(f"{identity_api.url}/v1/auth/whoami",
                            headers=bearer("mk_not_a_real_key_000000000"), timeout=5)
    assert response.status_code == 401


def test_key_without_the_role_is_refused_with_403(identity_api, api_keys):
    response = requests.post(f"{identity_api.url}/v1/auth/keys", json=NEW_KEY,
                             headers=bearer(api_keys["agent"]), timeout=5)
    assert response.status_code == 403
    assert "admin" in response.json()["detail"]


def test_key_with_the_role_is_served(identity_api, api_keys):
    response = requests.post(f"{identity_api.url}/v1/auth/keys", json=NEW_KEY,
                             headers=bearer(api_keys["admin"]), timeout=5)
    assert response.status_code == 201
    created = response.json()
    me = requests.get(f"{identity_api.url}/v1/auth/whoami", headers=bearer(created["key"]),
                      timeout=5)
    assert me.status_code == 200
    assert me.json() == {"key_id": created["key_id"], "name": "helpdesk 7",
                         "roles": ["agent"], "partner_id": None}


def test_write_key_as_basic_auth_user_name_is_accepted_like_segment_sends_it(
        identity_api, api_keys):
    response = requests.get(f"{identity_api.url}/v1/auth/whoami",
                            auth=(api_keys["collector"], ""), timeout=5)
    assert response.status_code == 200
    assert response.json()["roles"] == ["collector"]


def test_revoked_key_is_refused(identity_api, api_keys):
    created = requests.post(f"{identity_api.url}/v1/auth/keys", json=NEW_KEY,
                            headers=bearer(api_keys["admin"]), timeout=5).json()
    revoked = requests.delete(f"{identity_api.url}/v1/auth/keys/{created['key_id']}",
                              headers=bearer(api_keys["admin"]), timeout=5)
    assert revoked.status_code == 204
    response = requests.get(f"{identity_api.url}/v1/auth/whoami",
                            headers=bearer(created["key"]), timeout=5)
    assert response.status_code == 401


def test_invalid_key_request_gets_422_naming_the_field(identity_api, api_keys):
    response = requests.post(f"{identity_api.url}/v1/auth/keys",
                             json={"name": "x", "roles": ["superuser"]},
                             headers=bearer(api_keys["admin"]), timeout=5)
    assert response.status_code == 422
    assert "roles" in response.json()["errors"]["json"]


def test_health_readiness_and_metrics_are_served(identity_api):
    assert requests.get(f"{identity_api.url}/healthz", timeout=5).json()["status"] == "ok"
    ready = requests.get(f"{identity_api.url}/readyz", timeout=5).json()
    assert ready == {"status": "ready",
                     "checks": {"store": "ok", "broker": "ok", "bootstrap_keys": "ok"}}
    metrics = requests.get(f"{identity_api.url}/metrics", timeout=5).text
    assert "muisti_http_requests_total" in metrics
    spec = requests.get(f"{identity_api.url}/openapi.json", timeout=5).json()
    assert "/v1/auth/keys" in spec["paths"]


def test_a_bad_body_without_a_key_is_refused_for_the_key_not_the_body(identity_api):
    response = requests.post(f"{identity_api.url}/v1/auth/keys", json={"roles": "x"}, timeout=5)
    assert response.status_code == 401
