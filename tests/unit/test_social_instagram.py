"""Instagram mentions from the Graph API's /{ig-user-id}/tags: the page normaliser (on a
fixture in the documented shape) and the reading of Meta's rate-limit signals."""

from __future__ import annotations

import json
from pathlib import Path

import orjson
import pytest

from services.social.instagram import throttled, usage_wait
from services.social.messages import UnreadablePayload, from_instagram_tags_page, to_envelope

FIXTURES = Path(__file__).parents[1] / "fixtures" / "social"
BRAND = "17841400008460056"


def test_tagged_media_become_instagram_mentions_by_username():
    page = json.loads((FIXTURES / "instagram_tags_page.json").read_text())
    normalised = from_instagram_tags_page(page, BRAND)
    first, second = normalised.messages
    assert [s.reason for s in normalised.skipped] == ["own"]
    assert (first.platform, first.kind, first.author.handle) == (
        "instagram", "mention", "sara.virtanen")
    assert first.created_at.isoformat() == "2024-06-03T12:04:05+00:00"
    assert first.media and first.urls == ["https://www.instagram.com/p/C7xYz12AbCd/"]
    converted = to_envelope(first, source="instagram-poller")
    assert converted.key == "instagram_handle:sara.virtanen"
    assert converted.envelope.message_id == "social:instagram:17895695668004550"
    assert converted.envelope.payload["classification"]["label"] == "complaint"
    assert converted.envelope.payload["order_numbers"] == ["48213"]
    assert second.media == []


def test_a_page_that_is_not_a_graph_page_is_refused():
    with pytest.raises(UnreadablePayload):
        from_instagram_tags_page({"data": "nope"}, BRAND)


def test_usage_headers_give_metas_wait_and_the_highest_percentage():
    headers = {"x-business-use-case-usage": orjson.dumps({"1234": [
        {"type": "instagram", "call_count": 97, "total_cputime": 12, "total_time": 20,
         "estimated_time_to_regain_access": 3}]}).decode(),
        "x-app-usage": '{"call_count": 40, "total_time": 5, "total_cputime": 5}'}
    assert usage_wait(headers) == (180.0, 97)
    assert usage_wait({}) == (None, 0)
    assert usage_wait({"x-app-usage": "not json"}) == (None, 0)


@pytest.mark.parametrize(("status", "body", "expected"), [
    (429, None, True), (400, {"error": {"code": 80002}}, True),
    (403, {"error": {"code": 4}}, True), (400, {"error": {"code": 100}}, False),
    (200, {"data": []}, False),
])
def test_throttling_is_recognised_by_status_or_error_code(status, body, expected):
    assert throttled(status, body) is expected
