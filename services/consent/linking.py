"""How a bare identifier's consent subject (a do-not-call number) meets its profile.

The link makes the profile take the stricter state per purpose from the identifier (an
objection stays an objection), and later decisions on the identifier apply to the profile
too, so a check on the profile stays one read. The consent worker links when a resolved event
carries the identifier; the API links as soon as a decision is recorded on an identifier the
identity graph already knows.
"""

from __future__ import annotations

from datetime import datetime

import requests

from services.common.bus import Outgoing
from services.common.envelope import derived_message_id
from services.consent import ledger
from services.consent.consent_store import Change, ConsentStore, change_messages
from services.consent.decisions import signed
from services.consent.receipts import ReceiptSigner


def link_identifier(store: ConsentStore, signer: ReceiptSigner, identifier_key: str,
                    profile_id: str, *, at: datetime, by: str,
                    announce_later: bool = False) -> tuple[Change | None, list[Outgoing]]:
    """Link the identifier's subject to the profile (once per pair, whoever comes first);
    returns the link's change (None when there is nothing to link) and its Consent Changed
    messages. ``by``: the message or decision that found the link; delivered again, it
    finishes and announces the link again, anything else changes nothing.
    ``announce_later``: the change also goes in the outbox (the API's case: the relay
    finishes and announces it if the API cannot; the worker's message is re-delivered
    instead)."""
    identifier_state = store.state(identifier_key)
    if identifier_state is None:
        return None, []  # the usual case: one _id read, nothing recorded for this identifier
    profile, profile_state = store.current_state(profile_id)
    cause = derived_message_id(f"{identifier_key}->{profile}", "consent-link")
    change = store.change(cause)
    if change is None:
        entries = ledger.stricter_entries(
            ledger.profile_subject(profile), profile_state or ledger.SubjectState(profile),
            identifier_state, kind="link", reason=ledger.LINKED, cause_id=cause, at=at)
        change = store.commit(Change(cause, signed(entries, signer), at=at, link={
            "identifier": identifier_key, "profile": profile, "by": by}),
            announce_later=announce_later)
    elif change.link.get("by") != by:
        return None, []  # linked before; this changes nothing
    return change, change_messages(store.finish(change))


class ProfileLookupFailed(Exception):
    """The identity graph could not say which profile an identifier belongs to."""


class IdentityProfiles:
    """Which profile an identifier belongs to, from the identity API's resolve
    (``CDP_IDENTITY_URL`` with ``CDP_SERVICE_API_KEY``). Without an identity URL, the profile
    the consent worker linked the identifier to, if any."""

    TIMEOUT_SECONDS = 2.0

    def __init__(self, base_url: str, api_key: str):
        self.url = base_url.rstrip("/") + "/v1/identity/resolve" if base_url else ""
        self.session = requests.Session()
        self.session.headers["Authorization"] = f"Bearer {api_key}"

    def profile_of(self, type_: str, value: str,
                   identifier_state: ledger.SubjectState | None) -> str | None:
        """The profile id, or None when no profile has the identifier. Raises
        ProfileLookupFailed."""
        if not self.url:
            linked = identifier_state.linked if identifier_state else []
            return linked[0] if linked else None
        try:
            response = self.session.get(self.url, params={"type": type_, "value": value},
                                        timeout=self.TIMEOUT_SECONDS)
        except requests.RequestException as exc:
            raise ProfileLookupFailed(f"identity API unreachable: {exc.__class__.__name__}") \
                from None
        if response.status_code == 404:
            return None
        try:
            if response.status_code == 200:
                return str(response.json()["profile_id"])
        except (ValueError, KeyError, TypeError):
            pass
        raise ProfileLookupFailed(f"identity API answered {response.status_code}")
