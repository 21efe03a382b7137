"""Erasure receipts: what a completed erasure proves, signed, for the data subject.

When every service has acknowledged an erasure as done, the consent worker signs a receipt
with the platform's Ed25519 key (``CDP_CONSENT_RECEIPT_KEY``, the key that signs consent
receipts) and keeps it with the request; the DPO downloads it from
``GET /v1/privacy/requests/{id}/receipt`` and hands it to the customer. Anyone verifies it
with the public key published at ``GET /v1/consents/receipt-key``: offline with
``python -m services.consent.receipts RECEIPT.json --public-key KEY``, or by posting it to
``POST /v1/privacy/receipts/verify``.

The receipt names the subject only by the keyed suppression digests of its identifiers
(HMAC-SHA-256 under ``CDP_PRIVACY_DIGEST_KEY``, the same digests the suppression lists hold)
and its pseudonymous profile ids; no identifier, name or other personal value is in it. It
lists which service acknowledged what and when, and which partners were sent deletion
notices as the export service reported them in its acknowledgement (``partners_notified``:
notices queued for delivery by the export service, not confirmations from the partners).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from services.consent.privacy import COMPLETED, PrivacyRequest

RECEIPT_TYPE = "erasure_receipt"
RECEIPT_VERSION = 1
DIGEST_SCHEME = "HMAC-SHA-256 of 'type:normalised value' under the platform's digest key"


class NoReceipt(ValueError):
    """The request has no erasure receipt (not an erasure, or not completed)."""


def erasure_receipt_body(request: PrivacyRequest, issued_at: datetime) -> dict[str, Any]:
    """The unsigned receipt of a completed erasure. Raises NoReceipt otherwise."""
    if request.kind != "erasure":
        raise NoReceipt(f"request {request.request_id} is a {request.kind}, not an erasure")
    if request.state != COMPLETED:
        raise NoReceipt(f"erasure {request.request_id} is {request.state}, not completed")
    acks = [request.acks[service] for service in request.expected]
    partners = []
    for ack in acks:
        notified = ack.summary.get("partners_notified")
        if isinstance(notified, list):
            partners += [{"partner_id": str(partner), "deletion_notice": "queued",
                          "reported_by": ack.service, "reported_at": _iso(ack.at)}
                         for partner in notified]
    return {
        "type": RECEIPT_TYPE, "version": RECEIPT_VERSION, "request_id": request.request_id,
        "subject": {"identifier_digests": list(request.identifier_digests),
                    "digest_scheme": DIGEST_SCHEME, "profile_ids": list(request.profile_ids)},
        "received_at": _iso(request.received_at), "completed_at": _iso(request.closed_at),
        "services": [{"service": ack.service, "status": ack.status,
                      "acknowledged_at": _iso(ack.at), "summary": ack.summary}
                     for ack in acks],
        "partners": sorted(partners, key=lambda p: p["partner_id"]),
        "issued_at": _iso(issued_at),
    }


def _iso(moment: datetime | None) -> str | None:
    return moment.isoformat().replace("+00:00", "Z") if moment else None
