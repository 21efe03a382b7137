"""Session fixtures: the real Kafka broker and MongoDB-protocol store, started once.

The ``test`` infrastructure instance (deploy/local) is provisioned and started on first use
unless CDP_KAFKA_BOOTSTRAP / CDP_MONGO_URI point at servers of the user's own. Tests under
tests/integration and tests/e2e are marked ``infra``; unit tests cannot open sockets.
"""

from __future__ import annotations

import base64
import os
import uuid
from pathlib import Path

import pytest

from deploy.local.infra import Instance
from services.common import store
from services.common.config import Settings

TESTS = Path(__file__).parent
SESSION = uuid.uuid4().hex[:8]


def pytest_collection_modifyitems(items):
    for item in items:
        path = Path(str(item.fspath))
        if TESTS / "integration" in path.parents or TESTS / "e2e" in path.parents:
            item.add_marker(pytest.mark.infra)


@pytest.fixture(scope="session")
def infra() -> Instance:
    instance = Instance.named("test")
    instance.start()
    return instance


@pytest.fixture(scope="session")
def test_env(infra: Instance) -> dict[str, str]:
    """Environment for service processes started by tests: this session's broker and store,
    its own database, and bootstrap keys for every role."""
    return {
        **os.environ,
        **infra.env(),
        "CDP_MONGO_DB": f"muisti_test_{SESSION}",
        # sessions sharing the broker must not share consumer groups
        "CDP_CONSUMER_GROUP_PREFIX": f"test-{SESSION}-",
        "CDP_BOOTSTRAP_API_KEYS": ",".join(f"{role}:{key}" for role, key in API_KEYS.items()),
        "CDP_LOG_FORMAT": "json",
        "CDP_PRIVACY_DIGEST_KEY": f"test-digest-key-{SESSION}",
        "CDP_MASTER_KEY": base64.b64encode(os.urandom(32)).decode(),
        "CDP_SERVICE_API_KEY": API_KEYS["dpo"],
        "CDP_CONSUMER_SESSION_TIMEOUT_MS": "6000",
    }


API_KEYS = {
    role: f"test-{role}-key-{uuid.uuid4().hex}"
    for role in ("collector", "agent", "supervisor", "partner", "dpo", "admin")
}


@pytest.fixture(scope="session")
def api_keys() -> dict[str, str]:
    return API_KEYS


@pytest.fixture(scope="session")
def settings(test_env: dict[str, str]) -> Settings:
    return Settings.from_env(test_env)


@pytest.fixture(scope="session")
def mongo_client(settings: Settings):
    client = store.connect(settings)
    yield client
    client.close()


@pytest.fixture(scope="session")
def db(mongo_client, settings: Settings):
    return store.database(mongo_client, settings)


@pytest.fixture
def unique() -> str:
    """A fresh suffix so tests share the broker and store without cleaning up."""
    return uuid.uuid4().hex[:10]
