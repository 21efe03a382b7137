"""Long-running work started over HTTP (data-subject requests on the consent API, export runs
on the export API): request bodies, reading a job document's state, following it to the end.

A request document has ``request_id``, ``state`` (received, fanned_out, overdue, completed,
partially_failed) and the services ``acknowledged`` of those ``expected``; a run document has
``run_id``, ``status`` (queued, running, succeeded, failed, cancelled) and ``progress`` counts.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import requests

FINISHED_WELL = frozenset({"completed", "succeeded"})
FINISHED_BADLY = frozenset({"partially_failed", "failed", "cancelled"})


class JobError(RuntimeError):
    """The API refused the call, answered nonsense, or the job did not finish in time."""


def privacy_request_body(kind: str, reason: str, *, identifier_type: str | None = None,
                         value: str | None = None, profile_id: str | None = None) -> dict:
    """The body of POST /v1/privacy/requests for a subject given by an identifier or by a
    profile id (exactly one of the two); ``reason`` is the verification reference."""
    if profile_id and (identifier_type or value):
        raise ValueError("give either --profile-id or --type and --value, not both")
    if profile_id:
        subject: dict = {"profile_id": profile_id}
    elif identifier_type and value:
        subject = {"identifier": {"type": identifier_type, "value": value}}
    else:
        raise ValueError("give --type and --value (or --profile-id)")
    return {"kind": kind, "subject": subject, "reason": reason}


@dataclass(frozen=True)
class JobState:
    job_id: str | None
    state: str
    finished: bool
    succeeded: bool
    done_steps: int | None = None
    total_steps: int | None = None
    detail: str = ""


def job_state(doc: Mapping[str, Any]) -> JobState:
    """Read a request or run document: its id, state, whether it finished (and well), the
    services acknowledged of those expected, and for a run how many profiles it exported."""
    job_id = next((str(doc[name]) for name in ("request_id", "run_id") if doc.get(name)), None)
    state = str(doc.get("state") or doc.get("status") or "unknown")
    acknowledged, expected = doc.get("acknowledged"), doc.get("expected")
    done = total = None
    detail = ""
    if isinstance(acknowledged, list) and isinstance(expected, list) and expected:
        done, total = len(acknowledged), len(expected)
        missing = doc.get("missing")
        if missing:
            detail = "waiting for " + ", ".join(map(str, missing))
    progress = doc.get("progress")
    if isinstance(progress, dict) and "exported" in progress:
        detail = (f"{progress['exported']} exported of {progress.get('considered', 0)} "
                  f"considered, {progress.get('batches_sent', 0)} batches sent")
    return JobState(job_id, state, finished=state in FINISHED_WELL | FINISHED_BADLY,
                    succeeded=state in FINISHED_WELL, done_steps=done, total_steps=total,
                    detail=detail)


class ApiClient:
    """A JSON client for one Muisti API with a bearer key; raises JobError with the problem
    document's detail on any non-2xx answer."""

    def __init__(self, base_url: str, key: str, timeout: float = 10.0):
        self.base_url = base_url.rstrip("/")
        self._session = requests.Session()
        self._session.headers["Authorization"] = f"Bearer {key}"
        self._timeout = timeout

    def call(self, method: str, path: str, body: dict | None = None,
             headers: dict[str, str] | None = None) -> dict:
        try:
            response = self._session.request(method, self.base_url + path, json=body,
                                             headers=headers, timeout=self._timeout)
        except requests.RequestException as exc:
            raise JobError(f"{method} {self.base_url + path}: {exc}") from None
        if not response.ok:
            raise JobError(f"{method} {path} answered {response.status_code}: "
                           f"{_detail(response)}")
        try:
            return response.json()
        except ValueError:
            raise JobError(
                f"{method} {path} answered {response.status_code} without JSON") from None


def _detail(response: requests.Response) -> str:
    try:
        problem = response.json()
    except ValueError:
        return response.text[:200]
    detail = problem.get("detail") if isinstance(problem, dict) else None
    errors = problem.get("errors") if isinstance(problem, dict) else None
    return f"{detail} {errors}" if errors else str(detail or problem)


def follow(fetch: Callable[[], dict], *, timeout: float, interval: float = 1.0,
           on_update: Callable[[JobState], None] = lambda state: None,
           clock: Callable[[], float] = time.monotonic,
           sleep: Callable[[float], None] = time.sleep) -> dict:
    """Call ``fetch`` every ``interval`` seconds until the job document says it finished;
    returns that document. Raises JobError after ``timeout`` seconds (the job goes on)."""
    deadline = clock() + timeout
    while True:
        doc = fetch()
        state = job_state(doc)
        on_update(state)
        if state.finished:
            return doc
        if clock() >= deadline:
            raise JobError(f"still {state.state} after {timeout:.0f}s; "
                           "the job goes on: look again later")
        sleep(interval)
