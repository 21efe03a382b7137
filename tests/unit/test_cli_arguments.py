from datetime import UTC, datetime

import pytest

from services.cli.__main__ import COMMANDS, build_parser
from services.cli.healthcheck import health_url


def parse(*argv):
    return build_parser().parse_args(list(argv))


def test_every_command_the_parser_accepts_has_a_handler():
    parser = build_parser()
    commands = parser._subparsers._group_actions[0].choices
    pairs = set()
    for name, sub in commands.items():
        actions = sub._subparsers._group_actions[0].choices if sub._subparsers else [None]
        pairs |= {(name, action) for action in actions}
    assert pairs == set(COMMANDS)


def test_replay_needs_the_source_topic():
    with pytest.raises(SystemExit):
        parse("dlq", "replay")
    args = parse("dlq", "replay", "--topic", "cdp.events.web", "--reason-contains", "x",
                 "--dry-run")
    assert (args.topic, args.reason_contains, args.dry_run) == ("cdp.events.web", "x", True)


def test_a_time_without_offset_is_taken_as_utc():
    args = parse("dlq", "list", "--since", "2026-03-01T10:00")
    assert args.since == datetime(2026, 3, 1, 10, tzinfo=UTC)
    with pytest.raises(SystemExit):
        parse("dlq", "list", "--since", "yesterday")


def test_keys_take_several_roles_and_only_known_ones():
    assert parse("keys", "create", "--role", "dpo", "--role", "agent").role == ["dpo", "agent"]
    with pytest.raises(SystemExit):
        parse("keys", "create", "--role", "root")


def test_privacy_requests_take_a_known_identifier_type():
    args = parse("privacy", "request", "erasure", "--type", "email", "--value", "a@b.fi",
                 "--reason", "ticket 42")
    assert (args.kind, args.type, args.value) == ("erasure", "email", "a@b.fi")
    with pytest.raises(SystemExit):
        parse("privacy", "request", "erasure", "--type", "shoe", "--value", "x", "--reason", "t")


def test_the_health_check_probes_the_api_port_else_the_worker_port_else_nothing():
    assert health_url({"CDP_HTTP_PORT": "8101"}) == "http://127.0.0.1:8101/healthz"
    assert health_url({"CDP_WORKER_METRICS_PORT": "9101"}) == "http://127.0.0.1:9101/healthz"
    assert health_url({"CDP_WORKER_METRICS_PORT": "0"}) is None
    assert health_url({}) is None


def test_fresh_secrets_are_valid_settings_and_the_service_key_is_a_dpo_key():
    from services.cli.secrets_env import new_secrets
    from services.common.config import Settings

    values = new_secrets("CDP_")
    settings = Settings.from_env(values)
    assert f"dpo:{settings.service_api_key}" in settings.bootstrap_api_keys.split(",")
    assert new_secrets("CDP_") != values
