"""The page-scoped erasures of Meta's deletion callback without a network: what a failure leaves
pending, when the worker tries again, and when it gives up."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from services.social import meta_ids, privacy
from services.social.filing import FilingFailed
from services.social.meta_ids import PageScopedIds, ResolutionFailed, ResolutionRefused
from services.social.page_scoped import (
    GIVE_UP_AFTER,
    PageScopedErasures,
    PendingResolution,
    PendingResolutionStore,
)

SECRET = "meta-secret"
START = datetime(2024, 6, 4, 8, 0, tzinfo=UTC)


class Pending(PendingResolutionStore):
    def __init__(self):
        self.resolutions: dict[str, dict] = {}
        self.given_up: list[str] = []

    def add(self, request, retry_at, refused_since):
        self.resolutions[request.confirmation_code] = {
            "request": request, "retry_at": retry_at, "refused_since": refused_since}

    def due(self, now):
        return [PendingResolution(r["request"], r["refused_since"])
                for r in self.resolutions.values() if r["retry_at"] <= now]

    def reschedule(self, confirmation_code, retry_at, refused_since):
        self.resolutions[confirmation_code].update(retry_at=retry_at,
                                                   refused_since=refused_since)

    def remove(self, confirmation_code):
        self.resolutions.pop(confirmation_code, None)

    def give_up(self, confirmation_code, at):
        self.given_up.append(confirmation_code)
        self.remove(confirmation_code)


class GraphApi:
    """Answers ``psids``, or raises the next of ``failures`` while there are any."""

    def __init__(self, psids, failures=()):
        self.psids = psids
        self.failures = list(failures)
        self.asked = 0

    def resolve(self, app_scoped_id):
        self.asked += 1
        if self.failures:
            raise self.failures.pop(0)
        return self.psids


class PrivacyService:
    def __init__(self, failures=0):
        self.failures = failures
        self.filed: list[tuple[str, str]] = []

    def file(self, deletion, part_of=None):
        if self.failures:
            self.failures -= 1
            raise FilingFailed("the privacy service is unreachable")
        (_type, value), = deletion.identifiers
        self.filed.append((value, part_of))


class Clock:
    def __init__(self):
        self.at = START

    def __call__(self):
        return self.at


def callback_request():
    return privacy.from_meta_signed_request({"user_id": "1000001", "issued_at": 1717405200},
                                            SECRET)


def request_code():
    return callback_request().confirmation_code


def erasures(graph, service, pending, clock):
    return PageScopedErasures(graph.resolve, service.file, pending, SECRET, now=clock)


def test_a_graph_api_outage_at_callback_time_leaves_only_the_app_scoped_id_pending():
    pending, clock, service = Pending(), Clock(), PrivacyService()
    request = callback_request()
    erasures(GraphApi(["2001"], [ResolutionFailed("timed out")]), service, pending,
             clock).erase_or_defer(request)
    assert service.filed == []
    stored = pending.resolutions[request.confirmation_code]
    assert stored["request"].identifiers == (("facebook_id", "1000001"),)
    assert stored["retry_at"] == START + timedelta(minutes=1)
    assert stored["refused_since"] is None


def test_a_failed_filing_of_a_part_leaves_the_resolution_pending():
    pending, clock = Pending(), Clock()
    request = callback_request()
    erasures(GraphApi(["2001", "2002"]), PrivacyService(failures=1), pending,
             clock).erase_or_defer(request)
    assert request.confirmation_code in pending.resolutions


def test_the_worker_files_every_part_once_the_graph_api_is_back_and_forgets_the_id():
    pending, clock, service = Pending(), Clock(), PrivacyService()
    graph = GraphApi(["2001", "2002"], [ResolutionFailed("timed out")] * 2)
    erase = erasures(graph, service, pending, clock)
    request = callback_request()
    erase.erase_or_defer(request)

    assert erase.retry_due() == 0 and graph.asked == 1  # not due yet
    clock.at += timedelta(minutes=1)
    assert erase.retry_due() == 0 and graph.asked == 2  # still down: a minute more
    clock.at += timedelta(minutes=1)
    assert erase.retry_due() == 1
    assert service.filed == [("2001", request.confirmation_code),
                             ("2002", request.confirmation_code)]
    assert pending.resolutions == {}


def test_a_retried_callback_that_succeeds_removes_the_pending_resolution():
    pending, clock, service = Pending(), Clock(), PrivacyService()
    graph = GraphApi(["2001"], [ResolutionFailed("timed out")])
    erase = erasures(graph, service, pending, clock)
    erase.erase_or_defer(callback_request())
    erase.erase_or_defer(callback_request())
    assert pending.resolutions == {} and service.filed == [("2001", request_code())]


def test_a_permanent_refusal_is_retried_hourly_and_given_up_after_a_week_of_refusals():
    pending, clock, service = Pending(), Clock(), PrivacyService()
    refused = ResolutionRefused("ids_for_pages answered 400")
    graph = GraphApi(["2001"], [refused] * 1000)
    erase = erasures(graph, service, pending, clock)
    request = callback_request()
    erase.erase_or_defer(request)
    assert pending.resolutions[request.confirmation_code]["retry_at"] == START + timedelta(
        hours=1)

    while request.confirmation_code in pending.resolutions:
        clock.at += timedelta(minutes=1)
        erase.retry_due()

    assert pending.given_up == [request.confirmation_code]
    assert clock.at - START == GIVE_UP_AFTER
    assert graph.asked == 1 + GIVE_UP_AFTER / timedelta(hours=1)
    assert service.filed == []


def test_an_outage_between_refusals_restarts_the_week_before_giving_up():
    pending, clock = Pending(), Clock()
    graph = GraphApi(["2001"], [ResolutionRefused("400"), ResolutionFailed("timed out")]
                     + [ResolutionRefused("400")] * 1000)
    erase = erasures(graph, PrivacyService(), pending, clock)
    request = callback_request()
    erase.erase_or_defer(request)
    clock.at += timedelta(hours=1)
    erase.retry_due()  # the outage: refusals are counted afresh from the next one
    assert pending.resolutions[request.confirmation_code]["refused_since"] is None
    clock.at += timedelta(minutes=1)
    erase.retry_due()
    refused_again = clock.at
    assert pending.resolutions[request.confirmation_code]["refused_since"] == refused_again

    clock.at = START + GIVE_UP_AFTER
    erase.retry_due()
    assert pending.given_up == []
    clock.at = refused_again + GIVE_UP_AFTER
    erase.retry_due()
    assert pending.given_up == [request.confirmation_code]


def test_an_unexpected_failure_of_one_resolution_stops_no_other_and_is_retried_hourly():
    pending, clock, service = Pending(), Clock(), PrivacyService()
    graph = GraphApi(["2001"], [ValueError("the Graph API gave an id that is no valid id")])
    erase = erasures(graph, service, pending, clock)
    broken, other = callback_request(), privacy.from_meta_signed_request(
        {"user_id": "1000002", "issued_at": 1717405200}, SECRET)
    pending.add(broken, START, None)
    pending.add(other, START, None)

    assert erase.retry_due() == 1

    assert list(pending.resolutions) == [broken.confirmation_code]
    assert pending.resolutions[broken.confirmation_code]["retry_at"] == START + timedelta(
        hours=1)


def test_due_resolutions_are_retried_a_chunk_at_a_time_with_pauses_between():
    pending, clock, service = Pending(), Clock(), PrivacyService()
    erase = erasures(GraphApi(["2001"]), service, pending, clock)
    for user_id in range(25):
        request = privacy.from_meta_signed_request(
            {"user_id": str(1000 + user_id), "issued_at": 1717405200}, SECRET)
        pending.add(request, START, None)
    pauses = []
    assert erase.retry_due(lambda took: pauses.append(took) or False) == 25
    assert len(pauses) == 3 and pending.resolutions == {}


def test_a_pause_asking_to_stop_leaves_the_rest_pending():
    pending, clock = Pending(), Clock()
    erase = erasures(GraphApi(["2001"]), PrivacyService(), pending, clock)
    for user_id in range(25):
        request = privacy.from_meta_signed_request(
            {"user_id": str(1000 + user_id), "issued_at": 1717405200}, SECRET)
        pending.add(request, START, None)
    assert erase.retry_due(lambda took: True) == 10
    assert len(pending.resolutions) == 15


class Answer:
    def __init__(self, status_code):
        self.status_code = status_code
        self.text = "{}"


@pytest.mark.parametrize(("status", "refused"), [
    (400, True), (403, True), (404, True), (429, False), (500, False), (503, False)])
def test_only_a_client_error_other_than_throttling_is_a_permanent_refusal(
        monkeypatch, status, refused):
    monkeypatch.setattr(meta_ids.requests, "get", lambda *args, **kwargs: Answer(status))
    with pytest.raises(ResolutionFailed) as raised:
        PageScopedIds("https://graph.example/v21.0", "1", SECRET).resolve("1000001")
    assert isinstance(raised.value, ResolutionRefused) is refused
