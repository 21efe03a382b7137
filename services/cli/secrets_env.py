"""Fresh secrets for a deployment, as environment lines: ``MUISTI_*`` for deploy/.env (the
Compose file maps them to the services' settings) or ``CDP_*`` for a Kubernetes Secret."""

from __future__ import annotations

import secrets

from services.common.shredding import new_master_key


def new_secrets(prefix: str = "MUISTI_") -> dict[str, str]:
    """Random values for every secret setting. The service key is registered as a dpo key in
    the bootstrap keys, since the consent service presents it to the identity API."""
    admin_key = "mk_admin_" + secrets.token_urlsafe(32)
    service_key = "mk_service_" + secrets.token_urlsafe(32)
    return {
        prefix + "BOOTSTRAP_API_KEYS": f"admin:{admin_key},dpo:{service_key}",
        prefix + "SERVICE_API_KEY": service_key,
        prefix + "MASTER_KEY": new_master_key(),
        prefix + "PRIVACY_DIGEST_KEY": secrets.token_urlsafe(32),
        prefix + "DASHBOARD_STREAM_SECRET": secrets.token_urlsafe(48),
    }


def env_lines(values: dict[str, str]) -> str:
    return "".join(f"{name}={value}\n" for name, value in values.items())
