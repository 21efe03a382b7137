"""The reader of X's user compliance stream (X API v2 ``GET /2/users/compliance/stream``).

X splits the stream over four partitions (``partition=1..4``); one reader follows one
partition, so a deployment runs a reader for each (``CDP_SOCIAL_X_COMPLIANCE_PARTITIONS``). The
stream is chunked JSON lines, ``{"data": {"user_delete": {"user": {"id"}, "event_at"}}}`` and
the like, with an empty keep-alive line about every 20 seconds. ``user_delete``,
``user_protect`` and ``user_suspend`` become erasure requests filed with the privacy service
exactly as Meta's deletion callback is (privacy.py); the other events ask nothing of us.

Nothing missed across a disconnect or a restart:

* after every line the reader stores when it last heard from the partition (the *position*);
  a reconnect asks X for ``backfill_minutes`` covering the time since (whole minutes, 1 to 5,
  X's limit); duplicates from the overlap are harmless since request ids are derived from the
  event. A gap longer than five minutes cannot be recovered from the stream: it is logged as
  an error (X's batch compliance endpoint is the remedy for such an outage);
* a deletion is stored as pending before the position moves and removed once the privacy
  service accepted it, so an unreachable privacy service delays filings and loses none;
* the read timeout (60 s, three missed keep-alives) detects a stalled connection.

Reconnects back off with full jitter; a 429 waits as the poller's rate limits do.
"""

from __future__ import annotations

import logging
import math
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from datetime import UTC, datetime

import orjson
import requests

from services.social import privacy
from services.social.poller import RateLimited, backoff_seconds, rate_limit_wait
from services.social.privacy import DeletionRequest

log = logging.getLogger(__name__)

PARTITIONS = (1, 2, 3, 4)
MAX_BACKFILL_MINUTES = 5  # X's limit
READ_TIMEOUT_SECONDS = 60.0  # X sends a keep-alive every 20 s


class StreamPositionStore(ABC):
    @abstractmethod
    def load(self, name: str) -> datetime | None: ...

    @abstractmethod
    def save(self, name: str, last_seen: datetime) -> None: ...


class PendingDeletionStore(ABC):
    @abstractmethod
    def add(self, deletion: DeletionRequest) -> None: ...

    @abstractmethod
    def all(self) -> list[DeletionRequest]: ...

    @abstractmethod
    def remove(self, request_id: str) -> None: ...


class StreamEnded(Exception):
    """X closed the stream with an error object (e.g. an operational disconnect)."""


class StreamRefused(Exception):
    """X answered the connection with an error status other than 429."""


def parse_partitions(setting: str) -> list[int]:
    """``"1,3"`` → [1, 3]; the setting is validated by config.py."""
    return sorted({int(part) for part in setting.split(",") if part.strip()})


def backfill_minutes(last_seen: datetime | None, now: datetime) -> int | None:
    """Minutes of backfill to ask for when reconnecting: the time since the partition was last
    heard from, rounded up, between 1 and X's limit of 5; None on a first start."""
    if last_seen is None:
        return None
    gap_seconds = (now - last_seen).total_seconds()
    if gap_seconds > MAX_BACKFILL_MINUTES * 60:
        log.error("the compliance stream was not read for longer than X can backfill; events "
                  "may be missed (use X's batch compliance endpoint for the gap)",
                  extra={"gap_seconds": round(gap_seconds)})
    return min(MAX_BACKFILL_MINUTES, max(1, math.ceil(gap_seconds / 60)))


class ComplianceSource(ABC):
    @abstractmethod
    def lines(self, partition: int, backfill: int | None) -> Iterator[bytes]:
        """The stream's lines until it ends. Raises RateLimited, StreamRefused or a network
        error."""

    @abstractmethod
    def close(self) -> None:
        """Close the open connection (from another thread), ending ``lines``."""


class XUserComplianceStream(ComplianceSource):
    """X API v2 over HTTP (``requests``, streamed)."""

    def __init__(self, base_url: str, bearer_token: str,
                 read_timeout: float = READ_TIMEOUT_SECONDS):
        self._url = f"{base_url.rstrip('/')}/2/users/compliance/stream"
        self._headers = {"Authorization": f"Bearer {bearer_token}"} if bearer_token else {}
        self._read_timeout = read_timeout
        self._response: requests.Response | None = None

    def lines(self, partition: int, backfill: int | None) -> Iterator[bytes]:
        params = {"partition": partition}
        if backfill:
            params["backfill_minutes"] = backfill
        response = requests.get(self._url, params=params, headers=self._headers, stream=True,
                                timeout=(10.0, self._read_timeout))
        self._response = response
        try:
            headers = {k.lower(): v for k, v in response.headers.items()}
            wait = rate_limit_wait(response.status_code, headers, datetime.now(UTC).timestamp())
            if wait is not None:
                raise RateLimited(wait)
            if response.status_code != 200:
                raise StreamRefused(f"{response.status_code}: {response.text[:200]}")
            # chunk_size=None: each chunk as it arrives, so a lone event is not held back
            yield from response.iter_lines(chunk_size=None)
        finally:
            response.close()
            self._response = None

    def close(self) -> None:
        response = self._response
        if response is not None:
            response.close()


class ComplianceReader:
    """Follows one partition: turns erasing events into pending deletions, files them, and
    stores its position after every line."""

    def __init__(self, partition: int, source: ComplianceSource, positions: StreamPositionStore,
                 pending: PendingDeletionStore, file: Callable[[DeletionRequest], None],
                 secret: str, now: Callable[[], datetime] = lambda: datetime.now(UTC)):
        self.partition = partition
        self.name = f"x-user-compliance-{partition}"
        self.source = source
        self.positions = positions
        self.pending = pending
        self.file = file  # raises on failure (filing.FilingFailed)
        self.secret = secret
        self.now = now

    def read_connection(self) -> int:
        """Connect with the backfill the stored position needs and read until the stream ends;
        returns how many lines arrived."""
        backfill = backfill_minutes(self.positions.load(self.name), self.now())
        log.info("connecting to the user compliance stream",
                 extra={"partition": self.partition, "backfill_minutes": backfill})
        received = 0
        for line in self.source.lines(self.partition, backfill):
            received += 1
            self.handle_line(line)
        return received

    def handle_line(self, line: bytes) -> None:
        if line.strip():
            deletion = self._deletion(line)
            if deletion is not None:
                self.pending.add(deletion)
        self.positions.save(self.name, self.now())
        if line.strip():
            self.file_pending()

    def _deletion(self, line: bytes) -> DeletionRequest | None:
        try:
            event = orjson.loads(line)
        except orjson.JSONDecodeError:
            log.warning("a compliance stream line is not JSON", extra={"line": line[:200]})
            return None
        if isinstance(event, dict) and "errors" in event and "data" not in event:
            raise StreamEnded(str(event["errors"])[:500])
        try:
            return privacy.from_x_compliance_event(event, self.secret)
        except privacy.InvalidDeletion as exc:
            log.warning("not a user compliance event", extra={"error": str(exc)})
            return None

    def file_pending(self) -> int:
        """File every pending deletion, oldest first, stopping at the first failure (the
        privacy service is down: the next line or reconnect tries again); returns how many
        were filed."""
        filed = 0
        for deletion in self.pending.all():
            try:
                self.file(deletion)
            except Exception as exc:  # noqa: BLE001 - kept pending, filed again later
                log.warning("filing a deletion failed; it stays pending",
                            extra={"error": str(exc), "request_id": deletion.request_id})
                break
            self.pending.remove(deletion.request_id)
            filed += 1
        return filed


class ComplianceLoop:
    """Reads one partition until ``stop()``, reconnecting with backoff. Has the loop interface
    ``services.common.runner`` runs workers with."""

    def __init__(self, reader: ComplianceReader):
        self.reader = reader
        self.group = reader.name
        self._stopping = threading.Event()

    def stop(self) -> None:
        self._stopping.set()
        self.reader.source.close()

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    def run(self) -> None:
        failures = 0
        while not self._stopping.is_set():
            try:
                self.reader.file_pending()
                received = self.reader.read_connection()
                failures = 1 if received else failures + 1
                wait = backoff_seconds(failures)
                log.info("the compliance stream ended; reconnecting",
                         extra={"partition": self.reader.partition, "wait": round(wait, 2)})
            except RateLimited as limited:
                wait = limited.wait_seconds
                log.warning("rate limited by X", extra={"wait": wait})
            except Exception as exc:  # noqa: BLE001 - network, X or store trouble
                if self._stopping.is_set():
                    break
                failures += 1
                wait = backoff_seconds(failures)
                log.warning("the compliance stream failed; reconnecting",
                            extra={"error": repr(exc), "wait": round(wait, 2)})
            self._stopping.wait(wait)
