"""The page-scoped erasures of a Meta data-deletion callback (meta_ids.py says why they are
needed): filed by the callback once its app-scoped erasure is filed, or later by the worker.

Meta does not document that it retries the callback, so once the app-scoped erasure is filed
the callback answers 200 whatever becomes of the rest: when the Graph API cannot resolve the
app-scoped id, or the privacy service does not accept a page-scoped erasure, the resolution is
stored as pending (the app-scoped id and the confirmation code, nothing else that names the
person, removed once every part is filed) and the status page says in_progress meanwhile.

The worker retries a pending resolution every minute. A permanent refusal (the Graph API
answering a client error other than 429) is retried hourly instead, logged as an error each
time, and given up after seven days of refusals, the status page then saying the page-scoped
ids went unresolved. Why give up: a refusal is either a setting an operator fixes (a revoked
app secret or permission; a week of hourly errors is time enough to notice) or Meta no longer
knowing the app-scoped id (the account is gone), which no retry heals; retrying for ever would
keep the app-scoped id, personal data the person asked us to erase, for ever.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from services.common.background import BackgroundLoop
from services.common.store import paced
from services.social import privacy
from services.social.filing import FilingFailed
from services.social.meta_ids import ResolutionFailed, ResolutionRefused
from services.social.privacy import DeletionRequest

log = logging.getLogger(__name__)

RETRY_AFTER = timedelta(minutes=1)
RETRY_REFUSED_AFTER = timedelta(hours=1)
GIVE_UP_AFTER = timedelta(days=7)  # of refusals only: an outage is waited out
CHUNK = 10  # resolutions retried between pauses


@dataclass(frozen=True)
class PendingResolution:
    request: DeletionRequest  # the callback's app-scoped erasure, already filed
    refused_since: datetime | None  # the first of an unbroken run of permanent refusals


class PendingResolutionStore(ABC):
    @abstractmethod
    def add(self, request: DeletionRequest, retry_at: datetime,
            refused_since: datetime | None) -> None: ...

    @abstractmethod
    def due(self, now: datetime) -> list[PendingResolution]: ...

    @abstractmethod
    def reschedule(self, confirmation_code: str, retry_at: datetime,
                   refused_since: datetime | None) -> None: ...

    @abstractmethod
    def remove(self, confirmation_code: str) -> None: ...

    @abstractmethod
    def give_up(self, confirmation_code: str, at: datetime) -> None:
        """Forget the pending resolution and mark its status page unresolved."""


class PageScopedErasures:
    def __init__(self, resolve: Callable[[str], list[str]],
                 file: Callable[..., None], pending: PendingResolutionStore, secret: str,
                 now: Callable[[], datetime] = lambda: datetime.now(UTC)):
        self.resolve = resolve  # raises ResolutionFailed (meta_ids.PageScopedIds.resolve)
        self.file = file  # raises FilingFailed (filing.PrivacyFiler.file)
        self.pending = pending
        self.secret = secret
        self.now = now

    def erase(self, request: DeletionRequest) -> None:
        """Resolve the app-scoped id and file an erasure per page-scoped id, counted on the
        callback's status page. Raises ResolutionFailed or FilingFailed."""
        (_type, app_scoped_id), = request.identifiers
        page_scoped = self.resolve(app_scoped_id)
        for part in privacy.page_scoped_deletions(request, page_scoped, self.secret):
            self.file(part, part_of=request.confirmation_code)
        # a retried callback may succeed where an earlier one left the resolution pending
        self.pending.remove(request.confirmation_code)

    def erase_or_defer(self, request: DeletionRequest) -> None:
        """The callback's attempt: on failure the resolution is left to the worker."""
        try:
            self.erase(request)
        except (ResolutionFailed, FilingFailed) as exc:
            now = self.now()
            refused = isinstance(exc, ResolutionRefused)
            log.warning("the page-scoped erasures of a Meta deletion were not filed; the "
                        "worker will retry", extra={"error": str(exc), "refused": refused,
                                                    "confirmation_code":
                                                        request.confirmation_code})
            self.pending.add(request, now + (RETRY_REFUSED_AFTER if refused else RETRY_AFTER),
                             now if refused else None)

    def retry_due(self, pause: Callable[[float], bool] | None = None) -> int:
        """Retry every pending resolution that is due, ``CHUNK`` at a time with ``pause``
        after each (the Graph API and the privacy service serve the webhooks too); returns
        how many were completed."""
        completed = 0
        for chunk in paced(self.pending.due(self.now()), CHUNK, pause):
            completed += sum(self._retry(pending) for pending in chunk)
        return completed

    def _retry(self, pending: PendingResolution) -> bool:
        code = pending.request.confirmation_code
        try:
            self.erase(pending.request)
        except Exception as exc:  # noqa: BLE001 - one resolution's failure stops no other
            now = self.now()
            # an outage is waited out; a refusal, or a failure no retry is known to heal (an
            # id the Graph API gave that is no valid id, a status gone), is retried hourly
            # and given up after a week
            transient = (isinstance(exc, ResolutionFailed | FilingFailed)
                         and not isinstance(exc, ResolutionRefused))
            if transient:
                log.warning("retrying the page-scoped erasures of a Meta deletion failed; "
                            "retrying in a minute",
                            extra={"error": str(exc), "confirmation_code": code})
                self.pending.reschedule(code, now + RETRY_AFTER, None)
                return False
            refused_since = pending.refused_since or now
            if now - refused_since >= GIVE_UP_AFTER:
                log.error("the Graph API has refused to resolve a Meta deletion's app-scoped "
                          "id for a week; its page-scoped ids are left unresolved",
                          extra={"error": str(exc), "confirmation_code": code})
                self.pending.give_up(code, now)
            else:
                log.error("the Graph API refused to resolve a Meta deletion's app-scoped id; "
                          "retrying in an hour",
                          extra={"error": str(exc), "confirmation_code": code,
                                 "refused_since": refused_since.isoformat()})
                self.pending.reschedule(code, now + RETRY_REFUSED_AFTER, refused_since)
            return False
        log.info("the page-scoped erasures of a Meta deletion filed on retry",
                 extra={"confirmation_code": code})
        return True


class PageScopedRetryLoop(BackgroundLoop):
    """The worker's retries of pending resolutions: looks for due ones every 10 s (at once
    on start), so a retry comes about a minute after the failure."""

    group = "social-page-scoped-ids"
    idle_seconds = 10.0

    def __init__(self, erasures: PageScopedErasures):
        super().__init__()
        self.erasures = erasures

    def step(self) -> None:
        self.erasures.retry_due(self.pause)
