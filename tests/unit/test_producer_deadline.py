"""Producer.send keeps one deadline for the whole call: an API request waits at most the
producer's send timeout for Kafka, however many messages it sends; and it sends all of a
batch's messages or none (logic only; a stand-in for kafka-python's client)."""

from __future__ import annotations

import time

import pytest
from kafka.errors import KafkaTimeoutError

from services.common.bus import Outgoing, Producer


class SilentBroker:
    """Never acknowledges: flush and every result wait their whole timeout, which is noted."""

    def __init__(self):
        self.waits: list[float] = []

    def send(self, topic, key, value):
        return self

    def flush(self, timeout):
        self.waits.append(timeout)
        time.sleep(timeout)

    def get(self, timeout):
        self.waits.append(timeout)
        time.sleep(timeout)
        raise KafkaTimeoutError("no acknowledgement")


def test_a_send_to_an_absent_broker_gives_up_within_the_send_timeout():
    producer = object.__new__(Producer)
    broker = SilentBroker()
    producer.service, producer.send_timeout, producer._producer = "tests", 0.3, broker
    messages = [Outgoing("cdp.events.web", f"k{i}", {"n": i}) for i in range(5)]
    with pytest.raises(KafkaTimeoutError):
        producer.send(messages)
    # the waits share the one budget (a wait never starts past the deadline but for 1 ms)
    assert sum(broker.waits) <= 0.3 + 0.001 * len(broker.waits)


class RecordingBroker(SilentBroker):
    def __init__(self):
        super().__init__()
        self.sent: list[str] = []

    def send(self, topic, key, value):
        self.sent.append(key.decode())
        return self


def test_a_message_that_cannot_be_encoded_sends_none_of_its_batch():
    producer = object.__new__(Producer)
    broker = RecordingBroker()
    producer.service, producer.send_timeout, producer._producer = "tests", 0.1, broker
    messages = [Outgoing("cdp.events.web", "k0", {"n": 0}),
                Outgoing("cdp.events.web", "k1", {"not JSON": {1, 2}}),
                Outgoing("cdp.events.web", "k2", {"n": 2})]
    with pytest.raises(TypeError):
        producer.send(messages)
    assert broker.sent == []
