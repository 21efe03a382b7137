"""Proofs that a request comes from Meta or X: webhook signatures, handshakes and Meta's
``signed_request``. Pure functions over bytes and strings; every comparison is constant-time.

* Meta signs each webhook delivery with ``X-Hub-Signature-256: sha256=<hex HMAC-SHA256 of the
  raw body, keyed with the app secret>``; the GET handshake echoes ``hub.challenge`` when
  ``hub.verify_token`` is the one entered in the app's settings.
* X signs each Account Activity delivery with ``x-twitter-webhooks-signature: sha256=<base64
  HMAC-SHA256 of the raw body, keyed with the consumer secret>``; its CRC check asks for the
  same HMAC over a ``crc_token``.
* Meta's data-deletion callback posts ``signed_request = <base64url signature>.<base64url JSON
  payload>``, the signature an HMAC-SHA256 of the encoded payload with the app secret.

Written by hand: these are a few lines over the standard library's ``hmac``, and the platforms'
SDKs that implement them are whole API clients.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
from typing import Any

import orjson

__all__ = [
    "InvalidSignature",
    "MissingSignature",
    "crc_response_token",
    "meta_signature",
    "parse_signed_request",
    "verify_meta_challenge",
    "verify_meta_signature",
    "verify_x_signature",
    "x_signature",
]

# X's CRC tokens are short random strings. Refusing anything else (notably "{", which starts
# every webhook body) keeps the CRC endpoint from signing a forged delivery for an attacker.
_CRC_TOKEN_RE = re.compile(r"[A-Za-z0-9_\-+/=.]{1,256}")


class MissingSignature(ValueError):
    """The request carries no signature (or no secret is configured to check one)."""


class InvalidSignature(ValueError):
    """The signature is malformed or does not match the body."""


def _hmac_sha256(secret: str, data: bytes) -> bytes:
    return hmac.new(secret.encode(), data, hashlib.sha256).digest()


def meta_signature(app_secret: str, body: bytes) -> str:
    """The ``X-Hub-Signature-256`` value Meta sends with ``body``."""
    return "sha256=" + _hmac_sha256(app_secret, body).hex()


def verify_meta_signature(app_secret: str, body: bytes, header: str | None) -> None:
    """Raise MissingSignature or InvalidSignature unless ``header`` signs ``body``."""
    if not header:
        raise MissingSignature("X-Hub-Signature-256 is missing")
    if not app_secret:
        raise MissingSignature("no Meta app secret is configured")
    if not hmac.compare_digest(header.strip().lower().encode(),
                               meta_signature(app_secret, body).encode()):
        raise InvalidSignature("X-Hub-Signature-256 does not match the body")


def verify_meta_challenge(verify_token: str, mode: str | None, token: str | None) -> bool:
    """True when Meta's GET handshake presents the configured verify token."""
    if not verify_token or mode != "subscribe" or token is None:
        return False
    return hmac.compare_digest(token.encode(), verify_token.encode())


def x_signature(consumer_secret: str, data: bytes) -> str:
    """``sha256=`` + base64 HMAC-SHA256: X's webhook signature and CRC response format."""
    return "sha256=" + base64.b64encode(_hmac_sha256(consumer_secret, data)).decode()


def crc_response_token(consumer_secret: str, crc_token: str) -> str:
    """The ``response_token`` answering X's CRC check. Raises ValueError for a token that does
    not look like one of X's (see ``_CRC_TOKEN_RE``) or when no secret is configured."""
    if not consumer_secret:
        raise MissingSignature("no X consumer secret is configured")
    if not _CRC_TOKEN_RE.fullmatch(crc_token or ""):
        raise ValueError("crc_token must be 1-256 letters, digits or -_+/=.")
    return x_signature(consumer_secret, crc_token.encode())


def verify_x_signature(consumer_secret: str, body: bytes, header: str | None) -> None:
    """Raise MissingSignature or InvalidSignature unless ``header`` signs ``body``."""
    if not header:
        raise MissingSignature("x-twitter-webhooks-signature is missing")
    if not consumer_secret:
        raise MissingSignature("no X consumer secret is configured")
    if not hmac.compare_digest(header.strip().encode(),
                               x_signature(consumer_secret, body).encode()):
        raise InvalidSignature("x-twitter-webhooks-signature does not match the body")


def _b64url_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def parse_signed_request(app_secret: str, signed_request: str | None) -> dict[str, Any]:
    """The verified payload of Meta's ``signed_request``.

    Raises MissingSignature (absent, or no secret configured) or InvalidSignature (malformed,
    another algorithm, or a signature that does not match)."""
    if not signed_request:
        raise MissingSignature("signed_request is missing")
    if not app_secret:
        raise MissingSignature("no Meta app secret is configured")
    encoded_signature, dot, encoded_payload = signed_request.strip().partition(".")
    if not dot or not encoded_signature or not encoded_payload:
        raise InvalidSignature("signed_request must be <signature>.<payload>")
    try:
        signature = _b64url_decode(encoded_signature)
        payload = orjson.loads(_b64url_decode(encoded_payload))
    except (binascii.Error, ValueError):
        raise InvalidSignature("signed_request is not base64url-encoded JSON") from None
    expected = _hmac_sha256(app_secret, encoded_payload.encode())
    if not hmac.compare_digest(signature, expected):
        raise InvalidSignature("signed_request signature does not match")
    if not isinstance(payload, dict) or str(payload.get("algorithm", "")).upper() != "HMAC-SHA256":
        raise InvalidSignature("signed_request must be signed with HMAC-SHA256")
    return payload


def sign_request(app_secret: str, payload: dict[str, Any]) -> str:
    """A ``signed_request`` as Meta builds it (for tests and local tools)."""
    encoded = base64.urlsafe_b64encode(orjson.dumps(payload)).rstrip(b"=").decode()
    signature = base64.urlsafe_b64encode(_hmac_sha256(app_secret, encoded.encode()))
    return signature.rstrip(b"=").decode() + "." + encoded
