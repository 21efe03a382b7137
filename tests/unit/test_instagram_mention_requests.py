"""Instagram mention notifications (ids only) → a request to fetch on cdp.social.mentions, and
the Graph API's mentioned_media / mentioned_comment answers → the mention event."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest

from services.common import topics
from services.common.envelope import decode
from services.social import messages
from services.social.messages import (
    InstagramMention,
    from_instagram_mention,
    from_meta,
    mention_from_request,
    mention_request,
)
from services.social.publish import outgoing

FIXTURES = Path(__file__).parents[1] / "fixtures" / "social"
BRAND = "17841400008460056"


def fixture(name: str):
    return json.loads((FIXTURES / name).read_text())


def test_comment_mention_notification_becomes_a_request_to_fetch_not_an_event():
    normalised = from_meta(fixture("meta_instagram_mention.json"))
    assert normalised.messages == [] and normalised.skipped == []
    assert normalised.to_fetch == [InstagramMention(
        BRAND, "17918195224117851", "17894227972186120",
        datetime(2024, 6, 3, 9, 35, tzinfo=UTC))]
    [request] = outgoing(normalised)
    assert request.topic == topics.SOCIAL_MENTIONS
    assert request.key == "instagram:17918195224117851"
    envelope = request.value
    assert envelope.type == "Instagram Mention Notified" and envelope.channel == "system"
    assert envelope.message_id == "social:instagram-mention:17894227972186120"
    assert envelope.payload == {"account_id": BRAND, "media_id": "17918195224117851",
                                "comment_id": "17894227972186120"}


def test_request_survives_the_wire_and_reads_back_as_the_same_mention():
    [mention] = from_meta(fixture("meta_instagram_caption_mention.json")).to_fetch
    _key, envelope = mention_request(mention)
    assert mention_from_request(decode(envelope.to_bytes())) == mention
    assert mention.comment_id is None and mention.platform_id == "17920238422030506"


@pytest.mark.parametrize("value", [{"comment_id": "1789"}, {"media_id": "17920238422030506)"},
                                   {"media_id": "1792", "comment_id": "x{id}"}])
def test_mention_ids_that_are_not_decimal_are_refused_before_any_graph_call(value):
    delivery = {"object": "instagram", "entry": [
        {"id": BRAND, "changes": [{"field": "mentions", "value": value}]}]}
    normalised = from_meta(delivery)
    assert normalised.to_fetch == []
    assert [s.reason for s in normalised.skipped] == ["unsupported"]


def test_a_request_of_another_shape_is_unreadable():
    _key, envelope = mention_request(InstagramMention(BRAND, "1792"))
    tampered = decode(envelope.to_bytes().replace(b'"1792"', b'"1792 OR 1"'))
    with pytest.raises(messages.UnreadablePayload):
        mention_from_request(tampered)


def test_caption_mention_is_the_captions_author_text_and_time():
    mention = InstagramMention(BRAND, "17920238422030506")
    [message] = from_instagram_mention(mention, fixture("graph_mentioned_media.json")).messages
    converted = messages.to_envelope(message, source="instagram-mention")
    envelope = converted.envelope
    assert envelope.type == "Social Post Received"
    # the same id as the tags poller gives the same media: applied once downstream
    assert envelope.message_id == "social:instagram:17920238422030506"
    assert envelope.identifiers == {"instagram_handle": "sara.virtanen"}
    assert envelope.occurred_at == datetime(2024, 6, 3, 9, 35, 12, tzinfo=UTC)
    payload = envelope.payload
    assert payload["kind"] == "mention" and payload["author"] == {"handle": "sara.virtanen"}
    assert payload["text"].startswith("Paketti tuli taas myöhässä")
    assert payload["classification"]["complaint"] is True
    assert payload["order_numbers"] == ["48213"]
    assert payload["urls"] == ["https://www.instagram.com/p/C7xQw3LNh2k/"]
    assert payload["account_id"] == BRAND  # Luhn-valid, but an id, not a card number
    assert converted.cards_redacted == 0


def test_comment_mention_is_the_comments_author_text_and_time_on_its_media():
    mention = InstagramMention(BRAND, "17918195224117851", "17894227972186120")
    [message] = from_instagram_mention(mention, fixture("graph_mentioned_comment.json")).messages
    envelope = messages.to_envelope(message).envelope
    assert envelope.message_id == "social:instagram:17894227972186120"
    assert envelope.identifiers == {"instagram_handle": "mike_outdoors"}
    assert envelope.occurred_at == datetime(2024, 6, 3, 9, 31, 40, tzinfo=UTC)
    payload = envelope.payload
    assert payload["text"] == "@muistibrand my order 55120 never arrived and nobody answers"
    assert payload["in_reply_to"] == payload["conversation_id"] == "17918195224117851"
    assert payload["urls"] == ["https://www.instagram.com/p/C7wAb34CdEf/"]


def test_an_answer_without_a_username_is_skipped_as_no_author():
    answer = fixture("graph_mentioned_media.json")
    del answer["mentioned_media"]["username"]
    normalised = from_instagram_mention(InstagramMention(BRAND, "17920238422030506"), answer)
    assert normalised.messages == []
    assert [s.reason for s in normalised.skipped] == ["no_author"]


def test_an_answer_for_the_other_edge_is_unreadable():
    with pytest.raises(messages.UnreadablePayload):
        from_instagram_mention(InstagramMention(BRAND, "1792", "1789"),
                               fixture("graph_mentioned_media.json"))
