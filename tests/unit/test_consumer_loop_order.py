"""The consumer loop's ordering contract, driven with fakes (no broker, no store)."""

from __future__ import annotations

from dataclasses import dataclass

from kafka import TopicPartition
from kafka.errors import RebalanceInProgressError

from services.common.bus import SPIN_POLLS, ConsumerLoop, InvalidMessage, Outgoing
from services.common.config import Settings
from services.common.envelope import new_envelope


@dataclass
class Record:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes


class FakeConsumer:
    def __init__(self, batches, journal):
        self.batches = list(batches)
        self.journal = journal
        self.loop: ConsumerLoop | None = None

    def subscribe(self, topics):
        pass

    def partitions_for_topic(self, topic):
        return {0}

    def poll(self, timeout_ms):
        if self.batches and isinstance(self.batches[0], Exception):
            raise self.batches.pop(0)
        if not self.batches:
            self.loop.stop()
            return {}
        return self.batches.pop(0)

    def commit(self, offsets, timeout_ms=None):
        self.journal.append(("commit", {tp.partition: meta.offset for tp, meta in offsets.items()}))

    def assignment(self):
        return set()

    def close(self, autocommit):
        self.journal.append(("close", autocommit))


class FakeProducer:
    def __init__(self, journal):
        self.journal = journal

    def send(self, messages):
        self.journal.append(("produce", [m.topic for m in messages]))


class FakeLedger:
    def __init__(self, journal, already=()):
        self.journal = journal
        self.already = set(already)

    def seen(self, ids):
        return self.already & set(ids)

    def expire_if_due(self):
        return 0

    def mark(self, ids):
        self.journal.append(("mark", list(ids)))
        self.already.update(ids)


def make_loop(batches, handler, already=(), batch_handler=None, ledger=True):
    journal: list = []
    consumer = FakeConsumer(batches, journal)
    loop = ConsumerLoop(settings=Settings.from_env({}), service="t", group="g", topics=["in"],
                        handler=handler, producer=FakeProducer(journal),
                        ledger=FakeLedger(journal, already) if ledger else None,
                        consumer=consumer,
                        batch_handler=batch_handler)
    consumer.loop = loop
    return loop, journal


def batch(*envelopes_or_bytes, partition=0, start=0):
    tp = TopicPartition("in", partition)
    records = [Record("in", partition, start + i, b"k",
                      e if isinstance(e, bytes) else e.to_bytes())
               for i, e in enumerate(envelopes_or_bytes)]
    return {tp: records}


def test_effect_then_outputs_then_ledger_then_commit():
    first, second = new_envelope("A", "web"), new_envelope("B", "web")

    def handler(envelope):
        journal.append(("handle", envelope.type))
        return [Outgoing("out", "k", envelope)]

    loop, journal = make_loop([batch(first, second)], handler)
    loop.run()
    assert journal == [
        ("handle", "A"), ("handle", "B"),
        ("produce", ["out", "out"]),
        ("mark", [first.message_id, second.message_id]),
        ("commit", {0: 2}),
        ("close", False),
    ]


def test_already_applied_message_is_skipped_but_its_offset_committed():
    done, fresh = new_envelope("A", "web"), new_envelope("B", "web")
    handled = []
    loop, journal = make_loop([batch(done, fresh)], lambda e: handled.append(e.type),
                              already={done.message_id})
    loop.run()
    assert handled == ["B"]
    assert ("commit", {0: 2}) in journal


def test_same_message_twice_in_one_batch_is_applied_once():
    envelope = new_envelope("A", "web")
    handled = []
    loop, _ = make_loop([batch(envelope, envelope)], lambda e: handled.append(e.type))
    loop.run()
    assert handled == ["A"]


def test_a_group_without_a_ledger_applies_outputs_and_commits_each_message():
    first, second = new_envelope("A", "web"), new_envelope("B", "web")

    def handler(envelope):
        journal.append(("handle", envelope.type))
        return [Outgoing("out", "k", envelope)]

    loop, journal = make_loop([batch(first, second), batch(first, start=2)], handler,
                              ledger=False)
    loop.run()
    # nothing remembers what was applied: a re-delivery is applied again (idempotent handler)
    assert journal == [
        ("handle", "A"), ("handle", "B"), ("produce", ["out", "out"]), ("commit", {0: 2}),
        ("handle", "A"), ("produce", ["out"]), ("commit", {0: 3}),
        ("close", False),
    ]


def test_invalid_message_becomes_a_dead_letter_and_the_rest_is_applied():
    bad, good = new_envelope("Bad", "web"), new_envelope("Good", "web")

    def handler(envelope):
        if envelope.type == "Bad":
            raise InvalidMessage("no such thing")
        return ()

    loop, journal = make_loop([batch(b"garbage", bad, good)], handler)
    loop.run()
    assert ("produce", ["cdp.deadletter", "cdp.deadletter"]) in journal
    assert ("mark", [good.message_id]) in journal
    assert ("commit", {0: 3}) in journal


def test_unexpected_handler_error_is_retried_then_dead_lettered(monkeypatch):
    monkeypatch.setattr("services.common.bus.time.sleep", lambda s: None)
    attempts = []

    def handler(envelope):
        attempts.append(1)
        raise KeyError("bug")

    loop, journal = make_loop([batch(new_envelope("A", "web"))], handler)
    loop.run()
    assert len(attempts) == 3  # CDP_HANDLER_MAX_ATTEMPTS default
    assert ("produce", ["cdp.deadletter"]) in journal


def test_transient_store_outage_is_retried_until_it_heals(monkeypatch):
    import pymongo.errors

    monkeypatch.setattr("services.common.bus.time.sleep", lambda s: None)
    failures = [pymongo.errors.AutoReconnect("down")] * 20

    def handler(envelope):
        if failures:
            raise failures.pop()
        return ()

    envelope = new_envelope("A", "web")
    loop, journal = make_loop([batch(envelope)], handler)
    loop.run()
    assert ("mark", [envelope.message_id]) in journal
    assert not any(entry[0] == "produce" for entry in journal)


def test_broker_gone_during_a_poll_is_waited_out_and_the_next_batch_applied(monkeypatch):
    from kafka.errors import KafkaConnectionError

    monkeypatch.setattr("services.common.bus._backoff", lambda attempt: 0)
    envelope = new_envelope("A", "web")
    handled = []
    loop, journal = make_loop([KafkaConnectionError("111 ECONNREFUSED"),
                               KafkaConnectionError("111 ECONNREFUSED"), batch(envelope)],
                              lambda e: handled.append(e.type))
    loop.run()
    assert handled == ["A"]
    assert ("commit", {0: 1}) in journal


def test_relay_messages_are_produced_and_then_marked_sent():
    from services.common.bus import Relay

    class Outbox(Relay):
        def __init__(self):
            self.items = [Outgoing("cdp.identity.merges", "p1", new_envelope("X", "system"))]
            self.marked = []

        def pending(self):
            return list(self.items)

        def sent(self, messages):
            self.marked.extend(messages)
            self.items = []

    outbox = Outbox()
    loop, journal = make_loop([], lambda e: ())
    loop.relay = outbox
    loop.run()
    assert ("produce", ["cdp.identity.merges"]) in journal
    assert len(outbox.marked) == 1


def test_batch_handler_gets_the_polls_fresh_messages_at_once_before_outputs_ledger_commit():
    done, first, second = (new_envelope(t, "web") for t in ("A", "B", "C"))

    def batch_handler(envelopes):
        journal.append(("batch", [e.type for e in envelopes]))
        return [Outgoing("out", "k", e) for e in envelopes]

    loop, journal = make_loop([{**batch(done, first), **batch(second, partition=1)}],
                              lambda e: 1 / 0, already={done.message_id},
                              batch_handler=batch_handler)
    loop.run()
    assert journal == [
        ("batch", ["B", "C"]),
        ("produce", ["out", "out"]),
        ("mark", [first.message_id, second.message_id]),
        ("commit", {0: 2, 1: 1}),
        ("close", False),
    ]


def test_a_batch_the_batch_handler_refuses_goes_message_by_message_so_only_the_bad_one_dies():
    bad, good = new_envelope("Bad", "web"), new_envelope("Good", "web")
    handled = []

    def handler(envelope):
        if envelope.type == "Bad":
            raise InvalidMessage("no such thing")
        handled.append(envelope.type)

    def batch_handler(envelopes):
        raise InvalidMessage("one of them is bad")

    loop, journal = make_loop([batch(bad, good)], handler, batch_handler=batch_handler)
    loop.run()
    assert handled == ["Good"]
    assert ("produce", ["cdp.deadletter"]) in journal
    assert ("mark", [good.message_id]) in journal
    assert ("commit", {0: 2}) in journal


def test_batch_handler_outage_is_retried_with_the_whole_batch(monkeypatch):
    import pymongo.errors

    monkeypatch.setattr("services.common.bus.time.sleep", lambda s: None)
    failures = [pymongo.errors.AutoReconnect("down")] * 3
    calls = []

    def batch_handler(envelopes):
        calls.append(len(envelopes))
        if failures:
            raise failures.pop()

    envelopes = [new_envelope("A", "web"), new_envelope("B", "web")]
    loop, journal = make_loop([batch(*envelopes)], lambda e: 1 / 0,
                              batch_handler=batch_handler)
    loop.run()
    assert calls == [2, 2, 2, 2]
    assert ("mark", [e.message_id for e in envelopes]) in journal


def test_lag_of_a_partition_lost_in_a_rebalance_is_no_longer_reported():
    from services.common import metrics

    class RebalancedConsumer(FakeConsumer):
        assigned = [{TopicPartition("in", 0), TopicPartition("in", 1)},
                    {TopicPartition("in", 1)}]

        def assignment(self):
            return self.assigned.pop(0) if len(self.assigned) > 1 else self.assigned[0]

        def highwater(self, partition):
            return 10

        def position(self, partition, timeout_ms=None):
            return 4

    journal: list = []
    consumer = RebalancedConsumer([], journal)
    loop = ConsumerLoop(settings=Settings.from_env({}), service="lag-test", group="g",
                        topics=["in"], handler=lambda e: (), producer=FakeProducer(journal),
                        ledger=FakeLedger(journal), consumer=consumer)
    consumer.loop = loop

    def reported():
        return {sample.labels["partition"]: sample.value
                for family in metrics.CONSUMER_LAG.collect() for sample in family.samples
                if sample.labels["service"] == "lag-test"}

    loop._report_lag()
    assert reported() == {"0": 6, "1": 6}
    loop._report_lag()
    assert reported() == {"1": 6}


class SpinningConsumer(FakeConsumer):
    """A wedged client: every poll returns at once with nothing, except the records listed
    for some poll numbers."""

    def __init__(self, journal, name, polls, records_at=()):
        super().__init__([], journal)
        self.name, self.polls, self.records_at, self.polled = name, polls, set(records_at), 0

    def poll(self, timeout_ms):
        self.polled += 1
        if self.polled >= self.polls:
            self.loop.stop()
        if self.polled in self.records_at:
            return batch(new_envelope("A", "web"), start=self.polled)
        return {}

    def close(self, autocommit):
        self.journal.append(("close", self.name))


def spinning_loop(journal, consumers):
    class Loop(ConsumerLoop):
        def _new_consumer(self):
            consumer = consumers.pop(0)
            consumer.loop = self
            return consumer

    return Loop(settings=Settings.from_env({}), service="t", group="g", topics=["in"],
                handler=lambda envelope: (), producer=FakeProducer(journal), ledger=None)


def test_a_consumer_whose_polls_return_at_once_with_nothing_is_replaced():
    journal: list = []
    loop = spinning_loop(journal, [SpinningConsumer(journal, "wedged", SPIN_POLLS + 10),
                                   SpinningConsumer(journal, "fresh", 5)])
    loop.run()
    assert journal == [("close", "wedged"), ("close", "fresh")]


def test_a_consumer_that_returns_records_now_and_then_is_kept():
    journal: list = []
    every = SPIN_POLLS - 1
    wedged_looking = SpinningConsumer(journal, "busy", SPIN_POLLS * 3,
                                      records_at=range(every, SPIN_POLLS * 3, every))
    loop = spinning_loop(journal, [wedged_looking])
    loop.run()
    assert [entry for entry in journal if entry[0] == "close"] == [("close", "busy")]


def test_a_commit_refused_by_a_rebalance_is_not_retried_so_the_next_poll_can_rejoin():
    envelope = new_envelope("A", "web")
    loop, journal = make_loop([batch(envelope), batch(envelope, start=1)], lambda e: ())
    refusals = [RebalanceInProgressError("rebalancing")]
    commit = loop._consumer.commit

    def refuse_once(offsets, timeout_ms=None):
        commit(offsets, timeout_ms)
        if refusals:
            raise refusals.pop()

    loop._consumer.commit = refuse_once
    loop.run()
    # one attempt per batch: the refused one left for re-delivery, the next poll went on
    assert [entry for entry in journal if entry[0] == "commit"] == [
        ("commit", {0: 1}), ("commit", {0: 2})]
