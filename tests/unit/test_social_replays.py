"""Signed webhook events too old to tell from a replay: which are refused and by which time."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

from services.common.store import ProcessedLedger
from services.social.messages import (
    Author,
    InstagramMention,
    Normalised,
    Skipped,
    SocialMessage,
    from_meta,
)
from services.social.replays import OLDEST_AGE, without_replays

NOW = datetime(2026, 6, 20, 12, 0, tzinfo=UTC)
FIXTURES = Path(__file__).parents[1] / "fixtures" / "social"


def tweet(platform_id: str, created_at: datetime | None) -> SocialMessage:
    return SocialMessage(platform="x", platform_id=platform_id, kind="mention",
                         author=Author(id="6253282"), text="@brand", created_at=created_at)


def test_the_oldest_event_taken_is_a_day_younger_than_the_ledger_remembers():
    # a platform's clock may run a day ahead of ours (event_times.AHEAD)
    assert OLDEST_AGE == ProcessedLedger.RETENTION - timedelta(days=1) == timedelta(days=13)


def test_webhook_events_and_mentions_older_than_the_ledger_remembers_are_taken_out():
    old, fresh = NOW - OLDEST_AGE - timedelta(seconds=1), NOW - OLDEST_AGE
    skipped = [Skipped("x", "own")]
    normalised = Normalised(
        messages=[tweet("old", old), tweet("fresh", fresh), tweet("no-time", None)],
        skipped=skipped,
        to_fetch=[InstagramMention("1", "10", None, old), InstagramMention("1", "11", None, fresh),
                  InstagramMention("1", "12", None, None)])

    kept, refused = without_replays(normalised, NOW)

    assert refused == 2
    # one without a usable time has nothing to judge it by
    assert [message.platform_id for message in kept.messages] == ["fresh", "no-time"]
    assert [mention.media_id for mention in kept.to_fetch] == ["11", "12"]
    assert kept.skipped == skipped


def test_a_meta_page_mention_is_judged_by_its_entrys_time_having_none_of_its_own():
    delivery = json.loads((FIXTURES / "meta_page_mention.json").read_text())
    [entry] = delivery["entry"]
    assert "created_time" not in entry["changes"][0]["value"]

    [mention] = from_meta(delivery).messages

    assert mention.created_at == datetime.fromtimestamp(entry["time"], UTC)
    assert without_replays(from_meta(delivery), NOW)[1] == 1
