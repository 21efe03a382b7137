"""Rotating CDP_MASTER_KEY for the export service: partner secrets sealed under the old key
keep opening while it is CDP_MASTER_KEY_PREVIOUS, ``python -m services.export rewrap-secrets``
re-seals them under the new key, and afterwards the service runs with the new key alone.
Runs in a database of its own, since the command re-seals every partner it finds."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys

import pytest
import requests

from services.export.export_store import ExportStore
from services.export.sealing import SecretBox
from tests.support.export_partner import SECRET, auth, put_partner
from tests.support.processes import ServiceApi


@pytest.fixture
def rotation_db(mongo_client, unique):
    name = f"muisti_export_rotation_{unique}"
    yield mongo_client[name]
    mongo_client.drop_database(name)


def b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


def rewrap_secrets(env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "services.export", "rewrap-secrets"],
                          env=env, capture_output=True, text=True, timeout=120)


def test_partner_secrets_survive_a_master_key_rotation(test_env, rotation_db, api_keys, unique):
    key_a, key_b = os.urandom(32), os.urandom(32)
    partner_id = f"rotated-{unique}"
    env = {**test_env, "CDP_MONGO_DB": rotation_db.name}

    before = ServiceApi("export", {**env, "CDP_MASTER_KEY": b64(key_a)}).start()
    try:
        put_partner(before, api_keys, partner_id, "https://partner.example/in", "vip")
    finally:
        before.stop()

    rotating = {**env, "CDP_MASTER_KEY": b64(key_b), "CDP_MASTER_KEY_PREVIOUS": b64(key_a)}
    done = rewrap_secrets(rotating)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    # the signing secret and the pseudonym key (this partner has no endpoint credentials)
    assert (report["partners"], report["resealed"], report["unreadable"]) == (1, 2, [])
    again = json.loads(rewrap_secrets(rotating).stdout)
    assert (again["resealed"], again["already_current"]) == (0, 2)

    contract = ExportStore(rotation_db, SecretBox(key_b)).partner(partner_id)
    assert contract.destination.signing_secret == SECRET  # what deliveries are signed with
    assert contract.pseudonym_key == "pseudonym-key-0123456789"

    after = ServiceApi("export", {**env, "CDP_MASTER_KEY": b64(key_b)}).start()
    try:
        shown = requests.get(f"{after.url}/v1/partners/{partner_id}",
                             headers=auth(api_keys, "dpo"), timeout=10)
        assert shown.status_code == 200, shown.text
        assert shown.json()["destination"]["signing_secret_set"] is True
    finally:
        after.stop()


def test_rewrap_secrets_exits_1_and_names_a_secret_neither_master_key_opens(
        test_env, rotation_db, unique):
    partner_id = f"alien-{unique}"
    rotation_db.export_partners.insert_one({
        "_id": partner_id, "destination": {"kind": "https", "signing_secret": SecretBox(
            os.urandom(32)).seal(partner_id, "signing_secret", SECRET)},
        "pseudonym_key": None})
    done = rewrap_secrets({**test_env, "CDP_MONGO_DB": rotation_db.name,
                           "CDP_MASTER_KEY": b64(os.urandom(32)),
                           "CDP_MASTER_KEY_PREVIOUS": b64(os.urandom(32))})
    assert done.returncode == 1
    assert json.loads(done.stdout)["unreadable"] == [f"{partner_id}/signing_secret"]
