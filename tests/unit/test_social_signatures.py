"""Meta and X request proofs: signatures valid, tampered and missing; handshakes; CRC;
Meta's signed_request."""

from __future__ import annotations

import base64
import hashlib
import hmac

import pytest

from services.social import signatures as sig

SECRET = "meta-app-secret-for-tests"
BODY = b'{"object":"page","entry":[]}'


def test_meta_signature_is_hex_hmac_sha256_of_the_raw_body():
    expected = "sha256=" + hmac.new(SECRET.encode(), BODY, hashlib.sha256).hexdigest()
    assert sig.meta_signature(SECRET, BODY) == expected
    sig.verify_meta_signature(SECRET, BODY, expected)
    sig.verify_meta_signature(SECRET, BODY, expected.upper().replace("SHA256=", "sha256="))


def test_meta_signature_of_a_tampered_body_is_refused():
    header = sig.meta_signature(SECRET, BODY)
    with pytest.raises(sig.InvalidSignature):
        sig.verify_meta_signature(SECRET, BODY.replace(b"page", b"user"), header)
    with pytest.raises(sig.InvalidSignature):
        sig.verify_meta_signature("another-secret", BODY, header)
    with pytest.raises(sig.InvalidSignature):
        sig.verify_meta_signature(SECRET, BODY, "sha1=" + "0" * 40)


@pytest.mark.parametrize("header", [None, ""])
def test_missing_meta_signature_is_refused(header):
    with pytest.raises(sig.MissingSignature):
        sig.verify_meta_signature(SECRET, BODY, header)


def test_without_a_configured_secret_nothing_verifies():
    with pytest.raises(sig.MissingSignature):
        sig.verify_meta_signature("", BODY, sig.meta_signature("", BODY))
    with pytest.raises(sig.MissingSignature):
        sig.verify_x_signature("", BODY, sig.x_signature("", BODY))


def test_meta_handshake_needs_subscribe_mode_and_the_configured_token():
    assert sig.verify_meta_challenge("tok", "subscribe", "tok")
    assert not sig.verify_meta_challenge("tok", "subscribe", "other")
    assert not sig.verify_meta_challenge("tok", "unsubscribe", "tok")
    assert not sig.verify_meta_challenge("tok", "subscribe", None)
    assert not sig.verify_meta_challenge("", "subscribe", "")


def test_x_crc_response_is_base64_hmac_sha256_of_the_token():
    # the worked example from X's Account Activity documentation style: compute independently
    digest = hmac.new(b"consumer-secret", b"abc123", hashlib.sha256).digest()
    expected = "sha256=" + base64.b64encode(digest).decode()
    assert sig.crc_response_token("consumer-secret", "abc123") == expected


@pytest.mark.parametrize("token", ["", "{\"for_user_id\":\"1\"}", "a b", "x" * 257])
def test_crc_refuses_tokens_that_are_not_xs_so_it_cannot_sign_a_forged_delivery(token):
    with pytest.raises(ValueError):
        sig.crc_response_token("consumer-secret", token)


def test_x_delivery_signature_valid_tampered_and_missing():
    header = sig.x_signature("consumer-secret", BODY)
    sig.verify_x_signature("consumer-secret", BODY, header)
    with pytest.raises(sig.InvalidSignature):
        sig.verify_x_signature("consumer-secret", BODY + b" ", header)
    with pytest.raises(sig.MissingSignature):
        sig.verify_x_signature("consumer-secret", BODY, None)


def test_signed_request_round_trips_and_rejects_tampering():
    payload = {"algorithm": "HMAC-SHA256", "expires": 1291840400, "issued_at": 1291836800,
               "user_id": "218471"}
    signed = sig.sign_request(SECRET, payload)
    assert sig.parse_signed_request(SECRET, signed) == payload
    signature, _, encoded = signed.partition(".")
    forged = sig.sign_request(SECRET, {**payload, "user_id": "1"}).partition(".")[2]
    with pytest.raises(sig.InvalidSignature):
        sig.parse_signed_request(SECRET, f"{signature}.{forged}")
    with pytest.raises(sig.InvalidSignature):
        sig.parse_signed_request("other-secret", signed)


def test_signed_request_matches_metas_documented_construction():
    # Meta's PHP sample: hash_hmac('sha256', $payload, $secret, true) over the encoded payload
    encoded = base64.urlsafe_b64encode(
        b'{"algorithm":"HMAC-SHA256","issued_at":1,"user_id":"42"}').rstrip(b"=")
    raw = hmac.new(SECRET.encode(), encoded, hashlib.sha256).digest()
    signed = base64.urlsafe_b64encode(raw).rstrip(b"=").decode() + "." + encoded.decode()
    assert sig.parse_signed_request(SECRET, signed)["user_id"] == "42"


@pytest.mark.parametrize("signed", ["nodot", ".abc", "abc.", "!!!.???", "YWJj.bm90IGpzb24"])
def test_malformed_signed_request_is_invalid(signed):
    with pytest.raises(sig.InvalidSignature):
        sig.parse_signed_request(SECRET, signed)


def test_signed_request_with_another_algorithm_is_invalid():
    with pytest.raises(sig.InvalidSignature):
        sig.parse_signed_request(SECRET, sig.sign_request(SECRET, {"algorithm": "none",
                                                                   "user_id": "1"}))


def test_missing_signed_request_is_missing():
    with pytest.raises(sig.MissingSignature):
        sig.parse_signed_request(SECRET, None)
