"""App-scoped to page-scoped Meta ids, for platform-driven deletion.

Meta's data-deletion callback names the person by the *app-scoped* id (ASID) the app was given
at login, while page webhooks (feed, mentions, Messenger) name them by *page-scoped* ids (PSID),
one per page. Erasing the ASID alone would leave the PSID-keyed social identities of the same
person untouched, so the callback resolves the ASID through the Graph API's ID-matching edge
``GET /{asid}/ids_for_pages`` (app access token ``<app id>|<app secret>`` with its
``appsecret_proof``), answered ``{"data": [{"id": "<psid>", "page": {"id", "name"}}], "paging"}``,
and files an erasure for each PSID too.

Why resolve rather than learn a mapping: a mapping learned when both ids are seen would make the
social service keep a table of personal ids (today it keeps none), would only know pairs seen
after it was deployed, and Meta's answer is authoritative. Limits: Instagram-scoped ids (IGSID)
have no such edge, so Instagram identities are reached only through the identity graph (when
the person linked them to a known profile); and pages outside the app's business are not listed.
"""

from __future__ import annotations

import hashlib
import hmac

import requests

MAX_PAGES = 20  # of ids_for_pages: a person is rarely known to more than a few pages


class ResolutionFailed(Exception):
    """The Graph API could not be asked or refused to answer."""


class ResolutionRefused(ResolutionFailed):
    """The Graph API answered a client error other than throttling (429): asking again
    soon will not help."""


class PageScopedIds:
    def __init__(self, graph_url: str, app_id: str, app_secret: str, timeout: float = 10.0):
        self._graph_url = graph_url.rstrip("/")
        token = f"{app_id}|{app_secret}"
        proof = hmac.new(app_secret.encode(), token.encode(), hashlib.sha256).hexdigest()
        self._params = {"access_token": token, "appsecret_proof": proof}
        self._timeout = timeout

    def resolve(self, app_scoped_id: str) -> list[str]:
        """The page-scoped ids Meta knows this person by, for the pages of the app's business.
        Raises ResolutionFailed (ResolutionRefused for a client error)."""
        url: str | None = f"{self._graph_url}/{app_scoped_id}/ids_for_pages"
        params: dict | None = self._params
        found: list[str] = []
        for _ in range(MAX_PAGES):
            if url is None:
                break
            try:
                answer = requests.get(url, params=params, timeout=self._timeout)
            except requests.RequestException as exc:
                raise ResolutionFailed(f"the Graph API is unreachable: {exc}") from None
            if answer.status_code != 200:
                refused = 400 <= answer.status_code < 500 and answer.status_code != 429
                failure = ResolutionRefused if refused else ResolutionFailed
                raise failure(f"ids_for_pages answered {answer.status_code}: "
                              f"{answer.text[:200]}")
            try:
                body = answer.json()
                entries = body.get("data") or []
                next_url = (body.get("paging") or {}).get("next")
            except (ValueError, AttributeError):
                raise ResolutionFailed("ids_for_pages answered something unreadable") from None
            found.extend(str(entry["id"]) for entry in entries
                         if isinstance(entry, dict) and entry.get("id"))
            url, params = next_url, None  # the next link carries the token already
        return list(dict.fromkeys(found))
