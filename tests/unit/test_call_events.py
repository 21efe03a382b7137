"""Contact-centre call events turned into envelopes: which repeats are retries."""

from __future__ import annotations

from services.identity.channels import CallEventSchema, from_call

SCHEMA = CallEventSchema()


def call(event: str, **fields) -> str:
    loaded = SCHEMA.load({"call_id": "c-77", "event": event, "caller_number": "0401234567",
                          **fields})
    return from_call(loaded).envelope.message_id


def test_the_platforms_retry_of_a_call_step_is_the_same_message():
    assert call("offered", queue="sales") == call("offered", queue="sales")
    assert call("answered", queue="sales", agent_id="a-1") == call(
        "answered", queue="sales", agent_id="a-1")
    assert call("ended", agent_id="a-1") == call("ended", agent_id="a-2")  # one end per call


def test_a_transferred_call_offered_and_answered_again_is_a_step_of_its_own():
    assert call("offered", queue="sales") != call("offered", queue="billing")
    assert call("answered", queue="sales", agent_id="a-1") != call(
        "answered", queue="billing", agent_id="a-2")


def test_a_call_passed_back_to_its_first_agent_is_answered_anew_when_timed():
    first = call("answered", queue="sales", agent_id="a-1", timestamp="2026-12-07T10:00:00Z")
    back = call("answered", queue="sales", agent_id="a-1", timestamp="2026-12-07T10:07:00Z")
    assert first != back
