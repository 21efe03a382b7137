"""Live dashboard fan-out without Kafka: which open stream hears of which change or call."""

from __future__ import annotations

import pytest

from services.common.envelope import new_envelope
from services.profile.dashboard.live import (
    CLOSED,
    RESYNC,
    HubFull,
    Interest,
    StreamHub,
    notices_for,
    server_sent_event,
)


def profile_changed(profile_id: str, kind: str = "event_applied", **payload):
    envelope = new_envelope("Profile Changed", "system", payload={
        "kind": kind, "cause_message_id": "m1", "event_type": "Order Completed",
        "channel": "web", "profile": {"traits": {"first_name": "Aino"}}, **payload})
    return envelope.resolved_to(profile_id)


def call(type_: str, profile_id: str = "p-caller", **payload):
    envelope = new_envelope(type_, "phone", payload={
        "call_id": "c1", "caller_number": "+358401234567", **payload})
    return envelope.resolved_to(profile_id)


def test_a_profile_change_reaches_only_the_streams_showing_that_profile():
    hub = StreamHub(capacity=10)
    watching = hub.subscribe(Interest(profile_id="p1"))
    other = hub.subscribe(Interest(profile_id="p2"))

    assert hub.deliver(profile_changed("p1")) == 1

    notice = watching.next(timeout=0)
    assert notice.event == "profile-changed"
    assert notice.data["profile_id"] == "p1" and notice.data["kind"] == "event_applied"
    assert other.next(timeout=0) is None


def test_change_notices_carry_no_profile_data():
    [(_, notice)] = notices_for(profile_changed("p1"))
    assert set(notice.data) == {"profile_id", "kind", "event_type", "channel", "merged_into"}
    assert b"Aino" not in server_sent_event(notice)


def test_a_merged_away_profile_tells_its_watchers_where_it_went():
    [(key, notice)] = notices_for(profile_changed("p-old", "merged_away", profile=None,
                                                  merged_into="p-survivor"))
    assert key == ("profile", "p-old")
    assert notice.data["merged_into"] == "p-survivor"


@pytest.mark.parametrize("type_", ["Call Started", "Call Answered"])
def test_a_call_for_the_agents_extension_pops_the_callers_profile(type_):
    hub = StreamHub(capacity=10)
    agent = hub.subscribe(Interest(extension="2042"))
    hub.deliver(call(type_, extension="2042", queue="orders"))

    pop = agent.next(timeout=0)
    assert pop.event == "screen-pop"
    assert pop.data["profile_id"] == "p-caller" and pop.data["type"] == type_


def test_screen_pops_match_agent_id_extension_or_queue_and_nothing_else():
    hub = StreamHub(capacity=10)
    by_agent = hub.subscribe(Interest(agent_id="a-7"))
    by_queue = hub.subscribe(Interest(queue="orders"))
    elsewhere = hub.subscribe(Interest(extension="9999", queue="billing"))

    hub.deliver(call("Call Answered", agent_id="a-7", extension="2042", queue="orders"))

    assert by_agent.next(timeout=0).event == "screen-pop"
    assert by_queue.next(timeout=0).event == "screen-pop"
    assert elsewhere.next(timeout=0) is None


def test_an_extension_sent_as_a_number_still_matches():
    hub = StreamHub(capacity=10)
    agent = hub.subscribe(Interest(extension="2042"))
    hub.deliver(call("Call Started", extension=2042))
    assert agent.next(timeout=0).event == "screen-pop"


def test_a_call_that_ended_or_was_not_resolved_pops_nothing():
    assert notices_for(call("Call Ended", extension="2042")) == []
    unresolved = new_envelope("Call Started", "phone", payload={"extension": "2042"})
    assert notices_for(unresolved) == []


def test_a_stream_matching_on_several_keys_hears_each_message_once():
    hub = StreamHub(capacity=10)
    agent = hub.subscribe(Interest(profile_id="p-caller", agent_id="a-7", extension="2042"))
    assert hub.deliver(call("Call Started", agent_id="a-7", extension="2042")) == 1
    assert agent.next(timeout=0).event == "screen-pop"
    assert agent.next(timeout=0) is None


def test_a_stream_that_falls_behind_gets_one_resync_instead_of_a_backlog():
    hub = StreamHub(capacity=10, queue_size=3)
    slow = hub.subscribe(Interest(profile_id="p1"))
    for _ in range(10):
        hub.deliver(profile_changed("p1"))

    assert slow.next(timeout=0) is RESYNC
    assert slow.next(timeout=0) is None
    hub.deliver(profile_changed("p1"))
    assert slow.next(timeout=0).event == "profile-changed"


def test_the_hub_refuses_streams_beyond_its_capacity_and_frees_a_slot_on_unsubscribe():
    hub = StreamHub(capacity=2)
    first = hub.subscribe(Interest(profile_id="p1"))
    hub.subscribe(Interest(extension="2042", queue="orders"))
    with pytest.raises(HubFull):
        hub.subscribe(Interest(profile_id="p3"))

    hub.unsubscribe(first)
    hub.unsubscribe(first)  # twice is harmless
    assert hub.active == 1
    hub.subscribe(Interest(profile_id="p3"))


def test_an_unsubscribed_stream_hears_nothing_more():
    hub = StreamHub(capacity=2)
    gone = hub.subscribe(Interest(profile_id="p1", extension="2042"))
    hub.unsubscribe(gone)
    assert hub.deliver(profile_changed("p1")) == 0
    assert hub.deliver(call("Call Started", extension="2042")) == 0


def test_an_interest_in_nothing_is_refused():
    with pytest.raises(ValueError):
        StreamHub(capacity=2).subscribe(Interest())


def test_a_notice_is_written_as_one_server_sent_event():
    [(_, notice)] = notices_for(profile_changed("p1"))
    text = server_sent_event(notice).decode()
    assert text.startswith("event: profile-changed\nid: ")
    assert text.endswith("\n\n") and text.count("\ndata: ") == 1


def test_a_new_stream_of_the_same_tab_closes_the_previous_one_and_frees_its_slot():
    hub = StreamHub(capacity=1)
    before = hub.subscribe(Interest(profile_id="p1"), owner=("key-1", "tab-a"))
    after = hub.subscribe(Interest(profile_id="p2"), owner=("key-1", "tab-a"))

    assert before.next(timeout=0) is CLOSED
    assert hub.active == 1
    hub.deliver(profile_changed("p1"))
    hub.deliver(profile_changed("p2"))
    assert after.next(timeout=0).data["profile_id"] == "p2"
    hub.unsubscribe(before)  # the old stream's own clean-up must not remove the new one
    assert hub.active == 1


def test_streams_of_other_tabs_are_left_alone():
    hub = StreamHub(capacity=2)
    first = hub.subscribe(Interest(profile_id="p1"), owner=("key-1", "tab-a"))
    hub.subscribe(Interest(profile_id="p1"), owner=("key-1", "tab-b"))
    assert hub.deliver(profile_changed("p1")) == 2
    assert first.next(timeout=0).event == "profile-changed"
