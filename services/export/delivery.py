"""Delivery of batches and deletion notices to a partner's destination.

HTTPS: a POST through requests whose body is signed (``X-Muisti-Signature: sha256=<hex HMAC>``
under the partner's signing secret) and carries an ``Idempotency-Key`` that stays the same on
every attempt and after a resume, and the endpoint's credentials (``Authorization``) when the
contract has them. Timeouts, connection failures, 429 and 5xx are retried with
exponential backoff and full jitter (honouring a short ``Retry-After``); any other 4xx is a
permanent failure, and so is a request the HTTP client refuses to make (a URL or Authorization
value a contract stored before its validation was strict may hold): delivery never raises for
the destination's sake, so one bad destination cannot stop the executor.

Directory: the file is written to a temporary name, synced and renamed, so a reader never sees
half a batch and a re-sent batch simply replaces an identical file.
"""

from __future__ import annotations

import os
import random
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests

from services.export.contracts import Destination
from services.export.rendering import SIGNATURE_HEADER, sign

RETRYABLE_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})
RECEIPT_LIMIT = 2000


@dataclass(frozen=True)
class RetryPolicy:
    max_attempts: int = 6
    base_seconds: float = 0.5
    cap_seconds: float = 30.0
    timeout_seconds: float = 10.0

    def delay(self, attempt: int, retry_after: float | None = None) -> float:
        """Full jitter: uniform in [0, min(cap, base * 2^(attempt-1))]; a partner's
        Retry-After (bounded by the cap) is a floor."""
        ceiling = min(self.cap_seconds, self.base_seconds * 2 ** (attempt - 1))
        delay = random.uniform(0, ceiling)
        if retry_after is not None:
            delay = max(delay, min(retry_after, self.cap_seconds))
        return delay


@dataclass
class Outcome:
    """How a delivery ended: ``ok``; or ``permanent`` (a 4xx: retrying will not help); or
    neither (still failing after every attempt, or the worker gave up its lease)."""

    ok: bool
    permanent: bool = False
    attempts: int = 0
    receipt: dict[str, Any] = field(default_factory=dict)
    error: str | None = None


@dataclass(frozen=True)
class Parcel:
    """What to deliver: the body, its idempotency key and what it is."""

    body: bytes
    idempotency_key: str
    kind: str  # "batch" or "deletion"
    content_type: str
    file_name: str
    content_encoding: str | None = None
    headers: dict[str, str] = field(default_factory=dict)


class Deliverer:
    def __init__(self, policy: RetryPolicy, directory_root: Path,
                 session: requests.Session | None = None,
                 sleep: Callable[[float], None] = time.sleep):
        self.policy = policy
        self.directory_root = directory_root
        self.session = session or requests.Session()
        self.sleep = sleep

    def deliver(self, destination: Destination, parcel: Parcel,
                keep_going: Callable[[], bool] = lambda: True,
                attempts: int | None = None) -> Outcome:
        """Deliver ``parcel`` in up to ``attempts`` tries (the policy's by default);
        ``keep_going`` is asked before each retry (a worker that lost its lease stops). Never
        raises for the partner's failures: the Outcome says what happened."""
        if destination.kind == "directory":
            return self._write_file(destination, parcel)
        return self._post(destination, parcel, keep_going,
                          attempts or self.policy.max_attempts)

    def _post(self, destination: Destination, parcel: Parcel,
              keep_going: Callable[[], bool], max_attempts: int) -> Outcome:
        headers = {"Content-Type": parcel.content_type,
                   "Idempotency-Key": parcel.idempotency_key,
                   "X-Muisti-Kind": parcel.kind,
                   SIGNATURE_HEADER: sign(destination.signing_secret, parcel.body),
                   **parcel.headers}
        if parcel.content_encoding:
            headers["Content-Encoding"] = parcel.content_encoding
        if destination.authorization:
            headers["Authorization"] = destination.authorization
        error = None
        for attempt in range(1, max_attempts + 1):
            retry_after = None
            try:
                response = self.session.post(destination.url, data=parcel.body, headers=headers,
                                             timeout=self.policy.timeout_seconds)
            except ValueError as exc:
                # requests' InvalidURL and InvalidHeader, http.client's refusal of a control
                # or non-Latin-1 character: the request cannot be made, so no retry helps
                return Outcome(ok=False, permanent=True, attempts=attempt - 1,
                               error=_unusable(exc))
            except requests.RequestException as exc:  # timeouts, refused connections, ...
                error = f"{exc.__class__.__name__}: {exc}"[:300]
            else:
                receipt = {"status": response.status_code,
                           "body": response.text[:RECEIPT_LIMIT]}
                if response.status_code < 300:
                    return Outcome(ok=True, attempts=attempt, receipt=receipt)
                error = f"HTTP {response.status_code}"
                if response.status_code not in RETRYABLE_STATUS:
                    return Outcome(ok=False, permanent=True, attempts=attempt, receipt=receipt,
                                   error=error)
                retry_after = _seconds(response.headers.get("Retry-After"))
            if attempt == max_attempts or not keep_going():
                return Outcome(ok=False, attempts=attempt, error=error)
            self.sleep(self.policy.delay(attempt, retry_after))
        return Outcome(ok=False, attempts=max_attempts, error=error)

    def _write_file(self, destination: Destination, parcel: Parcel) -> Outcome:
        root = self.directory_root.resolve()
        try:
            target = (root / destination.path / parcel.file_name).resolve()
        except ValueError as exc:  # a NUL in a path stored before contracts refused it
            return Outcome(ok=False, permanent=True, error=f"unusable path: {exc}"[:300])
        if root not in target.parents:
            return Outcome(ok=False, permanent=True, error="the path leaves the export root")
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            handle, temporary = tempfile.mkstemp(dir=target.parent, prefix=".partial-")
            try:
                with os.fdopen(handle, "wb") as out:
                    out.write(parcel.body)
                    out.flush()
                    os.fsync(out.fileno())
                os.replace(temporary, target)
            except BaseException:
                Path(temporary).unlink(missing_ok=True)
                raise
        except OSError as exc:
            return Outcome(ok=False, attempts=1, error=f"{exc.__class__.__name__}: {exc}"[:300])
        return Outcome(ok=True, attempts=1, receipt={"file": str(target),
                                                     "bytes": len(parcel.body)})


def _unusable(exc: ValueError) -> str:
    """Why a request could not be made, naming the part of the destination at fault but not
    quoting it: the header holds the endpoint's credentials."""
    if isinstance(exc, requests.exceptions.InvalidHeader | UnicodeEncodeError):
        return ("cannot send: destination.authorization is not a valid HTTP header value "
                "(fix the partner contract)")
    return (f"cannot send: destination.url is not a usable URL ({exc.__class__.__name__}; "
            f"fix the partner contract)")


def _seconds(header: str | None) -> float | None:
    try:
        return float(header) if header else None
    except ValueError:
        return None  # an HTTP date: the backoff alone decides
