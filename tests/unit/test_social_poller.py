"""The mentions poller's checkpointing, rate-limit waits and backoff, with an in-memory
source and checkpoint store (subclasses of the real interfaces)."""

from __future__ import annotations

import pytest

from services.social.poller import (
    Checkpoint,
    CheckpointStore,
    MentionsSource,
    Page,
    PageTokenRejected,
    Poller,
    RateLimited,
    backoff_seconds,
    rate_limit_wait,
)


class MemoryCheckpoints(CheckpointStore):
    def __init__(self):
        self.saved: dict[str, Checkpoint] = {}

    def load(self, name):
        return self.saved.get(name, Checkpoint())

    def save(self, name, checkpoint):
        self.saved[name] = checkpoint


class Timeline(MentionsSource):
    """Mentions with ids 1..n, newest first, in pages of two, paginated like X API v2."""

    def __init__(self, n: int):
        self.ids = list(range(n, 0, -1))
        self.calls = []
        self.reject_tokens = False

    def add(self, count: int):
        top = self.ids[0] if self.ids else 0
        self.ids = list(range(top + count, top, -1)) + self.ids

    def page(self, since_id, pagination_token):
        self.calls.append((since_id, pagination_token))
        if pagination_token and self.reject_tokens:
            self.reject_tokens = False
            raise PageTokenRejected("expired")
        visible = [i for i in self.ids if since_id is None or i > int(since_id)]
        start = int(pagination_token) if pagination_token else 0
        chunk = visible[start:start + 2]
        rest = start + 2 < len(visible)
        body = {"data": [{"id": str(i), "text": f"@brand hello {i}", "author_id": "42"}
                         for i in chunk],
                "meta": {"result_count": len(chunk)}}
        newest = str(chunk[0]) if chunk else None
        return Page(body, str(start + 2) if rest else None, newest)


def ids_of(batches):
    return [m.platform_id for batch in batches for m in batch.messages]


def make(n=5):
    source, checkpoints, emitted = Timeline(n), MemoryCheckpoints(), []
    return source, checkpoints, emitted, Poller("x", "1", source, checkpoints, emitted.append)


def test_a_sweep_reads_every_page_and_remembers_the_newest_id():
    source, checkpoints, emitted, poller = make(5)
    assert poller.sweep() == 3
    assert ids_of(emitted) == ["5", "4", "3", "2", "1"]
    assert checkpoints.saved["x"] == Checkpoint(since_id="5")


def test_the_next_sweep_reads_only_what_is_new():
    source, checkpoints, emitted, poller = make(3)
    poller.sweep()
    source.add(3)
    emitted.clear()
    poller.sweep()
    assert ids_of(emitted) == ["6", "5", "4"]
    assert checkpoints.saved["x"].since_id == "6"


def test_a_restart_mid_sweep_neither_repeats_nor_skips():
    source, checkpoints, emitted, poller = make(7)
    poller.sweep(max_pages=2)
    assert checkpoints.saved["x"] == Checkpoint(None, "7", "4")
    restarted = Poller("x", "1", source, checkpoints, emitted.append)
    restarted.sweep()
    assert ids_of(emitted) == ["7", "6", "5", "4", "3", "2", "1"]
    assert checkpoints.saved["x"] == Checkpoint(since_id="7")


def test_a_failure_to_emit_leaves_the_checkpoint_before_that_page():
    source, checkpoints, emitted, _ = make(5)

    def emit(batch):
        if ids_of([batch]) == ["3", "2"]:
            raise ConnectionError("broker away")
        emitted.append(batch)

    with pytest.raises(ConnectionError):
        Poller("x", "1", source, checkpoints, emit).sweep()
    assert checkpoints.saved["x"].pagination_token == "2"  # page 2 will be read again
    Poller("x", "1", source, checkpoints, emitted.append).sweep()
    assert ids_of(emitted) == ["5", "4", "3", "2", "1"]


def test_a_rejected_page_token_restarts_the_sweep_from_the_last_finished_one():
    source, checkpoints, emitted, poller = make(5)
    poller.sweep(max_pages=1)
    source.reject_tokens = True
    poller.sweep()
    assert set(ids_of(emitted)) == {"5", "4", "3", "2", "1"}
    assert checkpoints.saved["x"] == Checkpoint(since_id="5")


def test_rate_limit_waits_follow_retry_after_then_the_reset_header():
    assert rate_limit_wait(200, {}, 0) is None
    assert rate_limit_wait(429, {"retry-after": "7"}, 0) == 7
    assert rate_limit_wait(429, {"x-rate-limit-reset": "1060"}, 1000) == 60
    assert rate_limit_wait(429, {"x-rate-limit-reset": "900"}, 1000) == 0
    assert rate_limit_wait(429, {"retry-after": "99999"}, 0) == 900
    assert rate_limit_wait(429, {}, 0) == 60


def test_backoff_grows_exponentially_with_full_jitter_up_to_a_cap():
    top = lambda low, high: high  # noqa: E731 - the largest draw
    assert [backoff_seconds(a, top) for a in (1, 2, 3, 4)] == [1, 2, 4, 8]
    assert backoff_seconds(30, top) == 300
    assert backoff_seconds(3, lambda low, high: low) == 0


def test_rate_limited_is_raised_through_the_sweep():
    class Limited(MentionsSource):
        def page(self, since_id, pagination_token):
            raise RateLimited(5)

    with pytest.raises(RateLimited):
        Poller("x", "1", Limited(), MemoryCheckpoints(), lambda batch: None).sweep()
