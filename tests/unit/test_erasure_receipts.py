"""Signed erasure receipts: what they hold (no personal data), that they verify with the
published public key, and that any alteration, or another key, is detected; the offline
verify command."""

import base64
import copy
import hashlib
import json
from datetime import UTC, datetime, timedelta

import pytest

from services.common.shredding import identifier_digest
from services.consent.privacy import Identifier, PrivacyRequest, parse_ack
from services.consent.privacy_receipts import NoReceipt, erasure_receipt_body
from services.consent.receipts import ReceiptSigner, main, verify

SERVICES = ("consent", "export", "identity", "profile", "social")
NOW = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
EMAIL = Identifier("email", "aino.virtanen@example.com")
DIGEST_KEY = b"unit-test-digest-key"
SIGNER = ReceiptSigner.from_setting(base64.b64encode(hashlib.sha256(b"unit").digest()).decode())
OTHER_SIGNER = ReceiptSigner.from_setting(
    base64.b64encode(hashlib.sha256(b"other").digest()).decode())


def erasure(acknowledged=SERVICES, status="done") -> PrivacyRequest:
    request = PrivacyRequest.new(
        kind="erasure", profile_id=None, identifier=EMAIL, fields=None, reason="ticket 4711",
        requested_by="key-dpo", expected=SERVICES, deadline_days=30, now=NOW,
        digest=lambda t, v: identifier_digest(DIGEST_KEY, t, v))
    request.expand_subject(["profile-1"], [EMAIL, Identifier("phone", "+358401234567")], NOW,
                           lambda t, v: identifier_digest(DIGEST_KEY, t, v), by="identity")
    for minutes, service in enumerate(acknowledged, start=1):
        summary = {"deleted": 1}
        if service == "export":
            summary = {"deletion_notices_queued": 2, "partners_notified": ["lehti", "kauppa"]}
        payload = {"request_id": request.request_id, "kind": "erasure", "service": service,
                   "status": status, "summary": summary}
        if status == "failed":
            payload["error"] = "store down"
        at = NOW + timedelta(minutes=minutes)
        request.record_ack(parse_ack(payload, message_id=f"ack-{service}", at=at), at)
    request.forget_personal_data(NOW + timedelta(minutes=10))
    return request


def signed_receipt() -> dict:
    return SIGNER.sign_document(erasure_receipt_body(erasure(), NOW + timedelta(minutes=10)))


def test_a_completed_erasure_receipt_lists_every_service_ack_and_the_notified_partners():
    receipt = signed_receipt()
    assert receipt["type"] == "erasure_receipt"
    assert [s["service"] for s in receipt["services"]] == list(SERVICES)
    assert all(s["status"] == "done" and s["acknowledged_at"] for s in receipt["services"])
    assert [p["partner_id"] for p in receipt["partners"]] == ["kauppa", "lehti"]
    assert {p["reported_by"] for p in receipt["partners"]} == {"export"}
    assert receipt["completed_at"] == "2025-03-01T12:05:00Z"
    assert receipt["key_id"] == SIGNER.key_id and receipt["algorithm"] == "Ed25519"


def test_the_receipt_names_the_subject_only_by_keyed_digests():
    receipt = signed_receipt()
    text = json.dumps(receipt)
    assert "aino" not in text and "358401234567" not in text
    digests = {d["digest"] for d in receipt["subject"]["identifier_digests"]}
    assert identifier_digest(DIGEST_KEY, "email", EMAIL.value) in digests
    assert len(digests) == 2


def test_the_receipt_verifies_with_the_published_public_key():
    assert verify(signed_receipt(), SIGNER.public_key_bytes)


@pytest.mark.parametrize("tamper", [
    lambda r: r["services"][0].update(status="failed"),
    lambda r: r["services"].pop(),
    lambda r: r["partners"].pop(),
    lambda r: r.update(completed_at="2025-02-01T00:00:00Z"),
    lambda r: r["subject"]["identifier_digests"][0].update(digest="0" * 64),
    lambda r: r.update(extra="added"),
    lambda r: r.update(signature=r["signature"][:-4] + "AAA="),
    lambda r: r.pop("signature"),
])
def test_any_alteration_of_the_receipt_is_detected(tamper):
    receipt = copy.deepcopy(signed_receipt())
    tamper(receipt)
    assert not verify(receipt, SIGNER.public_key_bytes)


def test_a_receipt_does_not_verify_with_another_platforms_key():
    assert not verify(signed_receipt(), OTHER_SIGNER.public_key_bytes)


@pytest.mark.parametrize("request_factory, message", [
    (lambda: erasure(acknowledged=SERVICES[:3]), "fanned_out, not completed"),
    (lambda: erasure(status="failed"), "partially_failed, not completed"),
])
def test_only_a_completed_erasure_gets_a_receipt(request_factory, message):
    with pytest.raises(NoReceipt, match=message):
        erasure_receipt_body(request_factory(), NOW)


def test_the_first_receipt_issued_stands():
    request = erasure()
    first = SIGNER.sign_document(erasure_receipt_body(request, NOW))
    assert request.record_receipt(first, NOW)
    assert not request.record_receipt(SIGNER.sign_document({"other": 1}), NOW)
    assert request.receipt == first
    assert request.audit[-1]["event"] == "receipt_issued"


def test_the_verify_command_exits_0_for_a_valid_receipt_and_1_for_an_altered_one(
        tmp_path, capsys):
    receipt = signed_receipt()
    key_file = tmp_path / "key.json"
    key_file.write_text(json.dumps(SIGNER.public_key()))
    good = tmp_path / "receipt.json"
    good.write_text(json.dumps(receipt))
    assert main([str(good), "--public-key", str(key_file)]) == 0
    assert main([str(good), "--public-key", SIGNER.public_key()["public_key"]]) == 0
    altered = tmp_path / "altered.json"
    altered.write_text(json.dumps({**receipt, "request_id": "another"}))
    assert main([str(altered), "--public-key", str(key_file)]) == 1
    assert "INVALID" in capsys.readouterr().out


@pytest.mark.parametrize("receipt_text, key", [
    ("not json", None),
    ("{}", "too-short"),
])
def test_the_verify_command_exits_2_on_unusable_input(tmp_path, receipt_text, key):
    path = tmp_path / "receipt.json"
    path.write_text(receipt_text)
    assert main([str(path), "--public-key", key or SIGNER.public_key()["public_key"]]) == 2
