from datetime import UTC, datetime, timedelta

import pytest

from services.common.shredding import identifier_digest
from services.consent.privacy import (
    COMPLETED,
    FANNED_OUT,
    OVERDUE,
    PARTIALLY_FAILED,
    RECEIVED,
    Ack,
    Identifier,
    InvalidAck,
    InvalidPrivacyRequest,
    NotRetryable,
    PrivacyRequest,
    access_export,
    parse_ack,
)
from services.consent.privacy_flow import (
    PrivacyFlow,
    SubjectDirectory,
    SubjectLookupFailed,
    retry_message,
)
from services.consent.privacy_store import PrivacyRequests

SERVICES = ("identity", "profile", "consent", "social", "export")
NOW = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
EMAIL = Identifier("email", "aino.virtanen@example.com")


def digest(type_, value):
    return identifier_digest(b"unit-test-digest-key", type_, value)


def erasure(**overrides) -> PrivacyRequest:
    arguments = dict(kind="erasure", profile_id=None, identifier=EMAIL, fields=None,
                     reason="ticket 4711, identity checked by phone", requested_by="key-dpo",
                     expected=SERVICES, deadline_days=30, now=NOW, digest=digest)
    return PrivacyRequest.new(**{**arguments, **overrides})


def ack(request, service, status="done", **extra) -> Ack:
    payload = {"request_id": request.request_id, "kind": request.kind, "service": service,
               "status": status, "summary": {"deleted": 1}, **extra}
    return parse_ack(payload, message_id=f"ack-{service}-{status}", at=NOW)


def test_a_new_request_is_received_with_a_one_month_deadline():
    request = erasure()
    assert request.state == RECEIVED
    assert request.deadline == NOW + timedelta(days=30)
    assert request.missing() == sorted(SERVICES)
    assert request.audit[0]["event"] == "received"


@pytest.mark.parametrize("received, deadline", [
    (datetime(2025, 1, 31, 9, 0, tzinfo=UTC), datetime(2025, 2, 28, 9, 0, tzinfo=UTC)),
    (datetime(2024, 1, 31, 9, 0, tzinfo=UTC), datetime(2024, 2, 29, 9, 0, tzinfo=UTC)),
    (datetime(2025, 2, 1, 9, 0, tzinfo=UTC), datetime(2025, 3, 1, 9, 0, tzinfo=UTC)),
    (datetime(2025, 12, 15, 9, 0, tzinfo=UTC), datetime(2026, 1, 14, 9, 0, tzinfo=UTC)),
])
def test_the_deadline_is_one_calendar_month_when_that_comes_before_the_configured_days(
        received, deadline):
    assert erasure(now=received).deadline == deadline  # 30 days unless the month is shorter


@pytest.mark.parametrize("overrides, message", [
    ({"kind": "forget"}, "kind must be one of"),
    ({"profile_id": "p-1"}, "either a profile_id or an identifier"),
    ({"identifier": None}, "either a profile_id or an identifier"),
    ({"kind": "rectification"}, "names the fields"),
    ({"fields": {"first_name": "Aino"}}, "only a rectification"),
])
def test_malformed_requests_are_refused_with_the_reason(overrides, message):
    with pytest.raises(InvalidPrivacyRequest, match=message):
        erasure(**overrides)


def test_every_ack_in_completes_the_request():
    request = erasure()
    request.mark_fanned_out(NOW)
    assert request.state == FANNED_OUT
    for service in SERVICES:
        assert request.state == FANNED_OUT
        assert request.record_ack(ack(request, service), NOW)
    assert request.state == COMPLETED
    assert request.closed_at == NOW


def test_a_repeated_ack_changes_nothing():
    request = erasure()
    request.mark_fanned_out(NOW)
    assert request.record_ack(ack(request, "profile"), NOW)
    audit_length = len(request.audit)
    assert not request.record_ack(ack(request, "profile"), NOW)
    assert len(request.audit) == audit_length


def test_a_failed_service_makes_the_request_partially_failed_until_it_succeeds():
    request = erasure()
    request.mark_fanned_out(NOW)
    for service in SERVICES:
        status = "failed" if service == "social" else "done"
        extra = {"error": "platform API down"} if status == "failed" else {}
        request.record_ack(ack(request, service, status, **extra), NOW)
    assert request.state == PARTIALLY_FAILED
    assert request.record_ack(ack(request, "social"), NOW)
    assert request.state == COMPLETED
    assert not request.record_ack(ack(request, "social", "failed", error="late"), NOW)


def test_a_missing_ack_keeps_the_request_open_and_names_the_service():
    request = erasure()
    request.mark_fanned_out(NOW)
    for service in SERVICES[:-1]:
        request.record_ack(ack(request, service), NOW)
    assert request.state == FANNED_OUT
    assert request.missing() == ["export"]
    assert request.state_at(NOW + timedelta(days=31)) == OVERDUE
    assert {"service": "export", "status": "missing"} in request.proof(NOW)["services"]


def test_an_ack_before_the_fan_out_was_recorded_counts_as_proof_of_it():
    request = erasure()
    request.record_ack(ack(request, "identity"), NOW)
    assert request.state == FANNED_OUT and request.fanned_out_at == NOW


def test_acks_for_another_request_or_kind_are_refused():
    request = erasure()
    with pytest.raises(InvalidAck, match="answers request"):
        request.record_ack(ack(erasure(), "profile"), NOW)
    with pytest.raises(InvalidAck, match="access request"):
        request.record_ack(parse_ack({"request_id": request.request_id, "kind": "access",
                                      "service": "profile", "status": "done"},
                                     message_id="m", at=NOW), NOW)


@pytest.mark.parametrize("payload, message", [
    ({"kind": "erasure", "service": "x", "status": "done"}, "request_id"),
    ({"request_id": "r", "kind": "delete", "service": "x", "status": "done"}, "kind"),
    ({"request_id": "r", "kind": "erasure", "service": "x", "status": "ok"}, "status"),
    ({"request_id": "r", "kind": "erasure", "service": "x", "status": "failed"}, "error"),
    ({"request_id": "r", "kind": "erasure", "status": "done"}, "service"),
])
def test_malformed_acks_are_refused(payload, message):
    with pytest.raises(InvalidAck, match=message):
        parse_ack(payload, message_id="m", at=NOW)


def test_the_proof_of_an_erasure_holds_no_identifier_in_the_clear():
    request = erasure()
    request.expand_subject(["p-1", "p-0"], [EMAIL, Identifier("phone", "+358401234567")],
                           NOW, digest, by="identity")
    request.mark_fanned_out(NOW)
    for service in SERVICES:
        request.record_ack(ack(request, service), NOW)
    request.forget_personal_data(NOW)
    text = str(request.proof(NOW)) + str(request.audit) + str(request.fan_out_payload())
    assert "aino" not in text and "358401234567" not in text
    proof = request.proof(NOW)
    assert {"type": "phone", "digest": digest("phone", "+358401234567")} in \
        proof["identifier_digests"]
    assert [s["status"] for s in proof["services"]] == ["done"] * 5
    assert proof["personal_data_forgotten"] and proof["profile_ids"] == ["p-0", "p-1"]


def test_the_fan_out_carries_the_expanded_subject_and_rectified_fields():
    request = erasure(kind="rectification", fields={"last_name": "Korhonen"})
    request.expand_subject(["p-1"], [Identifier("user_id", "LOY1")], NOW, digest,
                           by="identity")
    payload = request.fan_out_payload()
    assert payload["kind"] == "rectification" and payload["profile_ids"] == ["p-1"]
    assert {"type": "user_id", "value": "LOY1"} in payload["identifiers"]
    assert payload["fields"] == {"last_name": "Korhonen"}
    assert payload["requested_by"] == "key-dpo"


def test_an_access_export_combines_every_services_data():
    request = erasure(kind="access")
    request.mark_fanned_out(NOW)
    for service in SERVICES:
        request.record_ack(ack(request, service, data={"from": service}), NOW)
    export = access_export(request, {s: {"from": s} for s in SERVICES}, NOW)
    assert export["services"] == {s: {"from": s} for s in SERVICES}
    assert export["missing"] == []


def test_an_access_export_names_the_services_that_failed_to_collect_their_part():
    request = erasure(kind="access")
    request.mark_fanned_out(NOW)
    for service in SERVICES:
        if service == "social":
            request.record_ack(ack(request, service, "failed", error="store away"), NOW)
        else:
            request.record_ack(ack(request, service, data={"from": service}), NOW)
    export = access_export(request, {s: {"from": s} for s in SERVICES if s != "social"}, NOW)
    assert (export["missing"], export["failed"]) == ([], ["social"])


# --- the flow, over in-memory adapters -----------------------------------------------------


class InMemoryRequests(PrivacyRequests):
    def __init__(self):
        self.stored: dict[str, PrivacyRequest] = {}

    def add(self, request):
        self.stored[request.request_id] = request

    def get(self, request_id):
        return self.stored.get(request_id)

    def update(self, request_id, change):
        request = self.stored.get(request_id)
        if request is not None:
            change(request)
        return request

    def waiting(self, received_before, limit=100):
        return [r for r in self.stored.values()
                if r.state == RECEIVED and r.received_at < received_before]


class Graph(SubjectDirectory):
    def __init__(self, reachable=True):
        self.reachable = reachable

    def expand(self, profile_ids, identifiers):
        if not self.reachable:
            raise SubjectLookupFailed("identity API unreachable")
        return ["p-1", "p-merged"], [*identifiers, Identifier("twitter_handle", "aino")]


def test_a_request_waits_while_the_identity_graph_is_away_and_goes_out_once_it_answers():
    requests, graph = InMemoryRequests(), Graph(reachable=False)
    flow = PrivacyFlow(requests, graph, b"k" * 16)
    request = erasure()
    requests.add(request)
    sent = []
    flow.send_now(request.request_id, sent.extend)
    assert sent == [] and request.state == RECEIVED
    assert request.last_error == "identity API unreachable"
    graph.reachable = True
    flow.send_now(request.request_id, sent.extend)
    assert len(sent) == 1 and request.state == FANNED_OUT
    payload = sent[0].value.payload
    assert payload["profile_ids"] == ["p-1", "p-merged"]
    assert {"type": "twitter_handle", "value": "aino"} in payload["identifiers"]
    flow.send_now(request.request_id, sent.extend)
    assert len(sent) == 1  # already out


def test_a_broker_outage_leaves_the_request_for_the_relay_with_the_same_message_id():
    requests = InMemoryRequests()
    flow = PrivacyFlow(requests, Graph(), b"k" * 16)
    request = erasure()
    requests.add(request)

    def broker_down(messages):
        raise TimeoutError("no broker")

    flow.send_now(request.request_id, broker_down)
    assert request.state == RECEIVED and request.last_error == "broker unavailable"
    first = flow.ready_to_send(request.request_id, NOW)
    again = flow.ready_to_send(request.request_id, NOW)
    assert first.value.message_id == again.value.message_id
    assert first.key == request.request_id


def test_a_partially_failed_request_is_retried_for_the_services_without_a_done_ack():
    request = erasure()
    request.mark_fanned_out(NOW)
    for service in SERVICES:
        status = "failed" if service == "social" else "done"
        extra = {"error": "store down"} if status == "failed" else {}
        request.record_ack(ack(request, service, status, **extra), NOW)
    assert request.state == PARTIALLY_FAILED
    assert request.retry_targets(NOW) == ["social"]


def test_an_overdue_request_is_retried_for_the_missing_services():
    request = erasure()
    request.mark_fanned_out(NOW)
    request.record_ack(ack(request, "identity"), NOW)
    assert request.retry_targets(NOW + timedelta(days=31)) == [
        "consent", "export", "profile", "social"]


@pytest.mark.parametrize("prepare", [
    lambda r: None,  # received, not fanned out: the worker's relay sends it
    lambda r: r.mark_fanned_out(NOW),  # open, within its deadline
    lambda r: [r.mark_fanned_out(NOW)] + [r.record_ack(ack(r, s), NOW) for s in SERVICES],
])
def test_only_partially_failed_or_overdue_fanned_out_requests_are_retried(prepare):
    request = erasure()
    prepare(request)
    with pytest.raises(NotRetryable):
        request.retry_targets(NOW + timedelta(days=1))


def test_a_retry_is_audited_once_per_attempt_and_sent_under_its_own_message_id():
    request = erasure()
    request.mark_fanned_out(NOW)
    first = retry_message(request, 1, ["social"])
    assert request.record_retry(1, ["social"], first.value.message_id, "key-dpo", NOW)
    assert not request.record_retry(1, ["social"], first.value.message_id, "key-dpo", NOW)
    assert [e["event"] for e in request.audit].count("retried") == 1
    assert request.last_retry()["services"] == ["social"]
    second = retry_message(request, 2, ["social"])
    assert first.value.message_id != second.value.message_id
    assert first.value.message_id == retry_message(request, 1, ["social"]).value.message_id
    assert first.value.payload["retry"] == {"attempt": 1, "services": ["social"]}
    assert first.value.payload["identifiers"] == [EMAIL.as_dict()]
