"""What the preference centre asks other services over HTTP, with ``CDP_SERVICE_API_KEY``:
the identity service which profile an email address or phone number belongs to, and the
profile service what is held about that profile (read with the purpose ``data_request``, so
the profile service's access log shows the customer's own look), and the export service which
partners received the profile's data and when."""

from __future__ import annotations

from urllib.parse import quote

import requests

TIMEOUT_SECONDS = 5.0


class ServiceUnavailable(Exception):
    """The other service could not be asked now."""


class Directory:
    def __init__(self, identity_url: str, profile_url: str, api_key: str, *, export_url: str):
        self.identity_url = identity_url.rstrip("/")
        self.profile_url = profile_url.rstrip("/")
        self.export_url = export_url.rstrip("/")
        self.headers = {"Authorization": f"Bearer {api_key}"}

    def _get(self, url: str, **kwargs) -> requests.Response:
        try:
            return requests.get(url, headers={**self.headers, **kwargs.pop("headers", {})},
                                timeout=TIMEOUT_SECONDS, **kwargs)
        except requests.RequestException as exc:
            raise ServiceUnavailable(exc.__class__.__name__) from None

    def profile_of(self, identifier_type: str, value: str) -> str | None:
        """The profile holding the (normalised) identifier, None when none does."""
        response = self._get(self.identity_url + "/v1/identity/resolve",
                             params={"type": identifier_type, "value": value})
        if response.status_code in (404, 422):
            return None
        if response.status_code != 200:
            raise ServiceUnavailable(f"identity answered {response.status_code}")
        return response.json()["profile_id"]

    def profile(self, profile_id: str) -> dict | None:
        """The profile as the profile service shows it (identifiers, traits, segments, the
        recent timeline); None when it holds none (e.g. erased)."""
        response = self._get(f"{self.profile_url}/v1/profiles/{quote(profile_id, safe='')}",
                             headers={"X-Purpose": "data_request"})
        if response.status_code == 404:
            return None
        if response.status_code != 200:
            raise ServiceUnavailable(f"profile answered {response.status_code}")
        return response.json()

    def disclosures(self, profile_id: str) -> list[dict]:
        """The partners the profile's data went to: partner name, first and last send, and
        when the partner was told to delete it (the export service's disclosure list)."""
        response = self._get(self.export_url + "/v1/exports/disclosures",
                             params={"profile_id": profile_id})
        if response.status_code != 200:
            raise ServiceUnavailable(f"export answered {response.status_code}")
        return response.json()["disclosures"]
