"""When the profile worker's housekeeping sweeps: hourly, with retention once a day."""

from __future__ import annotations

from services.profile import worker


def test_retention_is_swept_once_a_day_and_the_rest_every_hour(monkeypatch):
    clock = [0.0]
    monkeypatch.setattr(worker.time, "monotonic", lambda: clock[0])
    housekeeping = worker.Housekeeping(context=None, producer=None, sweep_history=True)
    sweeps = []
    monkeypatch.setattr(housekeeping, "membership_pass", lambda: 0)
    monkeypatch.setattr(housekeeping, "sweep",
                        lambda retention: sweeps.append((clock[0] // 3600, retention)))

    for minute in range(0, 49 * 60, 30):
        clock[0] = minute * 60.0
        housekeeping.step()

    assert [hour for hour, _ in sweeps] == list(range(49))
    assert [hour for hour, retention in sweeps if retention] == [0, 24, 48]


def test_a_retention_sweep_that_failed_is_tried_again_within_the_hour(monkeypatch):
    clock = [0.0]
    monkeypatch.setattr(worker.time, "monotonic", lambda: clock[0])
    housekeeping = worker.Housekeeping(context=None, producer=None, sweep_history=True)
    monkeypatch.setattr(housekeeping, "membership_pass", lambda: 0)
    sweeps = []

    def sweep(retention):
        sweeps.append(retention)
        if len(sweeps) == 1:
            raise ConnectionError("the store went away")

    monkeypatch.setattr(housekeeping, "sweep", sweep)
    for hour in range(3):
        clock[0] = hour * 3600.0
        try:
            housekeeping.step()
        except ConnectionError:
            pass

    assert sweeps == [True, True, False]
