"""The mentions poller: reads a platform's REST mentions endpoint page by page and hands each
page's messages on, keeping a checkpoint so that a restart neither repeats nor skips.

The endpoint is X API v2 ``GET /2/users/:id/mentions``: newest first, ``pagination_token`` to
go further back, ``since_id`` to stop at what an earlier sweep already read, ``meta.next_token``
and ``meta.newest_id`` in each page. A *sweep* reads from the newest mention back to the
checkpoint's ``since_id``; after every page the messages are emitted (and acknowledged by
Kafka) and only then the checkpoint saved with the next page's token, so a crash repeats at
most one page (same message ids, deduplicated downstream) and never skips one. When a sweep
ends, ``since_id`` becomes the newest id it saw.

Other platforms plug in with their own ``MentionsSource`` and page normaliser (instagram.py:
the Graph API's ``/{ig-user-id}/tags``); ``since_id`` and the tokens are whatever marks the
source defines.

Rate limits: a 429 waits for ``Retry-After`` (seconds) or ``x-rate-limit-reset`` (epoch
seconds); other failures back off exponentially with full jitter. ``PollLoop`` runs sweeps
until stopped and has the loop interface ``services.common.runner`` runs workers with.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import requests

from services.social.messages import Normalised, from_x_v2_page

log = logging.getLogger(__name__)

BACKOFF_BASE_SECONDS = 1.0
BACKOFF_CAP_SECONDS = 300.0
RATE_LIMIT_CAP_SECONDS = 900.0  # X's windows are 15 minutes
TWEET_FIELDS = ("created_at,lang,author_id,conversation_id,in_reply_to_user_id,"
                "referenced_tweets,entities")


@dataclass(frozen=True)
class Checkpoint:
    since_id: str | None = None  # newest id of the last finished sweep
    sweep_newest_id: str | None = None  # newest id of the sweep in progress
    pagination_token: str | None = None  # the next page of the sweep in progress


class CheckpointStore(ABC):
    @abstractmethod
    def load(self, name: str) -> Checkpoint: ...

    @abstractmethod
    def save(self, name: str, checkpoint: Checkpoint) -> None: ...


@dataclass(frozen=True)
class Page:
    body: dict[str, Any]
    next_token: str | None
    newest_id: str | None
    # the platform asks to slow down: wait this long once the page is handed on
    pause_seconds: float | None = None


class RateLimited(Exception):
    def __init__(self, wait_seconds: float):
        super().__init__(f"rate limited for {wait_seconds:.1f}s")
        self.wait_seconds = wait_seconds


class PageTokenRejected(Exception):
    """The platform no longer accepts a saved pagination token: the sweep starts over."""


class MentionsSource(ABC):
    @abstractmethod
    def page(self, since_id: str | None, pagination_token: str | None) -> Page:
        """One page. Raises RateLimited, PageTokenRejected, or another exception to retry."""


def rate_limit_wait(status: int, headers: dict[str, str], now: float) -> float | None:
    """Seconds to wait before the next call after a response, or None if it was not a 429."""
    if status != 429:
        return None
    retry_after = headers.get("retry-after")
    if retry_after is not None:
        try:
            return min(max(float(retry_after), 0.0), RATE_LIMIT_CAP_SECONDS)
        except ValueError:
            pass
    reset = headers.get("x-rate-limit-reset")
    if reset is not None:
        try:
            return min(max(float(reset) - now, 0.0), RATE_LIMIT_CAP_SECONDS)
        except ValueError:
            pass
    return 60.0


def backoff_seconds(attempt: int, rng: Callable[[float, float], float] = random.uniform) -> float:
    """Exponential backoff with full jitter: uniform in [0, min(cap, base * 2^(attempt-1))]."""
    return rng(0.0, min(BACKOFF_CAP_SECONDS, BACKOFF_BASE_SECONDS * 2 ** (attempt - 1)))


class XMentionsApi(MentionsSource):
    """X API v2 over HTTP (``requests``)."""

    def __init__(self, base_url: str, user_id: str, bearer_token: str, page_size: int = 100,
                 timeout: float = 15.0):
        self._url = f"{base_url.rstrip('/')}/2/users/{user_id}/mentions"
        self._session = requests.Session()
        if bearer_token:
            self._session.headers["Authorization"] = f"Bearer {bearer_token}"
        self._page_size = max(5, min(page_size, 100))
        self._timeout = timeout

    def page(self, since_id: str | None, pagination_token: str | None) -> Page:
        params = {"max_results": self._page_size, "tweet.fields": TWEET_FIELDS,
                  "expansions": "author_id", "user.fields": "username,name"}
        if since_id:
            params["since_id"] = since_id
        if pagination_token:
            params["pagination_token"] = pagination_token
        response = self._session.get(self._url, params=params, timeout=self._timeout)
        headers = {k.lower(): v for k, v in response.headers.items()}
        wait = rate_limit_wait(response.status_code, headers, time.time())
        if wait is not None:
            raise RateLimited(wait)
        if response.status_code == 400 and pagination_token:
            raise PageTokenRejected(response.text[:200])
        response.raise_for_status()
        body = response.json()
        meta = body.get("meta") or {}
        return Page(body, meta.get("next_token"), meta.get("newest_id"))


class Poller:
    """Sweeps one mentions endpoint. ``emit`` must return only once the messages are durably
    accepted (Kafka acknowledged); it is called before the checkpoint moves."""

    def __init__(self, name: str, account_id: str, source: MentionsSource,
                 checkpoints: CheckpointStore, emit: Callable[[Normalised], None],
                 normalise: Callable[[Any, str | None], Normalised] = from_x_v2_page):
        self.name = name
        self.account_id = account_id
        self.source = source
        self.checkpoints = checkpoints
        self.emit = emit
        self.normalise = normalise  # a page's body → messages (X v2 unless told)

    def sweep(self, max_pages: int | None = None) -> int:
        """Read pages until the sweep ends (or ``max_pages`` were read); returns how many
        pages. Exceptions of the source propagate after the checkpoint of the last page."""
        checkpoint = self.checkpoints.load(self.name)
        pages = 0
        while max_pages is None or pages < max_pages:
            try:
                page = self.source.page(checkpoint.since_id, checkpoint.pagination_token)
            except PageTokenRejected:
                log.warning("pagination token rejected; starting the sweep again")
                checkpoint = Checkpoint(since_id=checkpoint.since_id)
                self.checkpoints.save(self.name, checkpoint)
                continue
            pages += 1
            self.emit(self.normalise(page.body, self.account_id))
            newest = checkpoint.sweep_newest_id or page.newest_id
            if page.next_token:
                checkpoint = replace(checkpoint, sweep_newest_id=newest,
                                     pagination_token=page.next_token)
            else:
                checkpoint = Checkpoint(since_id=newest or checkpoint.since_id)
            self.checkpoints.save(self.name, checkpoint)
            if page.pause_seconds:
                raise RateLimited(page.pause_seconds)
            if not page.next_token:
                break
        return pages


class PollLoop:
    """Runs ``poller.sweep()`` every ``interval_seconds`` until ``stop()``; waits out rate
    limits and backs off on failures. Same interface as a ConsumerLoop for the runner."""

    def __init__(self, poller: Poller, interval_seconds: float):
        self.poller = poller
        self.interval_seconds = interval_seconds
        self.group = f"poller-{poller.name}"
        self._stopping = threading.Event()

    def stop(self) -> None:
        self._stopping.set()

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    def run(self) -> None:
        failures = 0
        while not self._stopping.is_set():
            try:
                self.poller.sweep()
                failures = 0
                wait = self.interval_seconds
            except RateLimited as limited:
                log.warning("rate limited by the platform", extra={"wait": limited.wait_seconds})
                wait = limited.wait_seconds
            except Exception as exc:  # noqa: BLE001 - network, platform or broker trouble
                failures += 1
                wait = backoff_seconds(failures)
                log.warning("poll failed; backing off",
                            extra={"error": repr(exc), "wait": round(wait, 2)})
            self._stopping.wait(wait)
