"""Process entry points shared by every service: ``python -m services.<name> api|worker``.

``api`` serves the service's Flask app under granian (threads in one or more processes).
``worker`` runs the service's Kafka consumer loops until SIGTERM, finishing the batch in hand,
and serves /healthz, /readyz and /metrics on ``CDP_WORKER_METRICS_PORT`` when set.
A service may add operator commands: ``python -m services.<name> <command> [args]``.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import threading
from collections.abc import Callable, Mapping
from wsgiref.simple_server import WSGIRequestHandler, make_server

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from services.common import bus, logs, store
from services.common.config import ConfigError, Settings

log = logging.getLogger(__name__)

API_STOP_SECONDS = 20  # requests in flight get this long after SIGTERM
WorkerFactory = Callable[[Settings, bus.Producer, object], list[bus.ConsumerLoop]]
# an operator command of one service (``python -m services.<name> <command> [args]``): gets
# the settings and the arguments after the command name, returns the exit status
Command = Callable[[Settings, list[str]], int]


def service_main(
    *,
    service: str,
    default_port: int,
    app_factory: Callable[[Settings], object],
    worker_factory: WorkerFactory,
    commands: Mapping[str, Command] | None = None,
    stream_threads: Callable[[Settings], int] | None = None,
    argv: list[str] | None = None,
) -> int:
    """``stream_threads``: how many long-lived responses (event streams) the service's API
    may hold open, each given a thread beside the ``CDP_HTTP_THREADS`` that answer requests."""
    commands = commands or {}
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog=f"python -m services.{service}")
    parser.add_argument("process", choices=["api", "worker", *commands],
                        help="which process to run, or an operator command (each has --help)")
    # an operator command parses its own arguments
    args = parser.parse_args(argv[:1] if argv[:1] and argv[0] in commands else argv)
    try:
        settings = Settings.from_env()
    except ConfigError as exc:
        print(f"muisti {service}: {exc}", file=sys.stderr)
        return 2
    if args.process in commands:
        return commands[args.process](settings, argv[1:])
    logs.configure(service, settings.log_level, settings.log_format)
    if args.process == "api":
        return serve_http(service, settings, app_factory, settings.http_port or default_port,
                          stream_threads(settings) if stream_threads else 0)
    return run_worker(service, settings, worker_factory)


def serve_http(service: str, settings: Settings, app_factory, port: int,
               stream_threads: int = 0) -> int:
    """The app under granian: HTTP parsed and answered in Rust, the WSGI app called on
    ``CDP_HTTP_THREADS`` Python threads in each of ``CDP_HTTP_PROCESSES`` worker processes,
    plus ``stream_threads`` for the event streams the app holds open (it refuses more), so
    that open streams never leave requests waiting for a thread.
    Measured on the profile lookup, a request costs ~0.8 ms less CPU than under gunicorn's
    gthread worker, whose Python-side parsing and thread hand-offs took a fifth of it."""
    from granian.constants import Interfaces
    from granian.server import Server

    served: list = []  # the app of this worker process, once loaded

    def load(_target):
        app = app_factory(settings)
        served.append(app)
        return app

    def worker(*args, **kwargs):
        # granian has no worker-exit hook for WSGI apps, so its own worker target is wrapped:
        # requests in flight are answered before it returns; the app's shutdown callbacks
        # then run while its Kafka producer still works
        try:
            Server._spawn_wsgi_worker(*args, **kwargs)
        finally:
            for app in served:
                app.extensions["muisti"].shutdown()

    server = Server(
        target=f"services.{service}", address=settings.http_host, port=port,
        interface=Interfaces.WSGI, websockets=False, workers=settings.http_processes,
        blocking_threads=settings.http_threads + stream_threads,
        workers_kill_timeout=API_STOP_SECONDS, respawn_failed_workers=True,
        log_dictconfig={"loggers": {"_granian": {"handlers": [], "propagate": True}}})
    # granian warns of more threads than 2 × cores + 1; ours mostly wait (on the store, or
    # holding a dashboard's event stream open)
    logging.getLogger("_granian").addFilter(
        lambda record: "Python threads" not in record.getMessage())
    log.info("serving HTTP", extra={"port": port})
    server.serve(spawn_target=worker, target_loader=load)
    return 0


def run_worker(service: str, settings: Settings, worker_factory: WorkerFactory) -> int:
    client = store.connect(settings)
    db = store.database(client, settings)
    _retry_startup(lambda: bus.ensure_topics(settings), "create topics")
    producer = _retry_startup(lambda: bus.Producer(settings, service), "connect to Kafka")
    loops = worker_factory(settings, producer, db)

    def request_stop(signum, _frame):
        log.info("stopping on signal", extra={"signal": signum})
        for loop in loops:
            loop.stop()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    if settings.worker_metrics_port:
        _serve_worker_status(settings, service, loops, client)

    if not loops:
        # a service whose features need no consumer yet still runs as a healthy process
        log.info("no consumers configured for this service")
        stopped = threading.Event()
        signal.signal(signal.SIGTERM, lambda *_: stopped.set())
        signal.signal(signal.SIGINT, lambda *_: stopped.set())
        stopped.wait()
        return 0

    failures: list[BaseException] = []

    def run(loop: bus.ConsumerLoop) -> None:
        try:
            loop.run()
        except BaseException as exc:  # noqa: BLE001 - reported below, stops the others
            log.exception("consumer loop failed", extra={"group": loop.group})
            failures.append(exc)
            for other in loops:
                other.stop()

    threads = [threading.Thread(target=run, args=(loop,), name=loop.group) for loop in loops]
    for thread in threads:
        thread.start()
    for thread in threads:
        while thread.is_alive():
            thread.join(timeout=0.5)  # keeps the main thread free for signal handlers
    producer.close()
    return 1 if failures else 0


def _retry_startup(action, what: str, attempts: int = 60):
    import time

    for attempt in range(1, attempts + 1):
        try:
            return action()
        except Exception as exc:  # noqa: BLE001 - dependencies may still be starting
            if attempt == attempts:
                raise
            log.warning(f"could not {what} yet, retrying", extra={"error": repr(exc)})
            time.sleep(min(attempt, 5))
    return None


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, *args) -> None:  # scrapes every few seconds would flood the log
        pass


def _serve_worker_status(settings: Settings, service: str, loops, client) -> None:
    def app(environ, start_response):
        path = environ.get("PATH_INFO", "")
        if path == "/metrics":
            start_response("200 OK", [("Content-Type", CONTENT_TYPE_LATEST)])
            return [generate_latest()]
        if path == "/healthz":
            return _json(start_response, 200, {"status": "ok", "service": service})
        if path == "/readyz":
            checks = {}
            try:
                store.ping(client)
                checks["store"] = "ok"
            except Exception as exc:  # noqa: BLE001
                checks["store"] = f"unavailable: {exc.__class__.__name__}"
            checks["consumers"] = "stopping" if any(loop.stopping for loop in loops) else "ok"
            ready = all(value == "ok" for value in checks.values())
            return _json(start_response, 200 if ready else 503,
                         {"status": "ready" if ready else "unavailable", "checks": checks})
        return _json(start_response, 404, {"status": 404, "detail": "not found"})

    server = make_server(settings.http_host, settings.worker_metrics_port, app,
                         handler_class=_QuietHandler)
    threading.Thread(target=server.serve_forever, name="status-http", daemon=True).start()


def _json(start_response, status: int, body: dict):
    reason = {200: "OK", 404: "Not Found", 503: "Service Unavailable"}[status]
    start_response(f"{status} {reason}", [("Content-Type", "application/json")])
    return [json.dumps(body).encode()]
