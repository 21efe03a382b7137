"""The local spool: what was appended reaches the sender once, in order, even across a broker
outage and the appending process's death; a full spool refuses rather than drops."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from services.common.bus import Outgoing
from services.common.spool import SUFFIX, Spool, SpoolFull


class Broker:
    def __init__(self):
        self.received: list[Outgoing] = []
        self.away = False

    def send(self, messages):
        if self.away:
            raise ConnectionError("broker away")
        self.received.extend(messages)


def message(n: int) -> Outgoing:
    return Outgoing("cdp.profile.accesses", f"p{n}", {"message_id": f"m{n}", "n": n})


def wait_for(condition, seconds: float = 10.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.02)


def test_appended_messages_are_shipped_in_order_and_their_segments_deleted(tmp_path):
    broker = Broker()
    spool = Spool(tmp_path, broker.send, name="t", interval=0.05)
    for n in range(5):
        spool.append([message(n)])
    wait_for(lambda: len(broker.received) == 5)
    assert [(m.topic, m.key, m.value) for m in broker.received] == [
        ("cdp.profile.accesses", f"p{n}", {"message_id": f"m{n}", "n": n}) for n in range(5)]
    spool.close()
    assert list(tmp_path.glob(f"*{SUFFIX}")) == []


def test_messages_wait_out_a_broker_outage_and_are_shipped_once_after_it(tmp_path):
    broker = Broker()
    broker.away = True
    spool = Spool(tmp_path, broker.send, name="t", interval=0.05)
    spool.append([message(1), message(2)])
    time.sleep(0.3)
    spool.append([message(3)])
    assert broker.received == [] and spool.pending_bytes() > 0
    broker.away = False
    wait_for(lambda: len(broker.received) == 3)
    time.sleep(0.2)
    assert [m.key for m in broker.received] == ["p1", "p2", "p3"]
    assert spool.pending_bytes() == 0
    spool.close()


def test_a_full_spool_refuses_appends_until_the_broker_takes_the_backlog(tmp_path):
    broker = Broker()
    broker.away = True
    spool = Spool(tmp_path, broker.send, name="t", interval=0.05, max_bytes=2000)
    appended = 0
    with pytest.raises(SpoolFull):
        for n in range(100):
            spool.append([message(n)])
            appended += 1
    assert 0 < appended < 100
    broker.away = False
    wait_for(lambda: spool.pending_bytes() == 0)
    spool.append([message(100)])
    wait_for(lambda: len(broker.received) == appended + 1)
    spool.close()


def test_a_killed_process_spool_is_shipped_by_the_next_spool_on_the_directory(tmp_path):
    # the child appends with the broker away, then dies by SIGKILL: no shutdown code runs
    child = textwrap.dedent(f"""
        import os, signal
        from pathlib import Path
        from services.common.bus import Outgoing
        from services.common.spool import Spool
        def away(messages):
            raise ConnectionError("broker away")
        spool = Spool(Path({str(tmp_path)!r}), away, name="t", interval=0.05)
        spool.append([Outgoing("topic", "k", {{"n": n}}) for n in range(3)])
        os.kill(os.getpid(), signal.SIGKILL)
    """)
    finished = subprocess.run([sys.executable, "-c", child], cwd=Path(__file__).parents[2],
                              timeout=60)
    assert finished.returncode == -9
    assert list(tmp_path.glob(f"*{SUFFIX}")), "the killed process left its spool"
    broker = Broker()
    spool = Spool(tmp_path, broker.send, name="t", interval=0.05)
    wait_for(lambda: len(broker.received) == 3)
    assert [m.value for m in broker.received] == [{"n": 0}, {"n": 1}, {"n": 2}]
    spool.close()
    assert list(tmp_path.glob(f"*{SUFFIX}")) == []


def test_a_living_spools_segments_are_not_taken_by_another(tmp_path):
    first_broker, second_broker = Broker(), Broker()
    first_broker.away = True
    first = Spool(tmp_path, first_broker.send, name="a", interval=0.05)
    first.append([message(1)])
    second = Spool(tmp_path, second_broker.send, name="b", interval=0.05)
    time.sleep(0.3)
    assert second_broker.received == []
    first_broker.away = False
    wait_for(lambda: len(first_broker.received) == 1)
    first.close()
    second.close()
