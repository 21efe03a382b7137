"""Group commit, for the access log: concurrent reads store their entries in one write, and
each read is answered only after its own entry is stored.

On FerretDB/SQLite one ``insert`` command costs the store ~2 ms of CPU whatever its size; ten
entries in one command cost about as much as two single ones. Entries are not buffered in
memory past their request: the caller blocks until the write holding its entry is
acknowledged (or raises the store's error), so an API process killed at any moment has
answered no read whose entry is missing.

No thread of its own: the first caller finding no write in flight writes everything queued
so far (its own entry included); callers arriving meanwhile queue for the next write, which
one of them makes when the first is done. A lone read therefore writes at once, as before.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

# FerretDB keeps one SQLite connection per statement of a command: keep commands small
MAX_BATCH = 50

Item = TypeVar("Item")


@dataclass
class _Pending(Generic[Item]):
    item: Item
    done: bool = False
    error: BaseException | None = None


class GroupCommit(Generic[Item]):
    """``commit(item)`` that returns once ``write`` has stored ``item``, in one call with the
    items other threads commit at the same moment (at most ``max_batch`` a call)."""

    def __init__(self, write: Callable[[list[Item]], None], max_batch: int = MAX_BATCH):
        self._write_items = write
        self._max_batch = max_batch
        self._queue: list[_Pending[Item]] = []
        self._writing = False
        self._changed = threading.Condition()

    @property
    def queued(self) -> int:
        """Items waiting for a write to start."""
        with self._changed:
            return len(self._queue)

    def commit(self, item: Item) -> None:
        """Store ``item``; raises what ``write`` raised for the call that carried it."""
        mine = _Pending(item)
        with self._changed:
            self._queue.append(mine)
        while True:
            with self._changed:
                while self._writing and not mine.done:
                    self._changed.wait()
                if mine.done:
                    break
                # nobody is writing and mine is still queued: write the queue's head
                batch = self._queue[:self._max_batch]
                del self._queue[:self._max_batch]
                self._writing = True
            self._write(batch)
        if mine.error is not None:
            raise mine.error

    def _write(self, batch: list[_Pending[Item]]) -> None:
        error: BaseException | None = None
        stored = False
        try:
            self._write_items([pending.item for pending in batch])
            stored = True
        except Exception as exc:  # noqa: BLE001 - every caller of the batch gets it
            error = exc
        finally:
            if not stored and error is None:  # interrupted (e.g. the worker is exiting)
                error = RuntimeError("the group write was interrupted")
            with self._changed:
                for pending in batch:
                    pending.done, pending.error = True, error
                self._writing = False
                self._changed.notify_all()
