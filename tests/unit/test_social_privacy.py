"""Platform-driven deletion (Meta's signed_request, X's compliance events) and the social
service's own acknowledgements."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest

from services.common.envelope import derived_message_id, new_envelope
from services.social import privacy
from services.social.signatures import crc_response_token

FIXTURES = Path(__file__).parents[1] / "fixtures" / "social"


def test_meta_deletion_becomes_an_erasure_request_for_the_facebook_id():
    request = privacy.from_meta_signed_request(
        {"algorithm": "HMAC-SHA256", "issued_at": 1717405200, "user_id": "218471"}, "secret")
    assert request.filing() == {
        "kind": "erasure", "request_id": request.request_id,
        "subject": {"identifier": {"type": "facebook_id", "value": "218471"}},
        "reason": "platform:meta: " + request.reason}


def test_a_retried_callback_gives_the_same_request_and_code():
    body = {"algorithm": "HMAC-SHA256", "issued_at": 1717405200, "user_id": "218471"}
    first = privacy.from_meta_signed_request(body, "secret")
    again = privacy.from_meta_signed_request(dict(body), "secret")
    assert (first.request_id, first.confirmation_code) == (again.request_id,
                                                           again.confirmation_code)
    assert first.filing() == again.filing()
    other_secret = privacy.from_meta_signed_request(body, "another")
    assert other_secret.confirmation_code != first.confirmation_code


def test_meta_deletion_without_a_user_id_is_invalid():
    with pytest.raises(privacy.InvalidDeletion):
        privacy.from_meta_signed_request({"algorithm": "HMAC-SHA256"}, "secret")


def test_x_delete_protect_and_suspend_erase_and_the_rest_are_ignored():
    events = json.loads((FIXTURES / "x_user_compliance_events.json").read_text())
    requests = [privacy.from_x_compliance_event(e, "secret") for e in events]
    erasing = [r for r in requests if r is not None]
    assert [r.reason for r in erasing] == ["X user_delete", "X user_protect", "X user_suspend"]
    assert [r.identifiers for r in erasing] == [
        (("twitter_id", "6253282"),), (("twitter_id", "99887766"),),
        (("twitter_id", "31313131"),)]
    assert requests[3:] == [None, None]


@pytest.mark.parametrize("event", [{}, {"data": {}}, {"data": {"user_delete": {}}},
                                   {"data": {"user_delete": {"user": {"id": "abc"}}}}, "x",
                                   {"data": {"user_delete": {"user": "123"}}},
                                   {"data": {"user_delete": {"user": ["123"]}}}])
def test_something_else_than_a_compliance_event_is_invalid(event):
    with pytest.raises(privacy.InvalidDeletion):
        privacy.from_x_compliance_event(event, "secret")


@pytest.mark.parametrize("kind", privacy.KINDS)
def test_every_request_is_acknowledged_as_done_with_nothing_held(kind):
    request_envelope = new_envelope("Erasure Requested", "system", payload={
        "request_id": "r-1", "kind": kind, "profile_ids": ["p-1"], "identifiers": []})
    request = privacy.parse_request(request_envelope)
    ack = privacy.acknowledgement(request_envelope, request)
    assert ack.type == "Privacy Request Acknowledged"
    assert ack.message_id == derived_message_id(request_envelope.message_id,
                                                "privacy-ack-social")
    assert ack.payload["service"] == "social" and ack.payload["status"] == "done"
    assert ack.payload["summary"]["erased"] == 0
    assert ("data" in ack.payload) == (kind == "access")


def test_a_request_without_id_or_kind_is_refused():
    for payload in ({"kind": "erasure"}, {"request_id": "r", "kind": "forget"}):
        with pytest.raises(ValueError):
            privacy.parse_request(new_envelope("X", "system", payload=payload))


def test_no_crc_answer_reveals_a_deletions_confirmation_code():
    secret = "x-consumer-secret"
    deletion = privacy.from_x_compliance_event(
        {"data": {"user_delete": {"user": {"id": "2244994945"},
                                  "event_at": "2026-11-01T10:00:00.000Z"}}}, secret)
    answer = crc_response_token(secret, deletion.request_id).removeprefix("sha256=")

    assert base64.b64decode(answer).hex()[:24] != deletion.confirmation_code
