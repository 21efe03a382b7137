"""The compliance stream reader's decisions without a network: how much backfill a reconnect
asks for, which lines become deletions, and that a deletion is kept until it is filed."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import orjson
import pytest

from services.social.compliance_stream import (
    ComplianceReader,
    ComplianceSource,
    PendingDeletionStore,
    StreamEnded,
    StreamPositionStore,
    backfill_minutes,
    parse_partitions,
)

NOW = datetime(2024, 6, 4, 8, 0, tzinfo=UTC)


class Positions(StreamPositionStore):
    def __init__(self):
        self.seen = {}

    def load(self, name):
        return self.seen.get(name)

    def save(self, name, last_seen):
        self.seen[name] = last_seen


class Pending(PendingDeletionStore):
    def __init__(self):
        self.deletions = {}

    def add(self, deletion):
        self.deletions.setdefault(deletion.request_id, deletion)

    def all(self):
        return list(self.deletions.values())

    def remove(self, request_id):
        self.deletions.pop(request_id)


class Lines(ComplianceSource):
    def __init__(self, lines):
        self._lines = lines
        self.asked = []

    def lines(self, partition, backfill):
        self.asked.append((partition, backfill))
        yield from self._lines

    def close(self):
        pass


def line(name, user_id):
    return orjson.dumps({"data": {name: {"user": {"id": user_id},
                                         "event_at": "2024-06-04T07:59:00.000Z"}}})


def reader(lines, file):
    return ComplianceReader(1, Lines(lines), Positions(), Pending(), file, "secret",
                            now=lambda: NOW)


@pytest.mark.parametrize(("gap", "minutes"), [
    (timedelta(seconds=5), 1), (timedelta(seconds=61), 2), (timedelta(minutes=4), 4),
    (timedelta(minutes=5), 5), (timedelta(hours=2), 5), (timedelta(seconds=-3), 1),
])
def test_backfill_covers_the_time_since_the_stream_was_last_heard_within_x_limit(gap, minutes):
    assert backfill_minutes(NOW - gap, NOW) == minutes


def test_a_first_start_asks_for_no_backfill():
    assert backfill_minutes(None, NOW) is None


def test_partitions_setting_is_parsed_sorted_and_deduplicated():
    assert parse_partitions("4, 1,4") == [1, 4]


def test_erasing_events_are_filed_and_others_ignored():
    filed = []
    stream_reader = reader([line("user_delete", "6253282"), b"",
                            line("user_unsuspend", "6253283"), b"not json",
                            line("user_suspend", "6253284")], filed.append)
    assert stream_reader.read_connection() == 5
    assert [d.identifiers for d in filed] == [(("twitter_id", "6253282"),),
                                             (("twitter_id", "6253284"),)]
    assert stream_reader.positions.load("x-user-compliance-1") == NOW
    assert stream_reader.source.asked == [(1, None)]


def test_a_failed_filing_keeps_the_deletion_until_a_later_attempt_succeeds():
    attempts = []

    def file(deletion):
        attempts.append(deletion.request_id)
        if len(attempts) == 1:
            raise ConnectionError("privacy service down")

    stream_reader = reader([line("user_protect", "99887766")], file)
    stream_reader.read_connection()
    assert len(stream_reader.pending.all()) == 1
    assert stream_reader.file_pending() == 1
    assert stream_reader.pending.all() == []
    assert attempts[0] == attempts[1]  # the same request id: filing it twice is harmless


def test_an_error_object_from_x_ends_the_connection():
    errors = orjson.dumps({"errors": [{"title": "operational-disconnect"}]})
    with pytest.raises(StreamEnded):
        reader([errors], lambda deletion: None).read_connection()
