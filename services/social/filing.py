"""Filing platform-driven deletions with the privacy service (the consent API's
``POST /v1/privacy/requests``), which expands the subject through the identity graph, fans the
erasure out to every service and keeps the proof.

Shared by the API (Meta's callback, collector-posted X compliance events: a failure is answered
503 so the platform retries), the worker's X compliance stream reader (a failure leaves the
deletion pending in the store and it is filed again later) and the page-scoped erasures of
Meta's callback (page_scoped.py: pending too). The request id is derived from the
platform's notice, so filing the same deletion twice files nothing new.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import requests

from services.social.privacy import DeletionRequest

if TYPE_CHECKING:  # social_store imports page_scoped, which imports this module
    from services.social.social_store import DeletionStatuses


class FilingFailed(Exception):
    """The privacy service could not be reached or refused the request."""


class PrivacyFiler:
    def __init__(self, consent_url: str, api_key: str, statuses: DeletionStatuses,
                 timeout: float = 10.0):
        self._url = f"{consent_url.rstrip('/')}/v1/privacy/requests"
        self._headers = {"Authorization": f"Bearer {api_key}"}
        self._statuses = statuses
        self._timeout = timeout

    def file(self, deletion: DeletionRequest, part_of: str | None = None) -> None:
        """Record the status page's document, then file the erasure. Raises FilingFailed."""
        self._statuses.record(deletion, part_of)
        try:
            answer = requests.post(self._url, json=deletion.filing(), headers=self._headers,
                                   timeout=self._timeout)
        except requests.RequestException as exc:
            raise FilingFailed(f"the privacy service is unreachable: {exc}") from None
        if answer.status_code != 202:
            raise FilingFailed(f"the privacy service refused the erasure ({answer.status_code}: "
                               f"{answer.text[:200]})")
