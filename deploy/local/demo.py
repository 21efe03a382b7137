"""Demo traffic for `make run`: Finnish customers browsing, registering, buying and calling,
sent through the public APIs exactly as real collectors would. The same seed gives the same
events (same messageIds), so repeated runs do not pile up duplicates.

    python -m deploy.local.demo [--customers N] [--url http://127.0.0.1:8101] [--key KEY]
"""

from __future__ import annotations

import argparse
import random
import sys
import uuid
from datetime import UTC, datetime, timedelta

import requests
from faker import Faker

PRODUCT_GROUPS = ["shoes", "outdoor", "kitchen", "toys", "books", "electronics"]


def customer_story(fake: Faker, rng: random.Random, index: int) -> tuple[list[dict], list[dict]]:
    """One customer's Segment messages and contact-centre calls."""
    now = datetime.now(UTC).replace(hour=12, minute=0, second=0, microsecond=0)
    cookie = str(uuid.UUID(int=rng.getrandbits(128)))
    loyalty = f"LOY{100000 + index}"
    phone = f"040{rng.randint(1000000, 9999999)}"
    first, last = fake.first_name(), fake.last_name()
    email = f"{first}.{last}{index}@example.fi".lower()
    messages = []
    visit = now - timedelta(days=rng.randint(1, 60))
    for page in range(rng.randint(2, 5)):
        group = rng.choice(PRODUCT_GROUPS)
        messages.append({"type": "page", "anonymousId": cookie, "name": group.title(),
                         "properties": {"url": f"https://shop.example.fi/{group}"},
                         "timestamp": (visit + timedelta(minutes=page)).isoformat()})
    messages.append({"type": "identify", "userId": loyalty, "anonymousId": cookie,
                     "traits": {"email": email, "phone": f"+358 {phone[1:3]} {phone[3:]}",
                                "firstName": first, "lastName": last,
                                "address": {"street": fake.street_address(),
                                            "postalCode": fake.postcode(), "city": fake.city()},
                                "language": rng.choice(["fi", "fi", "sv", "en"]),
                                **({"twitter": _handle(index)} if index % 3 == 0 else {})},
                     "timestamp": (visit + timedelta(minutes=10)).isoformat()})
    messages.append({"type": "alias", "userId": loyalty, "previousId": cookie})
    for _ in range(rng.randint(0, 3)):
        total = round(rng.uniform(9, 250), 2)
        messages.append({"type": "track", "userId": loyalty, "event": "Order Completed",
                         "properties": {"order_id": str(rng.randint(10000, 99999)),
                                        "total": total, "currency": "EUR",
                                        "products": [{"category": rng.choice(PRODUCT_GROUPS),
                                                      "price": total, "quantity": 1}]},
                         "timestamp": (now - timedelta(days=rng.randint(0, 90))).isoformat()})
    calls = []
    if rng.random() < 0.4:
        call_id = str(uuid.UUID(int=rng.getrandbits(128)))
        # one call is one queue and one agent from offer to hang-up
        queue, agent = rng.choice(["billing", "orders", "loyalty"]), f"agent-{rng.randint(1, 9)}"
        for event in ("offered", "answered", "ended"):
            calls.append({"call_id": call_id, "event": event, "caller_number": phone,
                          "queue": queue, "agent_id": agent,
                          **({"talk_seconds": rng.randint(30, 600), "disposition": "resolved",
                              "notes": "asked where order is"} if event == "ended" else {})})
    # ids derived from the seed: running the demo again re-sends the same events, which
    # Muisti recognises by messageId and applies once
    for number, message in enumerate(messages):
        message["messageId"] = f"demo-{index}-{number}"
    return messages, calls


POSTS = [
    "@muisti_shop tilaukseni ei ole vieläkään tullut, todella huono palvelu",
    "@muisti_shop kiitos nopeasta toimituksesta, kengät ovat upeat!",
    "@muisti_shop my order arrived broken and nobody answers the phone",
    "@muisti_shop tack för hjälpen i butiken igår",
]


def _handle(index: int) -> str:
    return f"asiakas_{index}"


def social_post(index: int) -> dict | None:
    """A post on X from every third customer (their handle is in their web profile)."""
    if index % 3:
        return None
    return {"platform": "x", "message_id": f"demo-post-{index}", "kind": "mention",
            "author": {"id": str(900000 + index), "handle": _handle(index)},
            "text": POSTS[(index // 3) % len(POSTS)],
            "identifiers": {"twitter_handle": _handle(index)}}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m deploy.local.demo")
    parser.add_argument("--customers", type=int, default=40)
    parser.add_argument("--url", default="http://127.0.0.1:8101")
    parser.add_argument("--social-url", default="http://127.0.0.1:8104")
    parser.add_argument("--key", required=True, help="a collector key")
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args(argv)
    fake, rng = Faker("fi_FI"), random.Random(args.seed)
    Faker.seed(args.seed)
    auth = (args.key, "")
    sent = calls = posts = 0
    for index in range(args.customers):
        messages, call_events = customer_story(fake, rng, index)
        response = requests.post(f"{args.url}/v1/batch", json={"batch": messages}, auth=auth,
                                 timeout=30)
        response.raise_for_status()
        sent += response.json()["accepted"]
        for call in call_events:
            requests.post(f"{args.url}/v1/calls", json=call, auth=auth,
                          timeout=30).raise_for_status()
            calls += 1
        post = social_post(index)
        if post:
            requests.post(f"{args.social_url}/v1/social/posts", json=post, auth=auth,
                          timeout=30).raise_for_status()
            posts += 1
    print(f"demo traffic: {args.customers} customers, {sent} web events, {calls} call events, "
          f"{posts} social posts")
    return 0


if __name__ == "__main__":
    sys.exit(main())
