"""Platform payloads (the fixtures are the platforms' documented shapes) → social envelopes."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest

from services.common.envelope import decode
from services.common.hetu_protection import is_sealed_hetu
from services.common.identifiers import is_hetu_digest
from services.social import messages
from services.social.messages import from_collector, from_meta, from_x_activity, from_x_v2_page
from services.social.publish import outgoing
from tests.support.hetus import in_memory_protector

HETUS = in_memory_protector(b"unit-test-digest-key")

FIXTURES = Path(__file__).parents[1] / "fixtures" / "social"


def fixture(name: str):
    return json.loads((FIXTURES / name).read_text())


def envelopes(normalised):
    return [messages.to_envelope(m) for m in normalised.messages]


def test_facebook_page_comment_becomes_a_finnish_complaint_post():
    [converted] = envelopes(from_meta(fixture("meta_page_feed_comment.json")))
    envelope = converted.envelope
    assert envelope.type == "Social Post Received"
    assert envelope.channel == "social"
    assert envelope.message_id == "social:facebook:798765432109876_1122334455667788"
    assert envelope.identifiers == {"facebook_id": "7012345678901234"}
    assert converted.key == "facebook_id:7012345678901234"
    payload = envelope.payload
    assert payload["platform"] == "facebook" and payload["kind"] == "comment"
    assert payload["author"] == {"id": "7012345678901234", "name": "Anna Virtanen"}
    assert payload["language"] == "fi"
    assert payload["classification"]["complaint"] is True
    assert payload["order_numbers"] == ["12345"]
    assert payload["in_reply_to"] == "105510528145390_798765432109876"
    assert envelope.occurred_at == datetime(2024, 6, 3, 9, 0, tzinfo=UTC)


def test_facebook_page_mention_names_its_sender():
    [converted] = envelopes(from_meta(fixture("meta_page_mention.json")))
    assert converted.envelope.payload["kind"] == "mention"
    assert converted.envelope.identifiers == {"facebook_id": "6543210987654"}
    assert converted.envelope.payload["author"]["name"] == "Mikko Korhonen"


def test_messenger_message_is_a_direct_message_with_the_card_number_redacted():
    [converted] = envelopes(from_meta(fixture("meta_messenger_message.json")))
    envelope = converted.envelope
    assert envelope.type == "Social Message Received"
    assert envelope.payload["kind"] == "direct_message"
    assert envelope.identifiers == {"facebook_id": "6789012345678901"}
    assert "4111" not in envelope.payload["text"]
    assert "[REDACTED CARD]" in envelope.payload["text"]
    assert converted.cards_redacted == 1
    assert envelope.payload["claimed_identifiers"] == [{"type": "phone", "value": "+358401234567"}]
    assert "phone" not in envelope.identifiers  # a claim is never an identifier of the event
    assert envelope.occurred_at == datetime(2024, 6, 3, 9, 13, 20, 123000, tzinfo=UTC)


def test_page_echoes_and_read_receipts_produce_nothing():
    normalised = from_meta(fixture("meta_messenger_echo.json"))
    assert normalised.messages == []
    assert [s.reason for s in normalised.skipped] == ["own", "unsupported"]


def test_instagram_comment_carries_id_and_handle_and_is_praise_despite_the_negation():
    [converted] = envelopes(from_meta(fixture("meta_instagram_comment.json")))
    envelope = converted.envelope
    assert envelope.identifiers == {"instagram_id": "17841405309211844",
                                    "instagram_handle": "kahvi.kuppi_"}
    assert envelope.message_id == "social:instagram:17865799348089039"
    assert envelope.payload["classification"]["label"] == "praise"
    assert envelope.payload["classification"]["complaint"] is False


def test_tweet_mentioning_the_brand_is_an_english_complaint_with_links():
    [converted] = envelopes(from_x_activity(fixture("x_tweet_mention.json")))
    envelope = converted.envelope
    assert envelope.message_id == "social:x:1797560000000000001"
    assert envelope.identifiers == {"twitter_id": "6253282", "twitter_handle": "anna_virtanen"}
    assert converted.key == "twitter_id:6253282"
    payload = envelope.payload
    assert payload["kind"] == "mention"
    assert payload["language"] == "en"
    assert payload["classification"]["complaint"] is True
    assert "https://example.com/orders/12345" in payload["urls"]
    assert payload["mentions"] == ["MuistiBrand"]
    assert envelope.occurred_at == datetime(2024, 6, 3, 9, 15, tzinfo=UTC)


def test_reply_and_quote_are_kept_and_retweets_and_own_tweets_skipped():
    normalised = from_x_activity(fixture("x_tweet_reply_and_quote.json"))
    kinds = {m.platform_id: m.kind for m in normalised.messages}
    assert kinds == {"1797570000000000002": "reply", "1797571000000000003": "quote"}
    assert sorted(s.reason for s in normalised.skipped) == ["own", "retweet"]
    reply, quote = envelopes(normalised)
    assert reply.envelope.payload["in_reply_to"] == "1797500000000000000"
    assert reply.envelope.payload["classification"]["complaint"] is True  # "ei toimi"
    assert quote.envelope.payload["text"].startswith("Tack för snabb hjälp! Jättebra")
    assert quote.envelope.payload["language"] == "sv"
    assert quote.envelope.payload["classification"]["label"] == "praise"


def test_direct_message_uses_the_users_map_and_skips_the_brands_own_reply():
    normalised = from_x_activity(fixture("x_direct_message.json"))
    [converted] = envelopes(normalised)
    envelope = converted.envelope
    assert envelope.type == "Social Message Received"
    assert envelope.identifiers == {"twitter_id": "6253282", "twitter_handle": "anna_virtanen"}
    assert envelope.payload["author"]["name"] == "Anna V"
    assert envelope.payload["claimed_identifiers"] == [
        {"type": "email", "value": "anna.v@example.com"}]
    assert envelope.payload["order_numbers"] == ["12345"]
    assert [s.reason for s in normalised.skipped] == ["own"]


def test_tweets_from_blocked_authors_are_suppressed():
    normalised = from_x_activity(fixture("x_tweet_from_blocked_user.json"))
    assert normalised.messages == []
    assert [s.reason for s in normalised.skipped] == ["blocked"]


def test_poller_page_gives_the_same_message_ids_as_the_webhook_would():
    normalised = from_x_v2_page(fixture("x_v2_mentions_page.json"), "2244994945")
    converted = envelopes(normalised)
    assert [c.envelope.message_id for c in converted] == [
        "social:x:1797600000000000031", "social:x:1797600000000000030"]
    swedish, question = (c.envelope for c in converted)
    assert swedish.identifiers == {"twitter_id": "77665544", "twitter_handle": "erik_s"}
    assert swedish.payload["classification"]["complaint"] is True
    assert question.payload["kind"] == "reply"
    assert question.payload["classification"]["label"] == "question"


def test_collector_post_for_another_network_needs_identifiers():
    post = {"platform": "trustpilot", "message_id": "r-1", "kind": "review",
            "author": {"name": "Anna"}, "text": "Terrible delivery", "identifiers": {}}
    message = from_collector(post, HETUS)
    with pytest.raises(messages.Unattributable):
        messages.to_envelope(message)
    message = from_collector({**post, "identifiers": {"email": "Anna@Example.com"}}, HETUS)
    converted = messages.to_envelope(message)
    assert converted.envelope.identifiers == {"email": "anna@example.com"}
    assert converted.key == "email:anna@example.com"
    assert converted.envelope.message_id == "social:trustpilot:r-1"


@pytest.mark.parametrize("given", [{"hetu": "131052-308t"}, {"user_id": "131052-308T"},
                                   {"hetu": "131052-308T", "email": "anna@example.com"}])
def test_a_collectors_hetu_travels_as_digest_and_sealed_trait_never_in_the_clear(given):
    post = {"platform": "trustpilot", "message_id": "r-2", "kind": "review",
            "author": {"name": "Anna"}, "text": "Kiitos!", "identifiers": given}
    converted = messages.to_envelope(from_collector(post, HETUS))
    identifiers = converted.envelope.identifiers
    assert "user_id" not in identifiers
    assert identifiers["hetu"] == HETUS.digest("131052-308T")
    assert is_hetu_digest(identifiers["hetu"])
    assert is_sealed_hetu(converted.envelope.payload["traits"]["hetu"])
    assert HETUS.reveal(converted.envelope.payload["traits"]["hetu"]) == "131052-308T"
    for wire in (converted.key, converted.envelope.to_bytes().decode()):
        assert "131052" not in wire


def test_an_invalid_hetu_from_a_collector_is_left_out_like_any_invalid_identifier():
    post = {"platform": "trustpilot", "message_id": "r-3", "kind": "review",
            "author": {"name": "Anna"}, "identifiers": {"hetu": "131052-308X",
                                                        "email": "anna@example.com"}}
    converted = messages.to_envelope(from_collector(post, HETUS))
    assert converted.envelope.identifiers == {"email": "anna@example.com"}
    assert "131052" not in converted.envelope.to_bytes().decode()


@pytest.mark.parametrize("created_at", ["0001-01-01T00:00:00+02:00", "1999-12-31T23:59:59Z",
                                        "9999-12-31T23:00:00-05:00"])
def test_a_platform_time_that_cannot_be_the_events_is_replaced_by_the_time_received(
        created_at):
    page = fixture("x_v2_mentions_page.json")
    page["data"][0]["created_at"] = created_at
    converted = envelopes(from_x_v2_page(page, "2244994945"))[0]
    assert abs(converted.envelope.occurred_at - datetime.now(UTC)).total_seconds() < 60
    assert decode(converted.envelope.to_bytes()) == converted.envelope


@pytest.mark.parametrize("name", sorted(p.name for p in FIXTURES.glob("*.json")
                                        if p.name.startswith(("meta_", "x_tweet", "x_direct"))))
def test_every_webhook_fixture_yields_envelopes_that_survive_the_wire(name):
    delivery = fixture(name)
    normalised = from_meta(delivery) if name.startswith("meta_") else from_x_activity(delivery)
    for message in outgoing(normalised):
        assert decode(message.value.to_bytes()) == message.value


@pytest.mark.parametrize("delivery", [[], {"entry": "x", "object": "page"},
                                      {"object": "user", "entry": []}, "text"])
def test_a_delivery_that_is_not_metas_shape_is_unreadable(delivery):
    with pytest.raises(messages.UnreadablePayload):
        from_meta(delivery)


def test_an_x_delivery_without_for_user_id_is_unreadable():
    with pytest.raises(messages.UnreadablePayload):
        from_x_activity({"tweet_create_events": []})


def test_an_overlong_platform_id_still_gives_a_bounded_message_id():
    assert len(messages.message_id_for("x", "9" * 500)) <= 128


def test_instagram_direct_message_is_attributed_to_the_instagram_id():
    delivery = {"object": "instagram", "entry": [{"id": "17841400008460056", "time": 1717407000,
                "messaging": [{"sender": {"id": "1234567890123456"},
                               "recipient": {"id": "17841400008460056"},
                               "timestamp": 1717407000000,
                               "message": {"mid": "aWdfZAG1faXRlbTox", "text": "Hei?"}}]}]}
    [converted] = envelopes(from_meta(delivery))
    assert converted.envelope.identifiers == {"instagram_id": "1234567890123456"}
    assert converted.envelope.payload["kind"] == "direct_message"
