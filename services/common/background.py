"""Loops a worker runs beside its Kafka consumers (services/common/runner.py runs them as it
runs a ConsumerLoop: ``run`` until ``stop``, named by ``group``)."""

from __future__ import annotations

import logging
import threading
import time

from services.common.bus import TRANSIENT_ERRORS

log = logging.getLogger(__name__)


class BackgroundLoop:
    """``step`` until stopped, waiting ``idle_seconds`` after each. A store or broker outage
    is logged and the step tried again after the wait; so is any other failure (logged as an
    error): background work must not stop the consumers beside it."""

    group = "background"
    idle_seconds = 2.0

    def __init__(self):
        self._stopping = threading.Event()

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    def stop(self) -> None:
        self._stopping.set()

    def pause(self, seconds: float) -> bool:
        """Wait ``seconds`` unless stopped meanwhile; returns whether to stop (the ``pause``
        that paced background work takes, store.paced)."""
        return self._stopping.wait(seconds)

    def run(self) -> None:
        while not self.stopping:
            try:
                self.step()
            except TRANSIENT_ERRORS as exc:
                log.warning("background work failed; will retry",
                            extra={"group": self.group, "error": repr(exc)})
            except Exception:  # noqa: BLE001 - a fault of its own: logged, retried, contained
                log.exception("background work failed; will retry", extra={"group": self.group})
            self._stopping.wait(self.idle_seconds)

    def step(self) -> None:
        raise NotImplementedError


class DailyHousekeeping(BackgroundLoop):
    """``sweep`` once a day: the first an hour after start (not on every restart), one that
    failed again an hour later. Logs ``report`` (message, field) with what ``sweep`` returns."""

    idle_seconds = 60.0
    FIRST_AFTER_SECONDS = RETRY_SECONDS = 3600.0
    EVERY_SECONDS = 86400.0
    report = ("housekeeping swept", "swept")

    def __init__(self):
        super().__init__()
        self._due = time.monotonic() + self.FIRST_AFTER_SECONDS

    def step(self) -> None:
        began = time.monotonic()
        if began < self._due:
            return
        self._due = began + self.RETRY_SECONDS
        message, name = self.report
        log.info(message, extra={name: self.sweep()})
        self._due = began + self.EVERY_SECONDS

    def sweep(self) -> int | dict[str, int]:
        raise NotImplementedError
