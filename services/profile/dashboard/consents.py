"""A profile's consents for the dashboard, read from the consent service over HTTP.

The profile API reads them on the agent's behalf (forwarding the agent's own key, so the
consent service applies its own role rules) rather than the browser calling the consent
service: the page then talks to one origin only, needs no CORS on the consent service, and its
Content-Security-Policy can stay ``connect-src 'self'``. A consent service that does not
answer, or refuses, makes the card say "consents unavailable"; it never fails the page.
"""

from __future__ import annotations

from collections.abc import Mapping
from urllib.parse import quote

import requests

TIMEOUT_SECONDS = 2.0


def read_consents(base_url: str, profile_id: str, headers: Mapping[str, str],
                  session: requests.Session | None = None) -> dict:
    """``{"available": True, "consents": [rows]}`` or ``{"available": False, "detail": why}``.

    ``headers`` are the caller's credentials to forward (``Authorization`` / ``X-API-Key``).
    """
    url = f"{base_url.rstrip('/')}/v1/consents/{quote(profile_id, safe='')}"
    try:
        response = (session or requests).get(
            url, headers={**headers, "X-Purpose": "customer_service"}, timeout=TIMEOUT_SECONDS)
    except requests.RequestException:
        return {"available": False, "detail": "the consent service did not answer"}
    try:
        body = response.json()
    except ValueError:
        body = None
    if response.status_code != 200:
        detail = body.get("detail") if isinstance(body, dict) else None
        return {"available": False, "status": response.status_code,
                "detail": detail or f"the consent service answered {response.status_code}"}
    return {"available": True, "consents": consent_rows(body)}


def consent_rows(body) -> list[dict]:
    """The consent service's answer as display rows ``{purpose, state, allowed, at, titles}``
    (``titles``: the purpose's title per language, empty when the service gives none).

    Accepts a list of consent records, ``{"consents": [...]}``, or a mapping of purpose to a
    record or to a bare state, so the card keeps working while that API settles.
    """
    if isinstance(body, Mapping):
        for name in ("consents", "purposes", "states"):
            if name in body:
                return consent_rows(body[name])
        records = [{"purpose": purpose, **(value if isinstance(value, Mapping)
                                           else {"state": value})}
                   for purpose, value in body.items() if purpose != "profile_id"]
    elif isinstance(body, list):
        records = [record for record in body if isinstance(record, Mapping)]
    else:
        return []
    rows = []
    for record in records:
        state = record.get("state")
        allowed = record.get("allowed")
        rows.append({
            "purpose": str(record.get("purpose", "?")),
            "state": str(state) if state is not None else None,
            "allowed": bool(allowed) if allowed is not None else state == "granted",
            "at": record.get("collected_at") or record.get("decided_at") or record.get("at"),
            "titles": {str(lang): str(title) for lang, title in titles.items()}
            if isinstance(titles := record.get("titles"), Mapping) else {},
        })
    return sorted(rows, key=lambda row: row["purpose"])
