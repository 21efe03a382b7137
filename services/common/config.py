"""Configuration from ``CDP_*`` environment variables: typed, validated, documented.

Every setting is declared once below with its type, default and meaning; ``Settings.from_env``
reads them all and reports every problem at once, so a service refuses to start on a typo
instead of running half-configured. ``python -m services.common.config`` prints the reference.
"""

from __future__ import annotations

import hashlib
import os
import sys
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
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


def _probability(value: float) -> str | None:
    return None if 0 < value <= 1 else "must be a number above 0 and at most 1"


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


def _master_key(value: str) -> str | None:
    if value == "":
        return None
    import base64
    import binascii

    try:
        raw = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        return "must be base64"
    return None if len(raw) == 32 else f"must decode to 32 bytes, not {len(raw)}"


def _service_names(value: str) -> str | None:
    names = [name.strip() for name in value.split(",")]
    ok = all(name.isidentifier() for name in names)
    return None if ok else "must be service names separated by commas"


def _kind_days(value: str) -> str | None:
    try:
        parse_type_limits(value)
    except ValueError as exc:
        return f"must be kind=days pairs separated by commas; bad entry {exc}"
    return None


_RFM_PART = r"\s*(recency|frequency|monetary)=\d+(\.\d+)?(,\d+(\.\d+)?){3}\s*"


def _rfm_thresholds(value: str) -> str | None:
    import re

    ok = re.fullmatch(rf"{_RFM_PART}(;{_RFM_PART})*;?", value) is not None
    return None if ok else "must be part=n,n,n,n joined by ; (parts recency, frequency, monetary)"


def _purpose_consents(value: str) -> str | None:
    import re

    names = r"[a-z][a-z0-9_]*"
    ok = re.fullmatch(rf"({names}={names}(\|{names})*)(,{names}={names}(\|{names})*)*",
                      value.replace(" ", "")) is not None
    return None if ok or value == "" else "must be purpose=consent|consent,... in lower case"


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
    identity_match_threshold: float = _setting(
        0.99,
        "Match score at or above which a suggested pair of profiles is called a match "
        "(chosen on the generated labelled set for precision >= 0.99; see matching.py)",
        check=_probability,
    )
    identity_possible_threshold: float = _setting(
        0.95, "Match score at or above which a pair is still offered for review as possible",
        check=_probability,
    )
    identity_auto_merge_threshold: float = _setting(
        0.0,
        "Match score at or above which a suggestion run merges the pair without review; 0 "
        "means never (the default: a person decides); otherwise at least the match threshold",
        check=lambda value: None if value == 0 else _probability(value),
    )
    spool_dir: str = _setting(
        "",
        "Directory where an API spools messages that must reach Kafka but need not hold up "
        "the answer (the profile API's access-log entries); a restarted API ships what a "
        "killed one left there. Empty: a directory under the system's temp dir. In "
        "production, a volume that outlives the process",
    )
    http_host: str = _setting("127.0.0.1", "Address the HTTP APIs listen on")
    http_port: int = _setting(0, "HTTP port; 0 means the service's default", check=_port)
    http_threads: int = _setting(8, "Threads per HTTP worker process", check=_positive)
    http_processes: int = _setting(1, "HTTP worker processes per API", check=_positive)
    consent_url: str = _setting(
        "http://127.0.0.1:8103",
        "Base URL of the consent API; the agent dashboard reads a profile's consents there",
        check=lambda value: None if value.startswith(("http://", "https://"))
        else "must start with http:// or https://",
    )
    dashboard_stream_secret: str = _setting(
        "",
        "Secret (32+ characters) signing the dashboard's short-lived live-stream tokens; the "
        "same in every profile API process. Empty: a random secret kept in the store",
        check=lambda value: None if value == "" or len(value) >= 32
        else "must be at least 32 characters",
    )
    dashboard_max_streams: int = _setting(
        64,
        "Live dashboard streams one profile API process serves at once, each on a thread of "
        "its own beside the CDP_HTTP_THREADS that answer requests; beyond it a stream is "
        "refused with 503",
        check=_positive,
    )
    profile_rfm_thresholds: str = _setting(
        "recency=30,90,180,365;frequency=2,3,5,8;monetary=50,200,500,1000",
        "RFM score boundaries, four increasing numbers each: recency in days since the last "
        "purchase (within the first scores 5), frequency in purchases and monetary in total "
        "spend (from the last up scores 5)",
        check=_rfm_thresholds,
    )
    profile_purpose_consents: str = _setting(
        "marketing=marketing_email|marketing_sms|marketing_phone|marketing_post,"
        "analytics=analytics",
        "Consent purposes a profile read for a purpose (X-Purpose) needs one of, as "
        "purpose=consent|consent,...; without one the read withholds personal data",
        check=_purpose_consents,
    )
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
    privacy_digest_key: str = _setting(
        "",
        "Secret (16+ characters) for the keyed digests that stand in for erased identifiers "
        "(the suppression list) and for every personal identity code (hetu) at rest; "
        "required where data-subject requests or hetus are handled (identity, profile API, "
        "consent, social API)",
        check=lambda value: None if value == "" or len(value) >= 16
        else "must be at least 16 characters",
    )
    master_key: str = _setting(
        "",
        "Base64 of 32 random bytes: wraps the per-subject data keys of crypto-shredded personal "
        "fields (python -m services.common.shredding makes one); required by the consent "
        "service, and by identity, the profile API and the social API, which seal (and the "
        "profile API opens) hetus; losing it makes every sealed field unreadable",
        check=_master_key,
    )
    master_key_previous: str = _setting(
        "",
        "The master key being rotated out (base64 of 32 bytes): data keys and the export "
        "service's partner secrets still under it keep opening until python -m "
        "services.common.shredding rewrap and python -m services.export rewrap-secrets have "
        "moved them all under CDP_MASTER_KEY; then remove it",
        check=_master_key,
    )
    privacy_services: str = _setting(
        "identity,profile,consent,social,export",
        "Services that must acknowledge every data-subject request before it completes",
        check=_service_names,
    )
    privacy_deadline_days: int = _setting(
        30, "Days a data-subject request may take before it shows as overdue; never later "
        "than one calendar month after receipt (GDPR art. 12(3): 31 January → 28 February)",
        check=_positive,
    )
    identity_url: str = _setting(
        "http://127.0.0.1:8101",
        "Base URL of the identity API; the consent service asks it for a data subject's "
        "profiles and identifiers before fanning a request out (empty: no expansion)",
    )
    service_api_key: str = _setting(
        "", "API key a service presents to another service's API (the consent service to "
        "identity's subject lookup: a key with the dpo role)"
    )
    profile_url: str = _setting(
        "http://127.0.0.1:8102",
        "Base URL of the profile API; the preference centre shows a signed-in customer their "
        "profile there (with CDP_SERVICE_API_KEY)",
        check=lambda value: None if value.startswith(("http://", "https://"))
        else "must start with http:// or https://",
    )
    export_url: str = _setting(
        "http://127.0.0.1:8105",
        "Base URL of the export API; the preference centre shows a signed-in customer which "
        "partners received their data there (with CDP_SERVICE_API_KEY)",
        check=lambda value: None if value.startswith(("http://", "https://"))
        else "must start with http:// or https://",
    )
    preferences_sender: str = _setting(
        "outbox",
        "How the preference centre sends one-time sign-in codes: outbox (files in "
        "CDP_PREFERENCES_OUTBOX_DIR, never a real send), smtp (email) and sms (phone numbers, "
        "through the HTTP gateway) together, or smtp or sms alone",
        check=_one_of("outbox", "smtp+sms", "smtp", "sms"),
    )
    preferences_outbox_dir: str = _setting(
        ".run/preferences-outbox", "Directory where the outbox sender writes one file per code"
    )
    preferences_smtp_host: str = _setting("", "SMTP server that sends sign-in codes by email")
    preferences_smtp_port: int = _setting(587, "Port of the SMTP server", check=_port)
    preferences_smtp_starttls: bool = _setting(True, "Upgrade the SMTP connection with STARTTLS")
    preferences_smtp_user: str = _setting("", "SMTP user name; empty: no login")
    preferences_smtp_password: str = _setting("", "SMTP password")
    preferences_smtp_from: str = _setting("", "From address of sign-in code emails")
    preferences_sms_url: str = _setting(
        "", "SMS gateway endpoint: the code goes out as a JSON POST {to, message}"
    )
    preferences_sms_token: str = _setting("", "Bearer token presented to the SMS gateway")
    preferences_code_seconds: int = _setting(
        600, "How long a one-time sign-in code is valid", check=_positive
    )
    preferences_code_attempts: int = _setting(
        5, "Wrong guesses after which a one-time code is dead (a new one must be asked for)",
        check=_positive,
    )
    preferences_codes_per_identifier: int = _setting(
        5, "Codes one email address or phone number may be sent per hour", check=_positive
    )
    preferences_codes_per_ip: int = _setting(
        20, "Codes one client address may ask for per hour", check=_positive
    )
    preferences_session_seconds: int = _setting(
        1800, "How long a preference-centre session lasts after its last use", check=_positive
    )
    preferences_secure_cookies: bool = _setting(
        False, "Mark preference-centre cookies Secure (set it wherever the page is served over "
        "HTTPS, i.e. everywhere but local runs)"
    )
    retention_days: str = _setting(
        "consent_proof=1825,access_log=730,event_history=395,privacy_requests=1825,"
        "access_exports=30,stream_changes=30",
        "Days each kind of data is kept, as kind=days,...: consent proof after the consent "
        "ended, access-log entries, event history, closed data-subject requests, access "
        "exports awaiting download, a streaming export's changes after they were sent or "
        "cancelled; each service sweeps the kinds it holds",
        check=_kind_days,
    )
    consent_purposes_file: str = _setting(
        "", "The purposes catalogue (TOML) the consent service reads; empty: the packaged "
        "services/consent/purposes.toml"
    )
    consent_receipt_key: str = _setting(
        "",
        "Base64 of the 32-byte Ed25519 seed that signs consent receipts (anyone verifies them "
        "with the public key at /v1/consents/receipt-key); empty: a public development key",
        check=_master_key,
    )
    auth_cache_seconds: float = _setting(
        5.0, "How long a verified API key is trusted before it is looked up again "
        "(bounds how late a revocation takes effect)"
    )
    export_batch_size: int = _setting(
        500, "Profiles per export batch (one signed delivery each)", check=_positive
    )
    export_lease_seconds: float = _setting(
        30.0, "How long an export worker holds a run without renewing its lease; another "
        "worker resumes the run this long after the holder died", check=_positive,
    )
    export_max_attempts: int = _setting(
        6, "Delivery attempts of one export batch (timeouts, 429, 5xx) before the run fails",
        check=_positive,
    )
    export_retry_base_seconds: float = _setting(
        0.5, "First backoff of a failed export delivery; it doubles per attempt (full jitter)",
        check=_positive,
    )
    export_http_timeout_seconds: float = _setting(
        10.0, "Timeout of one HTTP delivery to a partner", check=_positive
    )
    export_directory_root: str = _setting(
        ".run/exports", "Directory under which directory destinations of export contracts live"
    )
    export_allow_http: bool = _setting(
        False, "Accept plain http:// partner endpoints (local runs and tests only)"
    )
    export_stream_batch_size: int = _setting(
        50, "Most profiles in one batch of a streaming export (changes waiting together go "
        "in one signed delivery)", check=_positive,
    )
    export_min_cell_size: int = _setting(
        10, "k of aggregate exports: a cell (and a measure's sum) is sent only when at least "
        "this many profiles make it; a contract may ask for more, never less", check=_positive,
    )
    social_meta_app_secret: str = _setting(
        "", "Meta app secret: checks X-Hub-Signature-256 on webhook deliveries and the "
        "signed_request of data-deletion callbacks; empty refuses every Meta delivery"
    )
    social_meta_verify_token: str = _setting(
        "", "The verify token entered in Meta's webhook settings (GET handshake); empty refuses "
        "the handshake"
    )
    social_x_consumer_secret: str = _setting(
        "", "X (Twitter) app consumer secret: answers the CRC check and verifies "
        "x-twitter-webhooks-signature; empty refuses every X delivery"
    )
    social_public_url: str = _setting(
        "", "Public base URL of the social API, for the deletion status URL given to Meta; "
        "empty uses the URL the request came to"
    )
    social_poll_url: str = _setting(
        "", "Base URL of the X API v2 the mentions poller reads (e.g. https://api.x.com); "
        "empty disables the poller"
    )
    social_poll_user_id: str = _setting("", "X user id of the brand account whose mentions "
                                        "the poller reads")
    social_poll_bearer_token: str = _setting("", "Bearer token the poller presents to the X API")
    social_poll_interval_seconds: float = _setting(
        60.0, "Pause between two polls of the mentions endpoint once it is read to the end"
    )
    social_poll_page_size: int = _setting(
        100, "Posts asked for per page of the mentions endpoint (X allows 5-100)",
        check=_positive,
    )
    social_x_compliance_url: str = _setting(
        "", "Base URL of the X API v2 whose user compliance stream the social worker reads "
        "(e.g. https://api.x.com); empty disables the reader"
    )
    social_x_compliance_partitions: str = _setting(
        "1,2,3,4", "Partitions of the user compliance stream this deployment reads, "
        "comma-separated (X splits the events over 1-4; read all four somewhere)",
        check=lambda value: None if value and all(
            part.strip() in ("1", "2", "3", "4") for part in value.split(","))
        else "comma-separated partitions among 1, 2, 3, 4",
    )
    social_x_compliance_bearer_token: str = _setting(
        "", "App-only bearer token the compliance stream reader presents to the X API"
    )
    social_meta_graph_url: str = _setting(
        "", "Base URL of Meta's Graph API with its version (e.g. "
        "https://graph.facebook.com/v21.0) for the Instagram mentions poller, fetching the "
        "text of Instagram mention webhooks and resolving the app-scoped ids of Meta's "
        "deletion callbacks; empty disables all three"
    )
    social_meta_app_id: str = _setting(
        "", "Meta app id: with the app secret it forms the app access token that resolves a "
        "deletion callback's app-scoped id to the person's page-scoped ids (ids_for_pages); "
        "empty erases the app-scoped id only"
    )
    social_instagram_user_id: str = _setting(
        "", "Instagram professional account id (IG user id) whose tags the poller reads"
    )
    social_instagram_access_token: str = _setting(
        "", "Access token (page or system user) the Instagram poller and the mention fetcher "
        "present to the Graph API; the worker fetches mentions only when it is set"
    )

    def spool_directory(self, service: str) -> Path:
        """Where ``service``'s API spools messages for this Kafka cluster: a spool left
        behind must be shipped to the cluster it was meant for."""
        root = Path(self.spool_dir) if self.spool_dir else Path(tempfile.gettempdir(),
                                                                "muisti-spool")
        cluster = hashlib.sha256(self.kafka_bootstrap.encode()).hexdigest()[:12]
        return root / f"{service}-{cluster}"

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
        problems += _threshold_order(values) if not problems else []
        if problems:
            raise ConfigError(problems)
        return cls(**values)


def _threshold_order(values: Mapping[str, Any]) -> list[str]:
    possible, match = values["identity_possible_threshold"], values["identity_match_threshold"]
    auto = values["identity_auto_merge_threshold"]
    problems = []
    if possible > match:
        problems.append("CDP_IDENTITY_POSSIBLE_THRESHOLD: must not exceed "
                        "CDP_IDENTITY_MATCH_THRESHOLD")
    if auto and auto < match:
        problems.append("CDP_IDENTITY_AUTO_MERGE_THRESHOLD: must be 0 (off) or at least "
                        "CDP_IDENTITY_MATCH_THRESHOLD")
    return problems


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
