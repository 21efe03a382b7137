"""Load and bookkeeping for the fault tests (tests/e2e/test_faults.py).

``Load`` drives paced purchases through the identity API's Segment batch endpoint, as returning
customers, and mentions through the social API's X webhook, while a third thread reads from
the other APIs; every HTTP answer is kept in a ``StatusLog``. A call answered 503 or lost to a
connection error was not accepted; like the Segment SDKs (and X, for a webhook delivery), the
load retries it with the same ids, so an event some failed call did get onto Kafka is
deduplicated, and in the end each event is accepted exactly once.
"""

from __future__ import annotations

import random
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import requests
from kafka import KafkaAdminClient, KafkaConsumer, TopicPartition
from kafka.errors import KafkaError

from services.common.config import Settings

CONNECTION_ERROR = 0  # the status recorded for a call that got no HTTP answer


@dataclass(frozen=True)
class Answer:
    kind: str  # what was called, e.g. "identity batch"
    status: int  # CONNECTION_ERROR when no answer came
    started: float  # time.monotonic()
    ended: float


@dataclass
class Outage:
    """A dependency stopped at ``started`` and answering again from ``ended``."""

    what: str
    started: float
    ended: float | None = None


class StatusLog:
    """Every HTTP answer the load got, and the outages the test caused."""

    def __init__(self):
        self.answers: list[Answer] = []
        self.outages: list[Outage] = []
        self._lock = threading.Lock()

    def record(self, kind: str, status: int, started: float) -> None:
        with self._lock:
            self.answers.append(Answer(kind, status, started, time.monotonic()))

    def outage(self, what: str) -> Outage:
        outage = Outage(what, time.monotonic())
        self.outages.append(outage)
        return outage

    def counts(self) -> Counter:
        with self._lock:
            return Counter((a.kind, a.status) for a in self.answers)

    def unexplained_failures(self) -> list[Answer]:
        """Answers that break the rule: any 5xx but 503, and any 503 or connection error
        outside an outage. An outage of a kind of call lasts from the dependency's stop until
        the first success of that kind that started after the dependency was back."""
        with self._lock:
            answers = list(self.answers)
        bad = []
        for answer in answers:
            if answer.status >= 500 and answer.status != 503:
                bad.append(answer)
            elif answer.status in (503, CONNECTION_ERROR) and not any(
                    outage.started <= answer.ended and answer.started <= self._recovered(
                        outage, answer.kind, answers) for outage in self.outages):
                bad.append(answer)
        return bad

    @staticmethod
    def _recovered(outage: Outage, kind: str, answers: list[Answer]) -> float:
        if outage.ended is None:
            return float("inf")
        firsts = [a.ended for a in answers if a.kind == kind and 200 <= a.status < 300
                  and a.started >= outage.ended]
        return min(firsts, default=float("inf"))


@dataclass
class Purchase:
    message_id: str
    user_id: str
    cents: int


@dataclass
class Load:
    """Paced purchases of ``customers`` (user ids) until ``total`` are accepted, ``tweets``
    mentions by ``authors`` (X user ids) one a second, and reads until both are done.

    Each callable performs one HTTP request and returns its status (or raises
    requests.RequestException when no answer comes).
    """

    token: str
    customers: list[str]
    total: int
    rate: float  # purchases per second offered
    post_batch: Callable[[list[dict]], int]
    reads: list[tuple[str, Callable[[str], int]]]  # kind, call(user_id) -> status
    post_tweet: Callable[[str, str], int]  # (author id, tweet id) -> status
    authors: list[str]
    tweets: int
    log: StatusLog
    batch_size: int = 20
    accepted: list[Purchase] = field(default_factory=list)
    accepted_tweets: list[tuple[str, str]] = field(default_factory=list)  # author, tweet id
    failed_calls: int = 0
    rejected: list[tuple[int, str]] = field(default_factory=list)

    def __post_init__(self):
        self._done = threading.Event()
        self._threads: list[threading.Thread] = []
        self.started_at = self.finished_at = 0.0

    def start(self) -> Load:
        self.started_at = time.monotonic()
        self._threads = [threading.Thread(target=target, name=f"fault-load-{target.__name__}",
                                          daemon=True)
                         for target in (self._send, self._tweet, self._read)]
        for thread in self._threads:
            thread.start()
        return self

    def wait(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        for writer in self._threads[:2]:
            writer.join(max(deadline - time.monotonic(), 0))
        self._done.set()
        self._threads[2].join(30)
        if any(writer.is_alive() for writer in self._threads[:2]):
            raise AssertionError(
                f"the load did not finish in {timeout}s: {len(self.accepted)}/{self.total} "
                f"purchases, {len(self.accepted_tweets)}/{self.tweets} tweets accepted")

    def _purchases(self):
        rng = random.Random(self.token)
        for number in range(self.total):
            yield Purchase(f"{self.token}-p{number}", self.customers[number % len(self.customers)],
                           rng.randrange(100, 50_000))

    def _send(self) -> None:
        pending = list(self._purchases())
        interval = self.batch_size / self.rate
        next_at = time.monotonic()
        for start in range(0, len(pending), self.batch_size):
            batch = pending[start:start + self.batch_size]
            time.sleep(max(0.0, next_at - time.monotonic()))
            next_at = max(next_at + interval, time.monotonic() - interval)
            messages = [{"type": "track", "userId": p.user_id, "event": "Order Completed",
                         "messageId": p.message_id,
                         "properties": {"order_id": p.message_id, "total": p.cents / 100,
                                        "currency": "EUR", "store": "Tampere"}} for p in batch]
            if self._until_accepted("identity batch", lambda m=messages: self.post_batch(m),
                                    batch[0].message_id):
                self.accepted.extend(batch)
        self.finished_at = time.monotonic()

    def _tweet(self) -> None:
        rng = random.Random(self.token + "-tweets")
        for number in range(self.tweets):
            author, tweet_id = self.authors[number % len(self.authors)], str(
                rng.randrange(10**18, 10**19))
            if self._until_accepted("social x webhook",
                                    lambda a=author, t=tweet_id: self.post_tweet(a, t), tweet_id):
                self.accepted_tweets.append((author, tweet_id))
            self._done.wait(1.0)

    def _until_accepted(self, kind: str, call: Callable[[], int], what: str) -> bool:
        """Call until answered 200 (True); False when refused for good."""
        while True:
            started = time.monotonic()
            try:
                status = call()
            except requests.RequestException:
                status = CONNECTION_ERROR
            self.log.record(kind, status, started)
            if status == 200:
                return True
            if status not in (503, CONNECTION_ERROR):
                self.rejected.append((status, what))
                return False
            self.failed_calls += 1
            time.sleep(0.5)

    def _read(self) -> None:
        rng = random.Random(self.token + "-reads")
        while not self._done.is_set():
            kind, call = rng.choice(self.reads)
            started = time.monotonic()
            try:
                status = call(rng.choice(self.customers))
            except requests.RequestException:
                status = CONNECTION_ERROR
            self.log.record(kind, status, started)
            self._done.wait(0.2)

    @property
    def accept_rate(self) -> float:
        return len(self.accepted) / max(self.finished_at - self.started_at, 1e-9)


def expected_purchases(purchases: list[Purchase]) -> dict[str, tuple[int, int]]:
    """user id → (purchase count, total in cents)."""
    expected: dict[str, tuple[int, int]] = {}
    for purchase in purchases:
        count, cents = expected.get(purchase.user_id, (0, 0))
        expected[purchase.user_id] = (count + 1, cents + purchase.cents)
    return expected


def group_lag(settings: Settings, group: str, topics: list[str]) -> int | None:
    """Records in ``topics`` that consumer group ``group`` has not committed yet (None while
    the broker does not answer)."""
    group = settings.consumer_group_prefix + group
    servers = settings.kafka_bootstrap.split(",")
    try:
        admin = KafkaAdminClient(bootstrap_servers=servers)
        consumer = KafkaConsumer(bootstrap_servers=servers)
    except KafkaError:
        return None
    try:
        committed = {tp: meta.offset
                     for tp, meta in admin.list_group_offsets(group).get(group, {}).items()}
        partitions = [TopicPartition(topic, p) for topic in topics
                      for p in consumer.partitions_for_topic(topic) or ()]
        ends = consumer.end_offsets(partitions)
    except KafkaError:
        return None
    finally:
        admin.close()
        consumer.close()
    return sum(max(ends[tp] - max(committed.get(tp, 0), 0), 0) for tp in partitions)
