"""Instagram mentions through the Graph API, read by the poller machinery (poller.py).

``GET /{ig-user-id}/tags`` lists the media the brand's professional account was tagged in,
newest first, in pages with ``paging.cursors.after`` (and ``paging.next`` while more remain).
The Graph API has no ``since_id``, so the source defines its own marks for the poller's
checkpoint: ``since_id`` is ``<timestamp>|<media id>`` of the newest media of the last finished
sweep, and a sweep stops at that media or at anything older (so an untagged or deleted marker
media does not make every sweep read the whole history). The page token is the ``after``
cursor.

Rate limits: Meta reports usage in ``X-Business-Use-Case-Usage`` (Instagram's business use
case: ``{"<business id>": [{"type", "call_count", "total_cputime", "total_time",
"estimated_time_to_regain_access"}]}``, percentages and minutes) and ``X-App-Usage``. A throttled
call (HTTP 429, or an error with a throttling code: 4, 17, 32, 613, 80002) waits for
``estimated_time_to_regain_access`` when Meta gives one, else a minute; a usage at or above
``SLOW_DOWN_PERCENT`` also raises RateLimited after the page is handed on, so the next call
waits instead of hitting the wall (Meta's penalty for that is measured in hours).

Mentions notified by webhook (``MentionedContent``, run by the worker after the webhook was
answered): a ``mentions`` notification names only the media (and the comment) the brand was
@mentioned in, so the text is read with ``GET /{ig-user-id}?fields=mentioned_media.media_id(
<media id>){<media fields>}`` or ``mentioned_comment.comment_id(<comment id>){<comment
fields>}``. A 5xx, a throttled call or a network failure is retried with exponential backoff
and full jitter (a throttle waits what Meta announces); still failing after ``FETCH_ATTEMPTS``
it raises ``GraphUnavailable``, a ConnectionError, so the consumer loop retries the message
until Meta heals, as for a broker outage; so does a refused access token (code 190), which an
operator must renew. When Meta says the object does not exist (HTTP 404, or code 100 with
subcode 33: deleted, or its owner went private) it raises ``MentionGone``; any other refusal
``MentionRefused``: both end in the dead-letter topic with Meta's message.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any

import orjson
import requests

from services.social.messages import InstagramMention
from services.social.poller import (
    MentionsSource,
    Page,
    PageTokenRejected,
    RateLimited,
    backoff_seconds,
)

log = logging.getLogger(__name__)

TAG_FIELDS = "id,caption,username,timestamp,permalink,media_type,media_url"
THROTTLING_ERROR_CODES = frozenset({4, 17, 32, 613, 80002})
DEFAULT_THROTTLE_SECONDS = 60.0
SLOW_DOWN_PERCENT = 95
MAX_WAIT_SECONDS = 3600.0
COMMENT_FIELDS = "id,text,username,timestamp,media{id,permalink}"
FETCH_ATTEMPTS = 5
FETCH_MAX_WAIT_SECONDS = 60.0  # one wait between attempts; the loop's retries take over after
TOKEN_ERROR_CODE = 190
NOT_FOUND_SUBCODE = 33


def usage_wait(headers: dict[str, str]) -> tuple[float | None, int]:
    """From Meta's usage headers (lower-cased names): the wait Meta announces (seconds, or None
    when it gives none) and the highest usage percentage reported."""
    wait: float | None = None
    highest = 0
    for name in ("x-business-use-case-usage", "x-app-usage"):
        raw = headers.get(name)
        if not raw:
            continue
        try:
            usage = orjson.loads(raw)
        except orjson.JSONDecodeError:
            continue
        reports = ([usage] if name == "x-app-usage" else
                   [item for items in usage.values() if isinstance(items, list)
                    for item in items] if isinstance(usage, dict) else [])
        for report in reports:
            if not isinstance(report, dict):
                continue
            for key in ("call_count", "total_cputime", "total_time"):
                value = report.get(key)
                if isinstance(value, int | float):
                    highest = max(highest, int(value))
            minutes = report.get("estimated_time_to_regain_access")
            if isinstance(minutes, int | float):
                wait = max(wait or 0.0, min(float(minutes) * 60.0, MAX_WAIT_SECONDS))
    return wait, highest


def throttled(status: int, body: Any) -> bool:
    error = body.get("error") if isinstance(body, dict) else None
    code = error.get("code") if isinstance(error, dict) else None
    return status == 429 or code in THROTTLING_ERROR_CODES


def _mark(media: dict) -> str:
    return f"{media.get('timestamp', '')}|{media.get('id', '')}"


def _parse_mark(mark: str | None) -> tuple[datetime | None, str | None]:
    if not mark or "|" not in mark:
        return None, None
    stamp, media_id = mark.split("|", 1)
    try:
        return datetime.fromisoformat(stamp), media_id
    except ValueError:
        return None, media_id


def _before_mark(media: dict, since: datetime | None, since_id: str | None) -> bool:
    """Whether this media was already read by an earlier sweep."""
    if since_id and media.get("id") == since_id:
        return True
    try:
        stamp = datetime.fromisoformat(str(media.get("timestamp")))
    except ValueError:
        return False
    return since is not None and stamp < since


class InstagramTagsApi(MentionsSource):
    """``GET {graph_url}/{ig_user_id}/tags`` over HTTP (``requests``)."""

    def __init__(self, graph_url: str, ig_user_id: str, access_token: str, page_size: int = 50,
                 timeout: float = 15.0):
        self._url = f"{graph_url.rstrip('/')}/{ig_user_id}/tags"
        self._token = access_token
        self._page_size = max(1, min(page_size, 100))
        self._timeout = timeout

    def page(self, since_id: str | None, pagination_token: str | None) -> Page:
        params = {"fields": TAG_FIELDS, "limit": self._page_size, "access_token": self._token}
        if pagination_token:
            params["after"] = pagination_token
        response = requests.get(self._url, params=params, timeout=self._timeout)
        headers = {k.lower(): v for k, v in response.headers.items()}
        try:
            body = response.json()
        except ValueError:
            body = None
        announced, highest = usage_wait(headers)
        if throttled(response.status_code, body):
            raise RateLimited(announced if announced is not None else DEFAULT_THROTTLE_SECONDS)
        if response.status_code == 400 and pagination_token:
            raise PageTokenRejected(response.text[:200])
        response.raise_for_status()
        if not isinstance(body, dict):
            raise ValueError("the Graph API answered something that is not a JSON object")
        since, since_media = _parse_mark(since_id)
        media = [item for item in body.get("data") or [] if isinstance(item, dict)]
        fresh = []
        for item in media:
            if _before_mark(item, since, since_media):
                break
            fresh.append(item)
        paging = body.get("paging") if isinstance(body.get("paging"), dict) else {}
        after = (paging.get("cursors") or {}).get("after")
        reached_the_end = len(fresh) < len(media) or not paging.get("next") or not after
        pause = None
        if highest >= SLOW_DOWN_PERCENT:
            pause = announced or DEFAULT_THROTTLE_SECONDS
            log.warning("Instagram usage is near Meta's limit; slowing down",
                        extra={"usage_percent": highest, "wait": pause})
        return Page({**body, "data": fresh}, None if reached_the_end else after,
                    _mark(fresh[0]) if fresh else None, pause)


class MentionGone(Exception):
    """The Graph API says the mentioned media or comment does not exist (any more)."""


class MentionRefused(Exception):
    """The Graph API refused to read the mention for another reason than a transient one."""


class GraphUnavailable(ConnectionError):
    """The Graph API kept failing (5xx, throttled, unreachable) or refused the access token."""


def _graph_error(body: Any) -> tuple[Any, Any, str]:
    """Code, subcode and message of a Graph API error answer."""
    error = body.get("error") if isinstance(body, dict) else None
    if not isinstance(error, dict):
        return None, None, "no error object in the answer"
    return error.get("code"), error.get("error_subcode"), str(error.get("message", ""))[:300]


class MentionedContent:
    """Reads the media or comment an Instagram mention notification names, over HTTP."""

    def __init__(self, graph_url: str, access_token: str, attempts: int = FETCH_ATTEMPTS,
                 timeout: float = 15.0, sleep: Callable[[float], None] = time.sleep):
        self._graph_url = graph_url.rstrip("/")
        self._token = access_token
        self._attempts = max(1, attempts)
        self._timeout = timeout
        self._sleep = sleep
        self._session = requests.Session()

    def fetch(self, mention: InstagramMention) -> dict:
        """The Graph API's answer, ``{"mentioned_media" | "mentioned_comment": {...}, "id"}``.
        Raises MentionGone, MentionRefused or GraphUnavailable."""
        if mention.comment_id:
            fields = f"mentioned_comment.comment_id({mention.comment_id}){{{COMMENT_FIELDS}}}"
        else:
            fields = f"mentioned_media.media_id({mention.media_id}){{{TAG_FIELDS}}}"
        url = f"{self._graph_url}/{mention.account_id}"
        params = {"fields": fields, "access_token": self._token}
        failure = ""
        for attempt in range(1, self._attempts + 1):
            try:
                response = self._session.get(url, params=params, timeout=self._timeout)
            except requests.RequestException as exc:
                failure, wait = f"unreachable: {exc!r}", backoff_seconds(attempt)
            else:
                try:
                    body = response.json()
                except ValueError:
                    body = None
                status = response.status_code
                announced, _ = usage_wait({k.lower(): v for k, v in response.headers.items()})
                if throttled(status, body):
                    failure = f"throttled ({status})"
                    wait = announced if announced is not None else backoff_seconds(attempt)
                elif status >= 500:
                    failure, wait = f"answered {status}", backoff_seconds(attempt)
                elif status == 200 and isinstance(body, dict):
                    return body
                else:
                    code, subcode, message = _graph_error(body)
                    if status == 404 or (code == 100 and subcode == NOT_FOUND_SUBCODE):
                        raise MentionGone(message)
                    if code == TOKEN_ERROR_CODE:
                        raise GraphUnavailable(f"the access token was refused: {message}")
                    raise MentionRefused(f"answered {status} (code {code}): {message}")
            if attempt < self._attempts:
                log.warning("Graph API call failed; backing off",
                            extra={"error": failure, "wait": round(wait, 2)})
                self._sleep(min(wait, FETCH_MAX_WAIT_SECONDS))
        raise GraphUnavailable(f"the Graph API is still failing after {self._attempts} "
                               f"attempts: {failure}")
