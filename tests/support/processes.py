"""Start Muisti processes (service APIs, workers) as real subprocesses for tests."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests

REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until(condition, timeout: float = 60.0, interval: float = 0.1, what: str = "condition"):
    """Poll ``condition`` until it returns a truthy value, which is returned."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


class Process:
    """A child process with its output in a log file; ``tail()`` shows it on failure."""

    def __init__(self, args: list[str], env: dict[str, str], name: str):
        self.args = args
        self.env = env
        self.name = name
        self.log_path = Path(tempfile.mkstemp(prefix=f"muisti-{name}-", suffix=".log")[1])
        self.proc: subprocess.Popen | None = None

    def start(self) -> Process:
        log = open(self.log_path, "ab")  # noqa: SIM115 - handed to the child
        # a fatal error in the interpreter or an extension still leaves a trace in the log
        self.proc = subprocess.Popen(
            [sys.executable, *self.args], env={**self.env, "PYTHONFAULTHANDLER": "1"}, cwd=REPO,
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        return self

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL: the process gets no chance to finish or commit anything."""
        if self.alive():
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def stop(self, timeout: float = 20.0) -> int | None:
        """SIGTERM and wait; SIGKILL if it does not stop in time."""
        if not self.alive():
            return self.proc.returncode if self.proc else None
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            return None

    def tail(self, lines: int = 40) -> str:
        """The log's last lines and the exit status. The Kafka client's own connection
        errors flood a log while the broker is away, so Muisti's lines are shown apart."""
        text = self.log_path.read_text(errors="replace").splitlines()
        own = [line for line in text if '"logger":"kafka.' not in line]
        status = self.proc.poll() if self.proc else None
        return "\n".join([f"[{self.name}: exit status {status}, log {self.log_path}]",
                          "[Muisti's last lines]", *own[-lines:],
                          "[the log's last lines]", *text[-10:]])


class ServiceApi(Process):
    """``python -m services.<name> api`` on a free port."""

    def __init__(self, service: str, env: dict[str, str]):
        self.port = free_port()
        super().__init__(["-m", f"services.{service}", "api"],
                         {**env, "CDP_HTTP_PORT": str(self.port)}, f"{service}-api")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> ServiceApi:
        super().start()

        def healthy():
            if not self.alive():
                raise AssertionError(f"{self.name} exited:\n{self.tail()}")
            try:
                return requests.get(self.url + "/readyz", timeout=2).status_code == 200
            except requests.ConnectionError:
                return False

        wait_until(healthy, 60, what=f"{self.name} ready")
        return self


class ServiceWorker(Process):
    """``python -m services.<name> worker`` (or any module with the same contract)."""

    def __init__(self, module: str, env: dict[str, str], *args: str, name: str | None = None):
        super().__init__(["-m", module, "worker", *args], env, name or module.split(".")[-1])
