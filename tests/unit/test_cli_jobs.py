import pytest

from services.cli.jobs import JobError, follow, job_state, privacy_request_body


def test_a_subject_is_named_by_an_identifier_or_by_a_profile_id():
    assert privacy_request_body("erasure", "ticket 42", identifier_type="email",
                                value="a@b.fi") == {
        "kind": "erasure", "reason": "ticket 42",
        "subject": {"identifier": {"type": "email", "value": "a@b.fi"}}}
    assert privacy_request_body("access", "ticket 43", profile_id="p1") == {
        "kind": "access", "reason": "ticket 43", "subject": {"profile_id": "p1"}}
    with pytest.raises(ValueError):
        privacy_request_body("erasure", "t", identifier_type="email")
    with pytest.raises(ValueError):
        privacy_request_body("erasure", "t", profile_id="p1", identifier_type="email", value="x")


def test_a_request_finishes_completed_or_partially_failed_and_overdue_is_still_open():
    assert job_state({"request_id": "r1", "state": "received"}).job_id == "r1"
    assert job_state({"request_id": "r1", "state": "completed"}).succeeded
    partial = job_state({"request_id": "r1", "state": "partially_failed"})
    assert partial.finished and not partial.succeeded
    assert not job_state({"request_id": "r1", "state": "overdue"}).finished


def test_request_progress_counts_services_acknowledged_of_those_expected():
    state = job_state({"request_id": "r1", "state": "fanned_out",
                       "expected": ["identity", "profile", "consent"],
                       "acknowledged": [{"service": "identity"}, {"service": "profile"}],
                       "missing": ["consent"]})
    assert (state.done_steps, state.total_steps) == (2, 3)
    assert state.detail == "waiting for consent"


def test_an_export_run_reports_its_status_and_exported_profiles():
    running = job_state({"run_id": "x", "status": "running",
                         "progress": {"considered": 10, "exported": 7, "batches_sent": 1}})
    assert running.job_id == "x" and not running.finished and running.total_steps is None
    assert running.detail == "7 exported of 10 considered, 1 batches sent"
    assert job_state({"run_id": "x", "status": "succeeded"}).succeeded
    assert not job_state({"run_id": "x", "status": "failed"}).succeeded


def test_an_export_run_cancelled_because_its_partner_was_retired_has_finished_badly():
    cancelled = job_state({"run_id": "x", "status": "cancelled"})
    assert cancelled.finished and not cancelled.succeeded


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def test_following_a_job_returns_its_finished_document_and_reports_each_state():
    docs = iter([{"run_id": "1", "status": "queued"}, {"run_id": "1", "status": "succeeded"}])
    clock, seen = FakeClock(), []
    final = follow(lambda: next(docs), timeout=10, on_update=lambda s: seen.append(s.state),
                   clock=clock, sleep=clock.sleep)
    assert final["status"] == "succeeded"
    assert seen == ["queued", "succeeded"]


def test_following_gives_up_after_the_timeout_and_says_the_job_goes_on():
    clock = FakeClock()
    with pytest.raises(JobError, match="goes on"):
        follow(lambda: {"run_id": "1", "status": "running"}, timeout=5, interval=1,
               clock=clock, sleep=clock.sleep)
    assert clock.now == 5
