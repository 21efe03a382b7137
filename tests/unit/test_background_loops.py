"""Background loops beside a worker's consumers: failures contained, sweeps scheduled."""

from __future__ import annotations

import time
from types import SimpleNamespace

import pytest

from services.common.background import BackgroundLoop
from services.consent.privacy_retention import RetentionSweep
from services.export.housekeeping import SettledChangesSweep
from services.identity.housekeeping import ErasureCountsSweep, OrphanLinkSweep


class Failing(BackgroundLoop):
    idle_seconds = 0.0

    def __init__(self, failures):
        super().__init__()
        self.failures = list(failures)

    def step(self):
        if not self.failures:
            self.stop()
            return
        raise self.failures.pop(0)


def test_a_failing_step_is_logged_and_tried_again_without_stopping_the_worker(caplog):
    loop = Failing([ConnectionError("store away"), KeyError("a fault of its own")])
    loop.run()  # returns once stopped, having raised nothing
    assert loop.failures == [] and loop.stopping
    assert [r.levelname for r in caplog.records] == ["WARNING", "ERROR"]


@pytest.mark.parametrize("daily_sweep", [
    lambda: OrphanLinkSweep(graph=None),  # identity: links to profiles no longer in the graph
    lambda: ErasureCountsSweep(counts=None, policy={}),  # identity: erasures' counts
    lambda: SettledChangesSweep(store=None, policy={}),  # export: settled stream changes
    # consent: retention, consent proof among it
    lambda: RetentionSweep(db=None, settings=SimpleNamespace(retention_days="consent_proof=1")),
])
def test_a_daily_sweep_runs_daily_and_an_hour_after_one_that_failed(monkeypatch, daily_sweep):
    clock = [0.0]
    monkeypatch.setattr(time, "monotonic", lambda: clock[0])
    sweep = daily_sweep()
    outcomes = [ConnectionError("store away"), 0, 0]
    ran = []

    def attempt():
        ran.append(clock[0] // 3600)
        outcome = outcomes.pop(0)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    monkeypatch.setattr(sweep, "sweep", attempt)
    for hour in range(0, 50):
        clock[0] = hour * 3600.0
        try:
            sweep.step()
        except ConnectionError:
            pass

    assert ran == [1, 2, 26]
