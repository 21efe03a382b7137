"""Every endpoint of every service × every role, no key and a revoked key: exactly the
documented answer. The apps run in-process against the real store (keys live there)."""

from __future__ import annotations

import importlib
import re

import pytest

from services.common.auth import ROLES
from services.common.config import Settings
from tests.support.processes import wait_until

SERVICES = ("identity", "profile", "consent", "social", "export")
OPEN = {"/healthz", "/readyz", "/metrics", "/openapi.json"}
# the agent dashboard's and the preference centre's pages and static files: loaded before
# sign-in, they hold no data (the preference centre's page shows data only to a session)
PUBLIC_PAGES = re.compile(r"/(dashboard|preferences)(/static/.+)?")


def endpoints(app):
    for rule in app.url_map.iter_rules():
        if rule.endpoint == "static":
            continue
        view = app.view_functions[rule.endpoint]
        path = re.sub(r"<(?:[^:>]+:)?([^>]+)>", r"unknown-\1", rule.rule)
        for method in sorted(rule.methods - {"HEAD", "OPTIONS"}):
            yield method, path, view


@pytest.fixture(scope="module")
def clients(test_env, api_keys, db):
    from services.common.auth import ApiKeys

    settings = Settings.from_env(test_env)
    apps = {name: importlib.import_module(f"services.{name}.api").create_app(settings)
            for name in SERVICES}
    keys = ApiKeys(db)
    wait_until(lambda: keys.authenticate(api_keys["admin"]) is not None, 30,
               what="bootstrap keys registered")
    key_id, revoked = keys.create("revoked", ["admin"])
    keys.revoke(key_id)
    return {name: app.test_client() for name, app in apps.items()}, revoked


def call(client, method, path, key=None):
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return client.open(path, method=method, headers=headers, json={})


@pytest.mark.parametrize("service", SERVICES)
def test_every_endpoint_answers_each_role_as_documented(service, clients, api_keys):
    apps, revoked_key = clients
    client = apps[service]
    checked = 0
    for method, path, view in endpoints(client.application):
        roles = getattr(view, "_muisti_roles", None)
        if getattr(view, "_muisti_platform_proof", None):
            # a platform's own proof (signature, verify token, code) guards it: unproven calls
            # are refused, and alike whatever API key comes with them
            unproven = call(client, method, path).status_code
            assert unproven in (400, 401, 403, 404, 503), f"{method} {path}: {unproven}"
            for key in (revoked_key, *api_keys.values()):
                assert call(client, method, path, key).status_code == unproven, path
            checked += 1
            continue
        if roles is None and PUBLIC_PAGES.fullmatch(path):
            assert call(client, method, path).status_code in (200, 404), path
            continue
        if roles is None:
            assert path in OPEN, f"{method} {path} has no role check"
            assert call(client, method, path).status_code in (200, 503), path
            continue
        assert call(client, method, path).status_code == 401, f"{method} {path} without key"
        assert call(client, method, path, revoked_key).status_code == 401, f"{path} revoked"
        for role in ROLES:
            status = call(client, method, path, api_keys[role]).status_code
            allowed = role == "admin" or role in roles
            if allowed:
                assert status not in (401, 403, 500), f"{method} {path} as {role}: {status}"
            else:
                assert status == 403, f"{method} {path} as {role}: {status}"
        checked += 1
    assert checked >= {"identity": 15, "profile": 7}.get(service, 3)
