"""Loops a worker runs beside its Kafka consumers (services/common/runner.py runs them as it
runs a ConsumerLoop: ``run`` until ``stop``, named by ``group``)."""

from __future__ import annotations

import logging
import threading

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
