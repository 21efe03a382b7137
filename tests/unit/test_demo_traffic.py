"""The demo traffic of `make run` tells consistent customer stories."""

import random

from faker import Faker

from deploy.local.demo import customer_story


def stories(count: int = 30):
    fake, rng = Faker("fi_FI"), random.Random(7)
    Faker.seed(7)
    return [customer_story(fake, rng, index) for index in range(count)]


def test_a_demo_call_keeps_one_queue_and_one_agent_from_offer_to_hang_up():
    calls = [call for _, call_events in stories() for call in call_events]
    assert calls, "the demo makes some calls"
    by_call: dict[str, set] = {}
    for call in calls:
        by_call.setdefault(call["call_id"], set()).add((call["queue"], call["agent_id"]))
    assert all(len(seen) == 1 for seen in by_call.values())


def test_the_same_seed_gives_the_same_message_ids_so_a_rerun_is_not_applied_twice():
    first = [m["messageId"] for messages, _ in stories(5) for m in messages]
    again = [m["messageId"] for messages, _ in stories(5) for m in messages]
    assert first == again and len(set(first)) == len(first)
