"""A local spool for Kafka messages a caller must not lose but need not wait for Kafka to take.

``append`` writes the messages to a segment file with one ``write`` and returns: from then on
they survive the process being killed (the kernel holds them; a machine crash is not covered).
A background thread ships closed segments to Kafka in batches every ``interval`` seconds and
deletes each once the broker acknowledged all of it. A segment shipped but not yet deleted when
the process dies is shipped again, so consumers must store what they read idempotently (keyed
by message_id).

Each process appends to its own segment and holds an exclusive ``flock`` on every segment it
has not finished; a segment nobody holds belongs to a process that died, and the next spool
started on the same directory ships it. The directory belongs to one Kafka cluster (the
settings' default names it after the bootstrap servers).

While the broker is away, reads go on and segments pile up to ``max_bytes``; past that
``append`` raises SpoolFull, and the caller refuses the work rather than lose its record.
"""

from __future__ import annotations

import fcntl
import logging
import os
import threading
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path

import orjson

from services.common import metrics
from services.common.bus import Outgoing, encode_value

log = logging.getLogger(__name__)

SUFFIX = ".spool"
SHIP_CHUNK = 2000  # messages per producer call when a backlog is shipped


class SpoolFull(Exception):
    """The spool holds ``max_bytes`` not yet shipped (the broker has been away)."""


class _Segment:
    def __init__(self, path: Path, fd: int):
        self.path = path
        self.fd = fd  # open, flock held, until shipped and deleted
        self.size = os.fstat(fd).st_size

    @classmethod
    def create(cls, path: Path) -> _Segment:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_EXCL, 0o600)
        fcntl.flock(fd, fcntl.LOCK_EX)
        return cls(path, fd)

    @classmethod
    def claim(cls, path: Path) -> _Segment | None:
        """The segment of a dead process, locked for this one; None while its owner lives."""
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            return None  # shipped meanwhile by another survivor
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        if not path.exists():  # deleted between open and lock: already shipped
            os.close(fd)
            return None
        return cls(path, fd)

    def messages(self) -> list[Outgoing]:
        found = []
        for line in self.path.read_bytes().splitlines():
            try:
                record = orjson.loads(line)
                found.append(Outgoing(record["t"], record["k"], record["v"]))
            except (orjson.JSONDecodeError, KeyError, TypeError):
                # only a write cut short by a kill, whose caller never got an answer
                log.warning("skipping an unreadable spool line", extra={"file": str(self.path)})
        return found

    def discard(self) -> None:
        self.path.unlink(missing_ok=True)
        os.close(self.fd)


class Spool:
    def __init__(self, directory: Path, send: Callable[[Sequence[Outgoing]], None], *,
                 name: str, interval: float = 0.2, max_bytes: int = 64 << 20):
        self.directory = directory
        self.name = name
        self.interval = interval
        self.max_bytes = max_bytes
        self._send = send
        self._prefix = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self._sequence = 0
        self._lock = threading.Lock()  # the current segment and the pending list
        self._pending: list[_Segment] = []  # closed, not yet shipped, oldest first
        self._stopping = threading.Event()
        directory.mkdir(parents=True, exist_ok=True)
        self._current = self._new_segment()
        self._adopt_orphans()
        self._thread = threading.Thread(target=self._run, name=f"spool-{name}", daemon=True)
        self._thread.start()

    def append(self, messages: Sequence[Outgoing]) -> None:
        """Record ``messages``; once this returns they reach Kafka even if the process dies."""
        data = b"".join(orjson.dumps({"t": m.topic, "k": m.key, "v": orjson.Fragment(
            encode_value(m.value))}) + b"\n" for m in messages)
        with self._lock:
            if self._backlog_bytes() + len(data) > self.max_bytes:
                metrics.SPOOL_REFUSED.labels(self.name).inc()
                raise SpoolFull(f"{self._backlog_bytes():,} bytes wait for the broker")
            os.write(self._current.fd, data)  # O_APPEND: one write, whole lines
            self._current.size += len(data)

    def pending_bytes(self) -> int:
        with self._lock:
            return self._backlog_bytes()

    def close(self, timeout: float = 10.0) -> None:
        """Ship what is spooled (within ``timeout``) and stop; what is left stays on disk
        for the next spool on this directory."""
        if self._stopping.is_set():
            return
        self._stopping.set()
        self._thread.join(timeout)
        self.ship()
        with self._lock:
            if not self._current.size:
                self._current.discard()

    def ship(self) -> None:
        """Close the current segment and send every closed one, oldest first; stops at the
        first the broker does not take (kept for the next attempt)."""
        with self._lock:
            if self._current.size:
                self._pending.append(self._current)
                self._current = self._new_segment()
            pending = list(self._pending)
        for segment in pending:
            messages = segment.messages()
            try:
                for start in range(0, len(messages), SHIP_CHUNK):
                    self._send(messages[start:start + SHIP_CHUNK])
            except Exception as exc:  # noqa: BLE001 - any failure: keep it, try again later
                log.warning("spool not shipped, retrying", extra={
                    "spool": self.name, "error": repr(exc), "pending_bytes": self.pending_bytes()})
                return
            with self._lock:
                self._pending.remove(segment)
            segment.discard()
            metrics.SPOOL_SHIPPED.labels(self.name).inc(len(messages))
        metrics.SPOOL_PENDING_BYTES.labels(self.name).set(self.pending_bytes())

    def _backlog_bytes(self) -> int:
        return self._current.size + sum(segment.size for segment in self._pending)

    def _new_segment(self) -> _Segment:
        self._sequence += 1
        return _Segment.create(self.directory / f"{self._prefix}.{self._sequence:09d}{SUFFIX}")

    def _adopt_orphans(self) -> None:
        """Claim the segments of processes that died with them unshipped."""
        for path in sorted(self.directory.glob(f"*{SUFFIX}"), key=_age):
            if path.name.startswith(self._prefix):
                continue
            segment = _Segment.claim(path)
            if segment is not None:
                log.info("shipping a spool segment left by a stopped process",
                         extra={"spool": self.name, "file": path.name})
                with self._lock:
                    self._pending.append(segment)

    def _run(self) -> None:
        ticks = 0
        while not self._stopping.wait(self.interval):
            ticks += 1
            if ticks % 50 == 0:  # another process on this directory may have died
                self._adopt_orphans()
            self.ship()


def _age(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except FileNotFoundError:
        return 0.0
