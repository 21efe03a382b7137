"""Configuration from ``CDP_*`` environment variables: typed, validated, documented.

Every setting is declared once below with its type, default and meaning; ``Settings.from_env``
reads them all and reports every problem at once, so a service refuses to start on a typo
instead of running half-configured. ``python -m services.common.config`` prints the reference.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


class ConfigError(ValueError):
    """One or more settings are invalid; ``problems`` lists each as 'CDP_X: reason'."""

    def __init__(self, problems: list[str]):
        super().__init__("invalid configuration: " + "; ".join(problems))
        self.problems = problems


def _setting(default: Any, doc: str, *, check: Callable[[Any], str | None] | None = None):
    return field(default=default, metadata={"doc": doc, "check": check})


def _positive(value: int) -> str | None:
    return None if value > 0 else "must be a positive integer"


def _port(value: int) -> str | None:
    return None if 0 <= value <= 65535 else "must be a TCP port (0-65535)"


def _one_of(*choices: str) -> Callable[[str], str | None]:
    return lambda value: None if value in choices else f"must be one of {', '.join(choices)}"


def _mongo_uri(value: str) -> str | None:
    ok = value.startswith(("mongodb://", "mongodb+srv://"))
    return None if ok else "must start with mongodb:// or mongodb+srv://"


def parse_type_limits(value: str) -> dict[str, int]:
    """``email=5,phone=3`` → {"email": 5, "phone": 3}; raises ValueError on a bad entry."""
    limits = {}
    for item in filter(None, (part.strip() for part in value.split(","))):
        name, _, number = item.partition("=")
        if not name.strip() or not number.strip().isdigit() or int(number) < 1:
            raise ValueError(item)
        limits[name.strip()] = int(number)
    return limits


def _type_limits(value: str) -> str | None:
    from services.common.identifiers import IDENTIFIER_TYPES

    try:
        limits = parse_type_limits(value)
    except ValueError as exc:
        return f"must be type=positive number pairs separated by commas; bad entry {exc}"
    unknown = sorted(set(limits) - set(IDENTIFIER_TYPES))
    return f"unknown identifier types: {', '.join(unknown)}" if unknown else None


def _role_keys(value: str) -> str | None:
    for item in filter(None, (part.strip() for part in value.split(","))):
        role, _, key = item.partition(":")
        if not role or len(key) < 16:
            return "must be a comma-separated list of role:key with keys of 16+ characters"
    return None


@dataclass(frozen=True)
class Settings:
    """All of Muisti's settings. Field ``x_y`` is read from ``CDP_X_Y``."""

    kafka_bootstrap: str = _setting("127.0.0.1:9092", "Kafka bootstrap servers, comma-separated")
    mongo_uri: str = _setting(
        "mongodb://127.0.0.1:27017/", "MongoDB (or FerretDB) connection URI", check=_mongo_uri
    )
    mongo_db: str = _setting("muisti", "Database name in the store")
    topic_partitions: int = _setting(
        4, "Partitions for topics Muisti creates (upper bound on parallel workers)",
        check=_positive,
    )
    topic_replication: int = _setting(
        1, "Replication factor for topics Muisti creates (3 on a production cluster)",
        check=_positive,
    )
    consumer_batch_size: int = _setting(
        500, "Most records a worker takes in one poll", check=_positive
    )
    consumer_poll_ms: int = _setting(
        500, "How long a worker's poll waits for records", check=_positive
    )
    consumer_session_timeout_ms: int = _setting(
        10000, "Kafka group session timeout: how soon a dead worker's partitions move on",
        check=_positive,
    )
    consumer_group_prefix: str = _setting(
        "", "Prefix for every Kafka consumer group (separate deployments sharing one cluster)"
    )
    handler_max_attempts: int = _setting(
        3, "Tries of a message whose handler fails unexpectedly before it is dead-lettered",
        check=_positive,
    )
    dead_letter_streak_limit: int = _setting(
        1000,
        "Consecutive dead letters after which a worker stops instead of rejecting everything "
        "(usually a bad deploy, not bad data)",
        check=_positive,
    )
    identity_limits: str = _setting(
        "",
        "Identifiers of one type a profile may hold before merge protection refuses more, as "
        "type=n,type=n over the defaults (user_id=1, hetu=1, email=5, phone=5, social ids 10, "
        "device_id and anonymous_id 100)",
        check=_type_limits,
    )
    http_host: str = _setting("127.0.0.1", "Address the HTTP APIs listen on")
    http_port: int = _setting(0, "HTTP port; 0 means the service's default", check=_port)
    http_threads: int = _setting(8, "Threads per HTTP worker process", check=_positive)
    http_processes: int = _setting(1, "HTTP worker processes per API", check=_positive)
    worker_metrics_port: int = _setting(
        0, "Port where a Kafka worker serves /metrics and /healthz; 0 disables", check=_port
    )
    log_level: str = _setting("INFO", "Log level", check=_one_of(*LOG_LEVELS))
    log_format: str = _setting("json", "Log format: json (one object a line) or text",
                               check=_one_of("json", "text"))
    bootstrap_api_keys: str = _setting(
        "",
        "API keys created at start-up, as role:key,role:key (for local runs and tests; "
        "production keys are created with the key command)",
        check=_role_keys,
    )
    auth_cache_seconds: float = _setting(
        5.0, "How long a verified API key is trusted before it is looked up again "
        "(bounds how late a revocation takes effect)"
    )

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """Read every ``CDP_*`` setting from ``env`` (default ``os.environ``).

        Raises ConfigError naming every invalid variable.
        """
        env = os.environ if env is None else env
        values: dict[str, Any] = {}
        problems: list[str] = []
        for spec in fields(cls):
            var = env_name(spec.name)
            raw = env.get(var)
            value = spec.default
            if raw is not None and raw != "":
                try:
                    value = _convert(raw, type(spec.default))
                except ValueError:
                    problems.append(f"{var}: {raw!r} is not a valid {type(spec.default).__name__}")
                    continue
            check = spec.metadata["check"]
            reason = check(value) if check else None
            if reason:
                problems.append(f"{var}: {reason}")
            values[spec.name] = value
        if problems:
            raise ConfigError(problems)
        return cls(**values)


def env_name(field_name: str) -> str:
    return "CDP_" + field_name.upper()


def _convert(raw: str, kind: type) -> Any:
    if kind is bool:
        lowered = raw.strip().lower()
        if lowered in ("1", "true", "yes", "on"):
            return True
        if lowered in ("0", "false", "no", "off"):
            return False
        raise ValueError(raw)
    return kind(raw.strip())


def reference() -> str:
    """The configuration reference as a Markdown table (docs/CONFIGURATION.md)."""
    lines = ["| variable | default | meaning |", "|---|---|---|"]
    for spec in fields(Settings):
        default = spec.default if spec.default != "" else "(empty)"
        lines.append(f"| `{env_name(spec.name)}` | `{default}` | {spec.metadata['doc']} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.stdout.write(reference())
