"""Run the whole platform locally: infrastructure, every service's API and worker, demo traffic.

    python -m deploy.local.platform start   # what `make run` calls
    python -m deploy.local.platform stop    # what `make stop` calls
    python -m deploy.local.platform status

Processes run detached, each with a pid file and a log under .run/dev/. API keys for every role
are generated on first start and kept in .run/dev/keys.env, so they survive restarts.
"""

from __future__ import annotations

import argparse
import base64
import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path

import requests

from deploy.local import demo
from deploy.local.infra import REPO, InfraError, Instance

SERVICES = {"identity": 8101, "profile": 8102, "consent": 8103, "social": 8104, "export": 8105}
WORKER_METRICS_PORTS = {name: port + 1000 for name, port in SERVICES.items()}
ROLES = ("collector", "agent", "supervisor", "partner", "dpo", "admin")
# secrets each service needs, generated on first start (a real deployment sets its own)
SECRETS = {
    "CDP_PRIVACY_DIGEST_KEY": lambda: secrets.token_urlsafe(32),
    "CDP_MASTER_KEY": lambda: base64.b64encode(secrets.token_bytes(32)).decode(),
    "CDP_CONSENT_RECEIPT_KEY": lambda: base64.b64encode(secrets.token_bytes(32)).decode(),
    "CDP_DASHBOARD_STREAM_SECRET": lambda: secrets.token_urlsafe(32),
    "CDP_SOCIAL_META_APP_SECRET": lambda: secrets.token_hex(16),
    "CDP_SOCIAL_META_VERIFY_TOKEN": lambda: secrets.token_urlsafe(16),
    "CDP_SOCIAL_X_CONSUMER_SECRET": lambda: secrets.token_urlsafe(32),
}


def _say(msg: str) -> None:
    print(msg, flush=True)


class Platform:
    def __init__(self, instance: Instance):
        self.instance = instance
        self.dir = instance.run_dir / "services"

    def keys(self) -> dict[str, str]:
        path = self.instance.run_dir / "keys.env"
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            lines = (f"CDP_KEY_{role.upper()}=mk_{role}_{secrets.token_urlsafe(24)}\n"
                     for role in ROLES)
            path.write_text("".join(lines))
            path.chmod(0o600)
        pairs = (line.split("=", 1) for line in path.read_text().splitlines() if "=" in line)
        return {name.removeprefix("CDP_KEY_").lower(): value for name, value in pairs}

    def secrets(self) -> dict[str, str]:
        """Generated once into .run/<instance>/secrets.env; a secret added by a newer version
        is appended, the existing ones are kept (data protected by them stays readable)."""
        path = self.instance.run_dir / "secrets.env"
        path.parent.mkdir(parents=True, exist_ok=True)
        known = dict(line.split("=", 1) for line in
                     (path.read_text().splitlines() if path.exists() else []) if "=" in line)
        missing = {name: make() for name, make in SECRETS.items() if name not in known}
        if missing:
            with path.open("a") as out:
                out.writelines(f"{name}={value}\n" for name, value in missing.items())
            path.chmod(0o600)
        return {**known, **missing}

    @property
    def outbox(self) -> Path:
        return self.instance.run_dir / "preferences-outbox"

    def env(self) -> dict[str, str]:
        bootstrap = ",".join(f"{role}:{key}" for role, key in self.keys().items())
        return {**os.environ, **self.instance.env(), **self.secrets(),
                "CDP_BOOTSTRAP_API_KEYS": bootstrap,
                # the consent service asks identity for a data subject's profiles; social
                # files platform deletions with the consent service
                "CDP_SERVICE_API_KEY": self.keys()["dpo"],
                "CDP_IDENTITY_URL": f"http://127.0.0.1:{SERVICES['identity']}",
                "CDP_CONSENT_URL": f"http://127.0.0.1:{SERVICES['consent']}",
                "CDP_PROFILE_URL": f"http://127.0.0.1:{SERVICES['profile']}",
                # the preference centre's sign-in codes go to files, never out
                "CDP_PREFERENCES_SENDER": "outbox",
                "CDP_PREFERENCES_OUTBOX_DIR": str(self.outbox)}

    def start(self) -> None:
        started = time.monotonic()
        self.instance.start()
        _say(f"infrastructure ready in {time.monotonic() - started:.1f}s")
        env = self.env()
        for service, port in SERVICES.items():
            self._spawn(f"{service}-api", [service, "api"], {**env, "CDP_HTTP_PORT": str(port)})
            self._spawn(f"{service}-worker", [service, "worker"],
                        {**env, "CDP_WORKER_METRICS_PORT": str(WORKER_METRICS_PORTS[service])})
        self._wait_healthy()
        demo.main(["--key", self.keys()["collector"],
                   "--url", f"http://127.0.0.1:{SERVICES['identity']}"])
        self._print_summary()

    def stop(self) -> None:
        for pidfile in sorted(self.dir.glob("*.pid")):
            _terminate(pidfile)
        self.instance.stop()

    def status(self) -> None:
        for name, state in self.instance.status().items():
            _say(f"{name:18} {state}")
        for service, port in SERVICES.items():
            for kind, url in (("api", f"http://127.0.0.1:{port}/readyz"),
                              ("worker", f"http://127.0.0.1:{WORKER_METRICS_PORTS[service]}/readyz")):
                _say(f"{service + '-' + kind:18} {_probe(url)}")

    def _spawn(self, name: str, args: list[str], env: dict[str, str]) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        pidfile = self.dir / f"{name}.pid"
        if pidfile.exists() and _alive(int(pidfile.read_text())):
            return
        log = open(self.dir / f"{name}.log", "ab")  # noqa: SIM115 - handed to the child
        proc = subprocess.Popen([sys.executable, "-m", f"services.{args[0]}", *args[1:]],
                                env=env, cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
        log.close()
        pidfile.write_text(str(proc.pid))

    def _wait_healthy(self, timeout: float = 90) -> None:
        deadline = time.monotonic() + timeout
        urls = [f"http://127.0.0.1:{port}/readyz" for port in SERVICES.values()]
        urls += [f"http://127.0.0.1:{port}/readyz" for port in WORKER_METRICS_PORTS.values()]
        pending = set(urls)
        while pending and time.monotonic() < deadline:
            pending = {url for url in pending if _probe(url) != "ready"}
            time.sleep(0.5)
        if pending:
            for logfile in sorted(self.dir.glob("*.log")):
                _say(f"--- {logfile.name}\n" + "\n".join(logfile.read_text().splitlines()[-5:]))
            raise InfraError(f"not ready after {timeout}s: {', '.join(sorted(pending))}")

    def _print_summary(self) -> None:
        keys = self.keys()
        _say("\nMuisti is running.\n")
        for service, port in SERVICES.items():
            _say(f"  {service:9} http://127.0.0.1:{port}   (OpenAPI: /openapi.json, "
                 f"metrics: /metrics; worker metrics :{WORKER_METRICS_PORTS[service]})")
        _say(f"\n  Kafka     {self.instance.kafka_bootstrap}")
        _say(f"  MongoDB   {self.instance.mongo_uri}")
        _say(f"\n  API keys (also in {self.instance.run_dir / 'keys.env'}):")
        for role, key in keys.items():
            _say(f"    {role:10} {key}")
        _say(f"\n  Agent dashboard: http://127.0.0.1:{SERVICES['profile']}/dashboard "
             "(sign in with the agent or supervisor key)")
        _say(f"  Preference centre: http://127.0.0.1:{SERVICES['consent']}/preferences "
             f"(sign-in codes are written to {self.outbox})")
        _say(f"  Logs: {self.dir}/*.log and {self.instance.run_dir}/*.log")
        _say("  Try:  curl -H 'Authorization: Bearer " + keys["agent"]
             + "' 'http://127.0.0.1:8101/v1/identity/resolve?type=user_id&value=LOY100001'")
        _say("  Stop: make stop\n")


def _probe(url: str) -> str:
    try:
        return "ready" if requests.get(url, timeout=1).status_code == 200 else "not ready"
    except requests.RequestException:
        return "down"


def _alive(pid: int) -> bool:
    """True while ``pid`` is one of our service processes (a pid file can outlive its
    process, and the pid be reused by another program after a reboot)."""
    try:
        return b"services." in Path(f"/proc/{pid}/cmdline").read_bytes()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return False


def _terminate(pidfile: Path, timeout: float = 20) -> None:
    pid = int(pidfile.read_text())
    try:
        if _alive(pid):
            os.killpg(pid, signal.SIGTERM)
            deadline = time.monotonic() + timeout
            while _alive(pid) and time.monotonic() < deadline:
                time.sleep(0.1)
            if _alive(pid):
                os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass  # it ended on its own meanwhile
    pidfile.unlink(missing_ok=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m deploy.local.platform")
    parser.add_argument("command", choices=["start", "stop", "status"])
    args = parser.parse_args(argv)
    platform = Platform(Instance.named("dev"))
    try:
        getattr(platform, args.command)()
    except InfraError as exc:
        print(f"muisti: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
