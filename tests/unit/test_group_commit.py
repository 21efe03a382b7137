"""Group commit (services/profile/group_commit.py): concurrent callers share one write, and
none returns before the write carrying its item is done."""

from __future__ import annotations

import threading

import pytest

from services.profile.group_commit import GroupCommit
from tests.support.processes import wait_until


class Writes:
    """A write function that records its batches; the first waits until released."""

    def __init__(self, fail_first: bool = False):
        self.batches: list[list[int]] = []
        self.started = threading.Event()
        self.release = threading.Event()
        self.fail_first = fail_first

    def __call__(self, items: list[int]) -> None:
        first = not self.started.is_set()
        self.started.set()
        if first:
            self.release.wait(10)
        self.batches.append(list(items))
        if first and self.fail_first:
            raise ConnectionError("store away")


def commit_in_thread(group: GroupCommit, item: int, outcomes: dict) -> threading.Thread:
    def run():
        try:
            group.commit(item)
            outcomes[item] = "stored" if any(item in b for b in writes_of(group)) else "early"
        except ConnectionError as exc:
            outcomes[item] = exc

    thread = threading.Thread(target=run)
    thread.start()
    return thread


def writes_of(group: GroupCommit) -> list[list[int]]:
    return group._write_items.batches


def test_a_lone_caller_writes_at_once():
    writes = Writes()
    writes.release.set()
    group = GroupCommit(writes)
    group.commit(1)
    assert writes.batches == [[1]]


def test_callers_arriving_during_a_write_share_the_next_one_and_return_after_it():
    writes = Writes()
    group = GroupCommit(writes)
    outcomes: dict = {}
    first = commit_in_thread(group, 0, outcomes)
    wait_until(writes.started.is_set, what="the first write under way")
    others = [commit_in_thread(group, item, outcomes) for item in range(1, 6)]
    wait_until(lambda: group.queued == 5, what="five callers queued behind the write")
    assert outcomes == {}
    writes.release.set()
    for thread in [first, *others]:
        thread.join(10)
    assert writes.batches == [[0], [1, 2, 3, 4, 5]]
    assert outcomes == dict.fromkeys(range(6), "stored")


def test_a_write_carries_at_most_max_batch_items_and_every_caller_is_served():
    writes = Writes()
    group = GroupCommit(writes, max_batch=2)
    outcomes: dict = {}
    first = commit_in_thread(group, 0, outcomes)
    wait_until(writes.started.is_set, what="the first write under way")
    others = [commit_in_thread(group, item, outcomes) for item in range(1, 6)]
    wait_until(lambda: group.queued == 5, what="five callers queued")
    writes.release.set()
    for thread in [first, *others]:
        thread.join(10)
    assert [len(batch) for batch in writes.batches] == [1, 2, 2, 1]
    assert sorted(item for batch in writes.batches for item in batch) == list(range(6))
    assert outcomes == dict.fromkeys(range(6), "stored")


def test_a_failed_write_raises_in_every_caller_it_carried_and_the_next_write_proceeds():
    writes = Writes(fail_first=True)
    group = GroupCommit(writes)
    outcomes: dict = {}
    first = commit_in_thread(group, 0, outcomes)
    wait_until(writes.started.is_set, what="the first write under way")
    writes.release.set()
    first.join(10)
    assert isinstance(outcomes[0], ConnectionError)
    group.commit(1)
    assert writes.batches == [[0], [1]]


def test_an_error_is_raised_to_the_caller_of_a_lone_write():
    writes = Writes(fail_first=True)
    writes.release.set()
    with pytest.raises(ConnectionError):
        GroupCommit(writes).commit(1)
