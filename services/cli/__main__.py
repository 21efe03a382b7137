"""``muisti``: operator commands. ``muisti --help`` lists them; each has its own ``--help``.

Kafka and the store are reached with the services' own ``CDP_*`` settings; the HTTP commands
use ``MUISTI_API_KEY`` and ``MUISTI_CONSENT_URL`` / ``MUISTI_EXPORT_URL``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import uuid
from collections import Counter
from contextlib import contextmanager
from datetime import UTC, datetime

from kafka.errors import KafkaError
from pymongo.errors import PyMongoError
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn
from rich.table import Table

from services.common import auth, topics
from services.common.config import ConfigError, Settings
from services.common.identifiers import IDENTIFIER_TYPES

out = Console()
err = Console(stderr=True)

DEFAULT_URLS = {"MUISTI_CONSENT_URL": "http://127.0.0.1:8103",
                "MUISTI_EXPORT_URL": "http://127.0.0.1:8105"}


class CliError(RuntimeError):
    """A failure to report in one line and exit non-zero."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="muisti", description="Operate a Muisti deployment.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    keys = commands.add_parser("keys", help="create and revoke API keys").add_subparsers(
        dest="action", required=True)
    create = keys.add_parser("create", help="create a key and print it once")
    create.add_argument("--role", action="append", required=True, choices=auth.ROLES,
                        help="a role the key holds (repeat for several)")
    create.add_argument("--name", help="who or what uses the key (default: the roles)")
    create.add_argument("--partner-id", help="the partner a partner key belongs to")
    revoke = keys.add_parser("revoke", help="revoke a key by its id")
    revoke.add_argument("key_id")

    topic = commands.add_parser("topics", help="Kafka topics").add_subparsers(
        dest="action", required=True)
    listing = topic.add_parser("list", help="topics, partitions, records and consumer lag")
    listing.add_argument("--prefix", default="cdp.", help="topic name prefix (default cdp.)")
    topic.add_parser("create", help="create Muisti's missing topics (idempotent)")

    dlq = commands.add_parser("dlq", help="the dead-letter topic").add_subparsers(
        dest="action", required=True)
    dlq_list = dlq.add_parser("list", help="dead letters, newest last, with counts")
    dlq_replay = dlq.add_parser(
        "replay", help="republish dead-lettered originals to their topic after a fix")
    for sub in (dlq_list, dlq_replay):
        sub.add_argument("--topic", required=sub is dlq_replay, help="source topic")
        sub.add_argument("--reason-contains", help="only reasons containing this text")
        sub.add_argument("--kind", choices=("invalid_envelope", "invalid", "handler_error"))
        sub.add_argument("--since", type=_moment, help="only letters failed at or after this "
                         "ISO-8601 time (UTC when no offset is given)")
    dlq_replay.add_argument("--dry-run", action="store_true",
                            help="show what would be replayed, send nothing")

    privacy = commands.add_parser("privacy", help="data-subject requests").add_subparsers(
        dest="action", required=True)
    request = privacy.add_parser("request", help="file a request and follow it to the end")
    request.add_argument("kind", choices=("erasure", "access"))
    request.add_argument("--type", choices=IDENTIFIER_TYPES, help="the identifier's type")
    request.add_argument("--value", help="the identifier's value")
    request.add_argument("--profile-id", help="the subject's profile id instead")
    request.add_argument("--reason", required=True,
                         help="how the subject's identity was verified (a reference, not "
                              "personal data)")
    request.add_argument("--timeout", type=float, default=300.0, help="seconds to follow it")

    export = commands.add_parser("export", help="partner exports").add_subparsers(
        dest="action", required=True)
    run = export.add_parser("run", help="start an export run and follow it to the end")
    run.add_argument("partner")
    run.add_argument("--mode", choices=("full", "incremental"),
                     help="override the partner contract's mode for this run")
    run.add_argument("--timeout", type=float, default=1800.0, help="seconds to follow it")
    secret = commands.add_parser(
        "secrets", help="print fresh secrets as env lines (for deploy/.env or a k8s Secret)")
    secret.add_argument("--cdp", action="store_true",
                        help="name them CDP_* (a Kubernetes Secret) instead of MUISTI_*")
    secret.set_defaults(action=None)
    return parser


def _moment(text: str) -> datetime:
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an ISO-8601 time: {text!r}") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    handler = COMMANDS[(args.command, args.action)]
    try:
        return handler(args)
    except (CliError, ConfigError) as exc:
        err.print(f"muisti: {exc}", style="red", highlight=False, markup=False)
        return 1
    except (KafkaError, PyMongoError) as exc:
        err.print(f"muisti: Kafka or the store is unavailable: {exc!r}", style="red",
                  highlight=False, markup=False)
        return 1


# --- keys: the shared auth command line does the work ----------------------------------------


def keys_create(args) -> int:
    argv = ["create", "--name", args.name or "key for " + ", ".join(sorted(set(args.role)))]
    for role in args.role:
        argv += ["--role", role]
    if args.partner_id:
        argv += ["--partner-id", args.partner_id]
    return auth.main(argv)


def keys_revoke(args) -> int:
    return auth.main(["revoke", args.key_id])


# --- topics -----------------------------------------------------------------------------------


def topics_list(args) -> int:
    from services.cli import kafka_io

    rows = kafka_io.topic_overview(Settings.from_env(), args.prefix)
    table = Table("topic", "partitions", "records", "consumer group", "lag")
    for row in rows:
        table.add_row(row.topic, str(row.partitions), str(row.retained), row.group or "-",
                      "-" if row.lag is None else str(row.lag))
    out.print(table)
    return 0


def topics_create(_args) -> int:
    from services.cli import kafka_io

    settings = Settings.from_env()
    created = kafka_io.create_topics(settings)
    out.print(f"{len(topics.ALL)} topics present ({len(created)} created: "
              f"{', '.join(created) or 'none'}), {settings.topic_partitions} partitions each "
              "for new ones", highlight=False)
    return 0


# --- dead letters -----------------------------------------------------------------------------


def _selected(args):
    from services.cli import deadletters, kafka_io

    letters, unreadable = kafka_io.read_dead_letters(Settings.from_env())
    if unreadable:
        err.print(f"{unreadable} records on {topics.DEAD_LETTER} are not Muisti dead letters; "
                  "skipped", highlight=False)
    return deadletters.select(letters, topic=args.topic, reason_contains=args.reason_contains,
                              kind=args.kind, since=args.since)


def dlq_list(args) -> int:
    letters = _selected(args)
    table = Table("failed at", "topic", "kind", "service", "message id", "reason")
    for letter in sorted(letters, key=lambda letter: letter.failed_at):
        table.add_row(letter.failed_at.isoformat(timespec="seconds"), letter.source_topic,
                      letter.kind, letter.service, letter.message_id or "-", letter.reason[:120])
    out.print(table)
    counts = Counter((letter.source_topic, letter.kind) for letter in letters)
    for (topic, kind), count in sorted(counts.items()):
        out.print(f"{count:>8}  {topic}  {kind}", highlight=False)
    out.print(f"{len(letters)} dead letters", highlight=False)
    return 0


def dlq_replay(args) -> int:
    from services.cli import deadletters, kafka_io

    plan = deadletters.replay_plan(_selected(args))
    if args.dry_run:
        for letter in plan:
            out.print(f"would replay {letter.message_id or '(no message_id)'} to "
                      f"{letter.source_topic} (key {letter.key!r}): {letter.reason[:100]}",
                      highlight=False)
        out.print(f"{len(plan)} messages would be replayed", highlight=False)
        return 0
    with _bar("replaying", len(plan)) as (progress, task):
        sent = kafka_io.republish(Settings.from_env(), plan,
                                  on_sent=lambda count: progress.advance(task, count))
    out.print(f"replayed {sent} messages to {args.topic}", highlight=False)
    return 0


@contextmanager
def _bar(description: str, total: int | None):
    """A progress bar on stderr; yields (progress, task). ``total`` None shows a spinner until a
    job document says how many steps it has."""
    progress = Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(),
                        MofNCompleteColumn(), TextColumn("{task.fields[state]}"), console=err)
    with progress:
        yield progress, progress.add_task(description, total=total, state="")


# --- long jobs over HTTP ----------------------------------------------------------------------


def _client(url_variable: str):
    from services.cli.jobs import ApiClient

    key = os.environ.get("MUISTI_API_KEY")
    if not key:
        raise CliError("set MUISTI_API_KEY to an API key with the needed role")
    return ApiClient(os.environ.get(url_variable) or DEFAULT_URLS[url_variable], key)


def _follow_job(client, started: dict, path_of, what: str, timeout: float) -> int:
    from services.cli.jobs import JobError, follow, job_state

    job_id = job_state(started).job_id
    if job_id is None:
        raise CliError(f"the API did not say which {what} it started: {started}")
    err.print(f"{what} {job_id} started", highlight=False)
    with _bar(f"{what} {job_id}", None) as (progress, task):
        def show(state) -> None:
            progress.update(task, total=state.total_steps, completed=state.done_steps or 0,
                            state=f"{state.state} {state.detail}".strip())

        try:
            doc = follow(lambda: client.call("GET", path_of(job_id)), timeout=timeout,
                         on_update=show)
        except JobError as exc:
            raise CliError(str(exc)) from None
    out.print_json(json.dumps(doc, default=str))
    return 0 if job_state(doc).succeeded else 1


def privacy_request(args) -> int:
    from services.cli.jobs import JobError, privacy_request_body

    try:
        body = privacy_request_body(args.kind, args.reason, identifier_type=args.type,
                                    value=args.value, profile_id=args.profile_id)
    except ValueError as exc:
        raise CliError(str(exc)) from None
    client = _client("MUISTI_CONSENT_URL")
    try:
        started = client.call("POST", "/v1/privacy/requests", body)
    except JobError as exc:
        raise CliError(str(exc)) from None
    return _follow_job(client, started, lambda job_id: f"/v1/privacy/requests/{job_id}",
                       f"{args.kind} request", args.timeout)


def export_run(args) -> int:
    from services.cli.jobs import JobError

    client = _client("MUISTI_EXPORT_URL")
    runs = f"/v1/exports/{args.partner}/runs"
    body = {"mode": args.mode} if args.mode else {}
    try:
        # the key makes a retried POST answer the run the first one created
        started = client.call("POST", runs, body, headers={"Idempotency-Key": str(uuid.uuid4())})
    except JobError as exc:
        raise CliError(str(exc)) from None
    return _follow_job(client, started, lambda job_id: f"{runs}/{job_id}",
                       f"export run for {args.partner}", args.timeout)


def print_secrets(args) -> int:
    from services.cli.secrets_env import env_lines, new_secrets

    sys.stdout.write(env_lines(new_secrets("CDP_" if args.cdp else "MUISTI_")))
    return 0


COMMANDS = {
    ("keys", "create"): keys_create,
    ("keys", "revoke"): keys_revoke,
    ("topics", "list"): topics_list,
    ("topics", "create"): topics_create,
    ("dlq", "list"): dlq_list,
    ("dlq", "replay"): dlq_replay,
    ("privacy", "request"): privacy_request,
    ("export", "run"): export_run,
    ("secrets", None): print_secrets,
}


if __name__ == "__main__":
    sys.exit(main())
