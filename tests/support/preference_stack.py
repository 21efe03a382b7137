"""The services the preference centre needs, as real processes on the test broker and store:
identity, profile and consent (API and worker each) and the export API (the partners a
customer's data went to), the consent service sending codes to an outbox directory; a customer
to sign in as; and reading a code from the outbox."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import requests

from tests.support.processes import ServiceApi, ServiceWorker, wait_until

PRIVACY_SERVICES = "identity,profile,consent"


@contextmanager
def preference_stack(test_env: dict[str, str], outbox: Path, **settings: str) -> Iterator[dict]:
    identity = ServiceApi("identity", test_env).start()
    profile = ServiceApi("profile", test_env).start()
    export = ServiceApi("export", test_env).start()
    env = {**test_env, "CDP_PREFERENCES_SENDER": "outbox",
           "CDP_PREFERENCES_OUTBOX_DIR": str(outbox), "CDP_PRIVACY_SERVICES": PRIVACY_SERVICES,
           "CDP_IDENTITY_URL": identity.url, "CDP_PROFILE_URL": profile.url,
           "CDP_EXPORT_URL": export.url, **settings}
    processes = [identity, profile, export, ServiceApi("consent", env).start(),
                 ServiceWorker("services.identity", env, name="identity-worker").start(),
                 ServiceWorker("services.profile", env, name="profile-worker").start(),
                 ServiceWorker("services.consent", env, name="consent-worker").start()]
    try:
        yield {"identity": identity.url, "profile": profile.url, "consent": processes[3].url,
               "export": export.url, "outbox": outbox}
    finally:
        for process in processes:
            process.stop()


def add_customer(stack: dict, api_keys: dict[str, str], unique: str, *,
                 name: str = "Aino") -> dict:
    """A customer known to identity (and to the profile service): email, phone, profile id."""
    email = f"aino.{unique}@example.fi"
    phone = f"+358 44 {int(unique, 16) % 10**7:07d}"
    batch = {"batch": [
        {"type": "identify", "userId": f"P-{unique}", "messageId": f"pi-{unique}",
         "traits": {"firstName": name, "lastName": "Korhonen", "email": email, "phone": phone,
                    "address": {"city": "Tampere"}}},
        {"type": "track", "userId": f"P-{unique}", "event": "Order Completed",
         "messageId": f"po-{unique}", "properties": {"order_id": "12345", "total": 89.9}}]}
    response = requests.post(stack["identity"] + "/v1/batch", json=batch,
                             auth=(api_keys["collector"], ""), timeout=10)
    assert response.status_code == 200, response.text
    key = api_keys["dpo"]
    found: dict = {}

    def resolved() -> bool:
        answer = requests.get(stack["identity"] + "/v1/identity/resolve", timeout=10,
                              params={"type": "email", "value": email},
                              headers={"Authorization": f"Bearer {key}"})
        if answer.status_code == 200:
            found["profile_id"] = answer.json()["profile_id"]
        return answer.status_code == 200 and requests.get(
            f"{stack['profile']}/v1/profiles/{found['profile_id']}", timeout=10,
            headers={"Authorization": f"Bearer {key}"}).status_code == 200

    wait_until(resolved, 60, interval=0.3, what="the customer in the identity graph")
    return {"email": email, "phone": phone, "profile_id": found["profile_id"]}


def read_code(outbox: Path, to: str, timeout: float = 30) -> str:
    """The newest code sent to ``to`` (the file is removed, so the next read waits anew)."""
    found: dict = {}

    def arrived() -> bool:
        for path in sorted(outbox.glob("*.json"), key=lambda p: p.stat().st_mtime):
            message = json.loads(path.read_text())
            if message["to"] == to:
                found["code"] = message["code"]
                path.unlink()
        return "code" in found

    wait_until(arrived, timeout, interval=0.2, what=f"a code sent to {to}")
    assert re.fullmatch(r"\d{6}", found["code"])
    return found["code"]
