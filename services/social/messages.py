"""Platform payloads turned into Muisti's normalised social events. Pure functions.

Inputs: Meta webhook deliveries (Facebook page ``feed`` comments and posts, page ``mention``,
Messenger ``messaging``, Instagram ``comments`` and ``mentions``), X Account Activity deliveries
(``tweet_create_events``, ``direct_message_events``), X API v2 mention pages (the poller),
Instagram Graph API ``/{ig-user-id}/tags`` pages (the Instagram poller) and the collector's own
form (``POST /v1/social/posts``).

Each becomes a ``SocialMessage`` and then an envelope on cdp.events.social:

* ``type`` ``Social Message Received`` for direct messages, ``Social Post Received`` for
  public posts, comments, replies, quotes, mentions and reviews; ``channel`` ``social``;
* ``message_id`` ``social:<platform>:<platform's id>``, so a platform's retry, or the webhook
  and the poller seeing the same post, is applied once downstream;
* ``identifiers`` the author's platform identifiers (twitter_id / twitter_handle, facebook_id,
  instagram_id / instagram_handle), normalised;
* key ``<type>:<value>`` of the author's platform id.

What is left out (counted by the caller through ``Skipped``): the brand's own posts and
messages, retweets, edits and removals, authors the brand blocked, and notifications that name
no author.

An Instagram ``mentions`` notification carries only ids (``media_id``, and ``comment_id`` when
the mention is in a comment): it becomes an ``InstagramMention`` to fetch, put on
cdp.social.mentions as a ``mention_request`` envelope; the worker fetches the caption or
comment from the Graph API and ``from_instagram_mention`` turns the answer into the message.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from services.common.envelope import Envelope, new_envelope
from services.common.event_times import usable
from services.common.hetu_protection import HetuProtector
from services.common.identifiers import InvalidIdentifier, normalise
from services.common.redaction import (
    redact_card_numbers,
    redact_hetus,
    redact_hetus_in,
    redact_in,
)
from services.social.classify import classify

KINDS = ("post", "comment", "reply", "quote", "mention", "direct_message", "review")
PUBLIC_TYPE = "Social Post Received"
PRIVATE_TYPE = "Social Message Received"
# the author identifier that keys a platform's events, then the others it may carry
AUTHOR_ID_TYPES = {"x": ("twitter_id", "twitter_handle"), "facebook": ("facebook_id", None),
                   "instagram": ("instagram_id", "instagram_handle")}

_URL_RE = re.compile(r"https?://[^\s<>\"']+")
_EMAIL_RE = re.compile(r"[\w.+-]+@[\w-]+(?:\.[\w-]+)+")
_PHONE_RE = re.compile(r"(?<![\w+])(?:\+|00)?\d[\d \-]{6,16}\d(?!\w)")
# payload fields holding platform ids, which card-number redaction must not touch
ID_FIELDS = ("platform_message_id", "in_reply_to", "conversation_id", "account_id")
_GRAPH_ID_RE = re.compile(r"^[0-9]{1,40}$")  # Graph API object ids are decimal numbers
_ORDER_RE = re.compile(
    r"\b(?:orders?|ordernummer|ordernr|tilau\w*|beställning\w*)"
    r"\s*(?:#|nro\.?|nr\.?|number|numero)?\s*:?\s*#?(\d{4,12})\b", re.IGNORECASE)


class UnreadablePayload(ValueError):
    """A delivery that is not the platform's documented shape (answered 400)."""


@dataclass(frozen=True)
class Author:
    id: str | None = None
    handle: str | None = None
    name: str | None = None


@dataclass(frozen=True)
class SocialMessage:
    platform: str
    platform_id: str
    kind: str
    author: Author
    text: str
    created_at: datetime | None = None
    in_reply_to: str | None = None
    conversation_id: str | None = None
    urls: list[str] = field(default_factory=list)
    mentions: list[str] = field(default_factory=list)
    media: list[str] = field(default_factory=list)
    language_hint: str | None = None
    account_id: str | None = None  # the brand's page or account the message was sent to
    extra_identifiers: dict[str, str] = field(default_factory=dict)
    traits: dict[str, str] = field(default_factory=dict)  # a hetu's sealed copy, if given


@dataclass(frozen=True)
class Skipped:
    platform: str
    reason: str  # own, retweet, not_added, blocked, no_author, unsupported


@dataclass
class Converted:
    envelope: Envelope
    key: str
    cards_redacted: int = 0


@dataclass(frozen=True)
class InstagramMention:
    """The brand's Instagram account (``account_id``) was @mentioned in the caption of
    ``media_id``, or in the comment ``comment_id`` on it."""

    account_id: str
    media_id: str
    comment_id: str | None = None
    notified_at: datetime | None = None

    @property
    def platform_id(self) -> str:
        return self.comment_id or self.media_id


@dataclass
class Normalised:
    messages: list[SocialMessage] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)
    to_fetch: list[InstagramMention] = field(default_factory=list)  # ids only: text fetched


# --- time helpers: a platform's time, in UTC, or None (the time received) when it cannot be an
# event's (services.common.event_times) ---------------------------------------------------------

def _from_epoch(value: Any) -> datetime | None:
    """Seconds or milliseconds since the epoch (Meta uses both)."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    if number > 1e11:
        number /= 1000.0
    try:
        return usable(datetime.fromtimestamp(number, UTC))
    except (OverflowError, OSError, ValueError):
        return None


def _from_iso(value: Any) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        return usable(datetime.fromisoformat(value.replace("Z", "+00:00")))
    except ValueError:
        return None


def _from_twitter_date(value: Any) -> datetime | None:
    """v1.1's ``Wed Oct 10 20:19:24 +0000 2018``."""
    if not isinstance(value, str):
        return None
    try:
        return usable(datetime.strptime(value, "%a %b %d %H:%M:%S %z %Y"))
    except ValueError:
        return None


def _str(value: Any) -> str | None:
    if value is None or isinstance(value, bool) or isinstance(value, dict | list):
        return None
    text = str(value).strip()
    return text or None


def _objects(value: Any) -> list[dict]:
    return [item for item in value if isinstance(item, dict)] if isinstance(value, list) else []


# --- Meta --------------------------------------------------------------------------------------

def from_meta(delivery: Any) -> Normalised:
    """A Meta webhook delivery (``object`` page or instagram) → messages; one whose item
    carries no time of its own (a page ``mention``) takes its entry's ``time``, when Meta
    sent the update.

    Raises UnreadablePayload unless it is an object with ``object`` and an ``entry`` list."""
    if not isinstance(delivery, dict) or not isinstance(delivery.get("entry"), list):
        raise UnreadablePayload("a Meta delivery is an object with an 'entry' list")
    kind = delivery.get("object")
    if kind not in ("page", "instagram"):
        raise UnreadablePayload("'object' must be 'page' or 'instagram'")
    result = Normalised()
    for entry in _objects(delivery["entry"]):
        account = _str(entry.get("id"))
        entry_time = _from_epoch(entry.get("time"))
        for event in _objects(entry.get("messaging")):
            _add(result, _messenger(event, account, _platform(kind), entry_time),
                 _platform(kind))
        for change in _objects(entry.get("changes")):
            value = change.get("value")
            if not isinstance(value, dict):
                result.skipped.append(Skipped(_platform(kind), "unsupported"))
                continue
            field_name = change.get("field")
            if kind == "page" and field_name == "feed":
                outcome = _page_feed(value, account, entry_time)
            elif kind == "page" and field_name == "mention":
                outcome = _page_mention(value, account, entry_time)
            elif kind == "instagram" and field_name in ("comments", "live_comments"):
                outcome = _instagram_comment(value, account, entry_time)
            elif kind == "instagram" and field_name == "mentions":
                outcome = _instagram_mention(value, account, entry_time)
                if isinstance(outcome, InstagramMention):
                    result.to_fetch.append(outcome)
                    continue
            else:
                outcome = Skipped(_platform(kind), "unsupported")
            _add(result, outcome, _platform(kind))
    return result


def _platform(meta_object: Any) -> str:
    return "instagram" if meta_object == "instagram" else "facebook"


def _add(result: Normalised, outcome: SocialMessage | Skipped | None, platform: str) -> None:
    if isinstance(outcome, SocialMessage):
        result.messages.append(outcome)
    else:
        result.skipped.append(outcome or Skipped(platform, "unsupported"))


def _messenger(event: dict, account: str | None, platform: str,
               entry_time: datetime | None) -> SocialMessage | Skipped | None:
    """A Messenger (or Instagram messaging) event; the sender's id is page- (or Instagram-)
    scoped."""
    message = event.get("message")
    sender = _str((event.get("sender") or {}).get("id"))
    if not isinstance(message, dict) or not _str(message.get("mid")):
        return None  # deliveries, reads, postbacks: not a customer's message
    if message.get("is_echo") or (sender and sender == account):
        return Skipped(platform, "own")
    if not sender:
        return Skipped(platform, "no_author")
    attachments = _objects(message.get("attachments"))
    media = [url for a in attachments
             if (url := _str((a.get("payload") or {}).get("url"))) and a.get("type") != "fallback"]
    reply_to = message.get("reply_to") if isinstance(message.get("reply_to"), dict) else {}
    return SocialMessage(
        platform=platform, platform_id=str(message["mid"]), kind="direct_message",
        author=Author(id=sender), text=_str(message.get("text")) or "",
        created_at=_from_epoch(event.get("timestamp")) or entry_time,
        in_reply_to=_str(reply_to.get("mid")),
        media=media, account_id=account)


def _page_feed(value: dict, account: str | None,
               entry_time: datetime | None) -> SocialMessage | Skipped | None:
    item = value.get("item")
    if item not in ("comment", "post", "status", "photo", "video", "share"):
        return Skipped("facebook", "unsupported")  # reactions, likes, events...
    if value.get("verb") != "add":
        return Skipped("facebook", "not_added")
    sender = value.get("from") if isinstance(value.get("from"), dict) else {}
    author_id = _str(sender.get("id"))
    if not author_id:
        return Skipped("facebook", "no_author")
    if author_id == account:
        return Skipped("facebook", "own")
    is_comment = item == "comment"
    platform_id = _str(value.get("comment_id") if is_comment else value.get("post_id"))
    if not platform_id:
        return Skipped("facebook", "unsupported")
    parent = _str(value.get("parent_id"))
    post_id = _str(value.get("post_id"))
    kind = "reply" if is_comment and parent and parent != post_id else (
        "comment" if is_comment else "post")
    media = [link for key in ("photo", "video", "link") if (link := _str(value.get(key)))]
    return SocialMessage(
        platform="facebook", platform_id=platform_id, kind=kind,
        author=Author(id=author_id, name=_str(sender.get("name"))),
        text=_str(value.get("message")) or "",
        created_at=_from_epoch(value.get("created_time")) or entry_time,
        in_reply_to=parent, conversation_id=post_id, media=media, account_id=account)


def _page_mention(value: dict, account: str | None,
                  entry_time: datetime | None) -> SocialMessage | Skipped:
    if value.get("verb") != "add":
        return Skipped("facebook", "not_added")
    author_id = _str(value.get("sender_id"))
    if not author_id:
        return Skipped("facebook", "no_author")
    platform_id = _str(value.get("comment_id") if value.get("item") == "comment"
                       else value.get("post_id"))
    if not platform_id:
        return Skipped("facebook", "unsupported")
    return SocialMessage(
        platform="facebook", platform_id=platform_id, kind="mention",
        author=Author(id=author_id, name=_str(value.get("sender_name"))),
        text=_str(value.get("message")) or "",
        created_at=_from_epoch(value.get("created_time")) or entry_time,
        conversation_id=_str(value.get("post_id")), account_id=account)


def _instagram_comment(value: dict, account: str | None,
                       entry_time: datetime | None) -> SocialMessage | Skipped:
    sender = value.get("from") if isinstance(value.get("from"), dict) else {}
    author_id = _str(sender.get("id"))
    comment_id = _str(value.get("id"))
    if not author_id:
        return Skipped("instagram", "no_author")
    if author_id == account:
        return Skipped("instagram", "own")
    if not comment_id:
        return Skipped("instagram", "unsupported")
    media = value.get("media") if isinstance(value.get("media"), dict) else {}
    parent = _str(value.get("parent_id"))
    return SocialMessage(
        platform="instagram", platform_id=comment_id, kind="reply" if parent else "comment",
        author=Author(id=author_id, handle=_str(sender.get("username"))),
        text=_str(value.get("text")) or "",
        created_at=_from_iso(value.get("timestamp")) or entry_time,
        in_reply_to=parent or _str(media.get("id")), conversation_id=_str(media.get("id")),
        account_id=account)


def _instagram_mention(value: dict, account: str | None,
                       entry_time: datetime | None) -> InstagramMention | Skipped:
    """Only decimal ids pass: they go into a Graph API field expansion."""
    media_id, comment_id = _str(value.get("media_id")), _str(value.get("comment_id"))
    if not (account and media_id and _GRAPH_ID_RE.match(media_id)) or (
            comment_id is not None and not _GRAPH_ID_RE.match(comment_id)):
        return Skipped("instagram", "unsupported")
    return InstagramMention(account, media_id, comment_id, entry_time)


# --- X -----------------------------------------------------------------------------------------

def from_x_activity(delivery: Any) -> Normalised:
    """An X Account Activity delivery → messages. Raises UnreadablePayload unless it is an
    object with ``for_user_id``."""
    if not isinstance(delivery, dict) or not _str(delivery.get("for_user_id")):
        raise UnreadablePayload("an Account Activity delivery is an object with 'for_user_id'")
    account = _str(delivery["for_user_id"])
    result = Normalised()
    blocked = str(delivery.get("user_has_blocked", "")).lower() == "true"
    for tweet in _objects(delivery.get("tweet_create_events")):
        _add(result, Skipped("x", "blocked") if blocked else _v1_tweet(tweet, account), "x")
    users = delivery.get("users") if isinstance(delivery.get("users"), dict) else {}
    for event in _objects(delivery.get("direct_message_events")):
        _add(result, _direct_message(event, account, users), "x")
    return result


def _v1_tweet(tweet: dict, account: str | None) -> SocialMessage | Skipped:
    user = tweet.get("user") if isinstance(tweet.get("user"), dict) else {}
    author_id = _str(user.get("id_str") or user.get("id"))
    tweet_id = _str(tweet.get("id_str") or tweet.get("id"))
    if not author_id or not tweet_id:
        return Skipped("x", "no_author")
    if author_id == account:
        return Skipped("x", "own")
    if isinstance(tweet.get("retweeted_status"), dict):
        return Skipped("x", "retweet")
    extended = tweet.get("extended_tweet") if isinstance(tweet.get("extended_tweet"), dict) else {}
    text = _str(extended.get("full_text")) or _str(tweet.get("full_text")) or _str(
        tweet.get("text")) or ""
    entities = extended.get("entities") or tweet.get("entities") or {}
    mentions = [m.get("screen_name") for m in _objects(entities.get("user_mentions"))
                if _str(m.get("screen_name"))]
    urls = [u.get("expanded_url") or u.get("url") for u in _objects(entities.get("urls"))
            if _str(u.get("expanded_url") or u.get("url"))]
    extended_entities = extended.get("extended_entities") or tweet.get("extended_entities") or {}
    media = [m.get("media_url_https") for m in _objects(extended_entities.get("media"))
             if _str(m.get("media_url_https"))]
    reply_to = _str(tweet.get("in_reply_to_status_id_str"))
    quoted = _str(tweet.get("quoted_status_id_str")) if tweet.get("is_quote_status") else None
    mentioned_ids = {_str(m.get("id_str")) for m in _objects(entities.get("user_mentions"))}
    kind = "quote" if quoted else "reply" if reply_to else (
        "mention" if account in mentioned_ids else "post")
    return SocialMessage(
        platform="x", platform_id=tweet_id, kind=kind,
        author=Author(id=author_id, handle=_str(user.get("screen_name")),
                      name=_str(user.get("name"))),
        text=text,
        created_at=_from_epoch(tweet.get("timestamp_ms")) or _from_twitter_date(
            tweet.get("created_at")),
        in_reply_to=reply_to or quoted, urls=urls, mentions=mentions, media=media,
        language_hint=_str(tweet.get("lang")), account_id=account)


def _direct_message(event: dict, account: str | None,
                    users: dict) -> SocialMessage | Skipped | None:
    if event.get("type") != "message_create":
        return None
    create = event.get("message_create") if isinstance(event.get("message_create"), dict) else {}
    sender = _str(create.get("sender_id"))
    message_id = _str(event.get("id"))
    if not sender or not message_id:
        return Skipped("x", "no_author")
    if sender == account:
        return Skipped("x", "own")
    data = create.get("message_data") if isinstance(create.get("message_data"), dict) else {}
    entities = data.get("entities") if isinstance(data.get("entities"), dict) else {}
    profile = users.get(sender) if isinstance(users.get(sender), dict) else {}
    attachment = data.get("attachment") if isinstance(data.get("attachment"), dict) else {}
    attached = attachment.get("media") if isinstance(attachment.get("media"), dict) else {}
    return SocialMessage(
        platform="x", platform_id=message_id, kind="direct_message",
        author=Author(id=sender, handle=_str(profile.get("screen_name")),
                      name=_str(profile.get("name"))),
        text=_str(data.get("text")) or "", created_at=_from_epoch(event.get("created_timestamp")),
        urls=[u.get("expanded_url") for u in _objects(entities.get("urls"))
              if _str(u.get("expanded_url"))],
        mentions=[m.get("screen_name") for m in _objects(entities.get("user_mentions"))
                  if _str(m.get("screen_name"))],
        media=[url] if (url := _str(attached.get("media_url_https"))) else [],
        account_id=account)


def from_x_v2_page(page: Any, account: str | None) -> Normalised:
    """One page of X API v2 ``GET /2/users/:id/mentions`` (with ``expansions=author_id``)."""
    if not isinstance(page, dict):
        raise UnreadablePayload("an X API v2 page is a JSON object")
    includes = page.get("includes") if isinstance(page.get("includes"), dict) else {}
    users = {u.get("id"): u for u in _objects(includes.get("users"))}
    result = Normalised()
    for tweet in _objects(page.get("data")):
        author_id = _str(tweet.get("author_id"))
        tweet_id = _str(tweet.get("id"))
        if not author_id or not tweet_id:
            result.skipped.append(Skipped("x", "no_author"))
            continue
        if author_id == account:
            result.skipped.append(Skipped("x", "own"))
            continue
        references = {r.get("type"): _str(r.get("id"))
                      for r in _objects(tweet.get("referenced_tweets"))}
        if "retweeted" in references:
            result.skipped.append(Skipped("x", "retweet"))
            continue
        kind = "quote" if "quoted" in references else (
            "reply" if "replied_to" in references else "mention")
        entities = tweet.get("entities") if isinstance(tweet.get("entities"), dict) else {}
        user = users.get(author_id) or {}
        result.messages.append(SocialMessage(
            platform="x", platform_id=tweet_id, kind=kind,
            author=Author(id=author_id, handle=_str(user.get("username")),
                          name=_str(user.get("name"))),
            text=_str(tweet.get("text")) or "", created_at=_from_iso(tweet.get("created_at")),
            in_reply_to=references.get("replied_to") or references.get("quoted"),
            conversation_id=_str(tweet.get("conversation_id")),
            urls=[u.get("expanded_url") or u.get("url") for u in _objects(entities.get("urls"))
                  if _str(u.get("expanded_url") or u.get("url"))],
            mentions=[m.get("username") for m in _objects(entities.get("mentions"))
                      if _str(m.get("username"))],
            language_hint=_str(tweet.get("lang")), account_id=account))
    return result


# --- Instagram Graph API ----------------------------------------------------------------------

def from_instagram_tags_page(page: Any, account: str | None) -> Normalised:
    """One page of the Graph API's ``GET /{ig-user-id}/tags`` (media the brand was tagged in,
    ``fields=id,caption,username,timestamp,permalink,media_type,media_url``): each an Instagram
    mention. The author is known by username only (Meta gives ``owner`` to the owner alone)."""
    if not isinstance(page, dict) or not isinstance(page.get("data", []), list):
        raise UnreadablePayload("a Graph API page is an object with a 'data' list")
    result = Normalised()
    for media in _objects(page.get("data")):
        media_id, username = _str(media.get("id")), _str(media.get("username"))
        if not media_id or not username:
            result.skipped.append(Skipped("instagram", "no_author"))
            continue
        owner = media.get("owner") if isinstance(media.get("owner"), dict) else {}
        if account and _str(owner.get("id")) == account:
            result.skipped.append(Skipped("instagram", "own"))
            continue
        result.messages.append(SocialMessage(
            platform="instagram", platform_id=media_id, kind="mention",
            author=Author(handle=username), text=_str(media.get("caption")) or "",
            created_at=_from_iso(media.get("timestamp")),
            urls=[link] if (link := _str(media.get("permalink"))) else [],
            media=[url] if (url := _str(media.get("media_url"))) else [],
            account_id=account))
    return result


MENTION_REQUEST_TYPE = "Instagram Mention Notified"


def mention_request(mention: InstagramMention) -> tuple[str, Envelope]:
    """The key and envelope that put ``mention`` on cdp.social.mentions. Its message id comes
    from the platform's id, so Meta's retry of the notification is fetched once."""
    payload = {"account_id": mention.account_id, "media_id": mention.media_id}
    if mention.comment_id:
        payload["comment_id"] = mention.comment_id
    envelope = new_envelope(
        MENTION_REQUEST_TYPE, "system", payload=payload, occurred_at=mention.notified_at,
        message_id=f"social:instagram-mention:{mention.platform_id}", source="webhook")
    return f"instagram:{mention.media_id}", envelope


def mention_from_request(envelope: Envelope) -> InstagramMention:
    """Raises UnreadablePayload unless ``envelope`` is a ``mention_request``."""
    payload = envelope.payload
    account, media_id = _str(payload.get("account_id")), _str(payload.get("media_id"))
    comment_id = _str(payload.get("comment_id"))
    if envelope.type != MENTION_REQUEST_TYPE or not account or not media_id or not (
            _GRAPH_ID_RE.match(media_id) and (comment_id is None
                                              or _GRAPH_ID_RE.match(comment_id))):
        raise UnreadablePayload(f"not an {MENTION_REQUEST_TYPE} request with decimal "
                                f"account_id, media_id and optional comment_id")
    return InstagramMention(account, media_id, comment_id, envelope.occurred_at)


def from_instagram_mention(mention: InstagramMention, answer: Any) -> Normalised:
    """The Graph API's answer to ``GET /{ig-user-id}?fields=mentioned_media.media_id(..){..}``
    (caption mentions: ``{"mentioned_media": {id, caption, username, timestamp, permalink,
    media_type, media_url}, "id"}``) or ``mentioned_comment.comment_id(..){..}`` (comment
    mentions: ``{"mentioned_comment": {id, text, username, timestamp, media {id,
    permalink}}, "id"}``) → the mention. The author is known by username only."""
    edge = "mentioned_comment" if mention.comment_id else "mentioned_media"
    item = answer.get(edge) if isinstance(answer, dict) else None
    if not isinstance(item, dict):
        raise UnreadablePayload(f"the Graph API answer has no '{edge}' object")
    result = Normalised()
    username = _str(item.get("username"))
    if not username:
        result.skipped.append(Skipped("instagram", "no_author"))
        return result
    on_media = item.get("media") if isinstance(item.get("media"), dict) else {}
    permalink = _str(item.get("permalink")) or _str(on_media.get("permalink"))
    result.messages.append(SocialMessage(
        platform="instagram", platform_id=mention.platform_id, kind="mention",
        author=Author(handle=username),
        text=_str(item.get("text" if mention.comment_id else "caption")) or "",
        created_at=_from_iso(item.get("timestamp")) or mention.notified_at,
        in_reply_to=mention.media_id if mention.comment_id else None,
        conversation_id=mention.media_id,
        urls=[permalink] if permalink else [],
        media=[url] if (url := _str(item.get("media_url"))) else [],
        account_id=mention.account_id))
    return result


# --- the collector's form ----------------------------------------------------------------------

def from_collector(post: dict, hetus: HetuProtector) -> SocialMessage:
    """A post validated by the API's ``SocialPostSchema`` → a message. A collector may know
    the author's hetu (as ``hetu``, or a ``user_id`` that is one): ``hetus`` makes it the
    digest identifier and a sealed trait, so the code is nowhere on Kafka, key included; an
    invalid one is left out like any invalid identifier."""
    author = post.get("author") or {}
    protected = hetus.protect(post.get("identifiers") or {}, None)
    return SocialMessage(
        platform=post["platform"], platform_id=post["message_id"], kind=post["kind"],
        author=Author(id=author.get("id"), handle=author.get("handle"), name=author.get("name")),
        text=post.get("text") or "", created_at=post.get("created_at"),
        in_reply_to=post.get("in_reply_to"), conversation_id=post.get("conversation_id"),
        urls=list(post.get("urls") or ()), mentions=list(post.get("mentions") or ()),
        media=list(post.get("media") or ()), language_hint=post.get("language"),
        account_id=post.get("account_id"), extra_identifiers=protected.identifiers,
        traits=protected.traits or {})


# --- to an envelope ----------------------------------------------------------------------------

class Unattributable(ValueError):
    """A message with no valid identifier of its author: nobody to attach it to."""


def author_identifiers(message: SocialMessage) -> dict[str, str]:
    """The author's identifiers, normalised; invalid ones are left out."""
    candidates = dict(message.extra_identifiers)
    id_type, handle_type = AUTHOR_ID_TYPES.get(message.platform, (None, None))
    if id_type and message.author.id:
        candidates[id_type] = message.author.id
    if handle_type and message.author.handle:
        candidates[handle_type] = message.author.handle
    identifiers = {}
    for type_, value in candidates.items():
        try:
            identifiers[type_] = normalise(type_, value)
        except InvalidIdentifier:
            continue
    return identifiers


def message_id_for(platform: str, platform_id: str) -> str:
    natural = f"social:{platform}:{platform_id}"
    if len(natural) <= 128:
        return natural
    return f"social:{platform}:sha256:" + hashlib.sha256(platform_id.encode()).hexdigest()


def claimed_identifiers(text: str) -> tuple[list[dict[str, str]], list[str]]:
    """Emails and phone numbers the customer volunteers in the text (normalised; only claims,
    never identifiers of the event) and order numbers mentioned."""
    claims: list[dict[str, str]] = []
    for type_, pattern in (("email", _EMAIL_RE), ("phone", _PHONE_RE)):
        for match in pattern.finditer(text):
            try:
                claim = {"type": type_, "value": normalise(type_, match.group())}
            except InvalidIdentifier:
                continue
            if claim not in claims:
                claims.append(claim)
    orders = list(dict.fromkeys(m.group(1) for m in _ORDER_RE.finditer(text)))
    return claims, orders


def to_envelope(message: SocialMessage, *, source: str | None = None) -> Converted:
    """The envelope for ``message`` on cdp.events.social.

    Raises Unattributable when no valid author identifier remains."""
    identifiers = author_identifiers(message)
    if not identifiers:
        raise Unattributable(f"no valid identifier for the author of a {message.platform} "
                             f"{message.kind}")
    text, cards = redact_card_numbers(message.text)
    text, _ = redact_hetus(text)  # a hetu someone posts is masked, never kept
    classification = classify(text, message.language_hint)
    claims, orders = claimed_identifiers(text)
    payload: dict[str, Any] = {
        "platform": message.platform,
        "platform_message_id": message.platform_id,
        "kind": message.kind,
        "text": text,
        "language": classification.language,
        "author": {k: v for k, v in (("id", message.author.id), ("handle", message.author.handle),
                                     ("name", message.author.name)) if v},
        "in_reply_to": message.in_reply_to,
        "conversation_id": message.conversation_id,
        "urls": list(dict.fromkeys([*message.urls, *_URL_RE.findall(text)])),
        "mentions": message.mentions,
        "media": message.media,
        "account_id": message.account_id,
        "classification": classification.to_dict(),
    }
    if claims:
        payload["claimed_identifiers"] = claims
    if orders:
        payload["order_numbers"] = orders
    payload = {key: value for key, value in payload.items() if value not in (None, [], {})}
    # names, handles and urls are free text too; the platforms' numeric ids are not, and one in
    # ten of them passes the Luhn check
    ids = {key: payload.pop(key) for key in ID_FIELDS if key in payload}
    author_id = payload.get("author", {}).pop("id", None)
    payload, more_cards = redact_in(payload)
    payload, _ = redact_hetus_in(payload)
    payload.update(ids)
    if author_id:
        payload["author"] = {"id": author_id, **payload.get("author", {})}
    if message.traits:
        payload["traits"] = dict(message.traits)
    envelope = new_envelope(
        PRIVATE_TYPE if message.kind == "direct_message" else PUBLIC_TYPE, "social",
        identifiers=identifiers, payload=payload, occurred_at=message.created_at,
        message_id=message_id_for(message.platform, message.platform_id), source=source)
    id_type = AUTHOR_ID_TYPES.get(message.platform, (None,))[0]
    key_type = id_type if id_type in identifiers else sorted(identifiers)[0]
    return Converted(envelope, f"{key_type}:{identifiers[key_type]}", cards + more_cards)
