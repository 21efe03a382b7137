"""Kafka entry point of the social service: its consumer loops and the mentions poller.

* ``social-privacy`` answers every request on cdp.privacy.requests with an ack;
* ``social-deletion-status`` follows cdp.privacy.acks for the deletion requests this service
  raised, so their status page can say when every service is done;
* the X mentions poller runs when ``CDP_SOCIAL_POLL_URL`` is set, the Instagram one (media the
  brand is tagged in) when ``CDP_SOCIAL_META_GRAPH_URL`` and ``CDP_SOCIAL_INSTAGRAM_USER_ID`` are;
* ``social-instagram-mentions`` reads the Instagram mention notifications the webhook put on
  cdp.social.mentions, fetches each caption or comment from the Graph API and produces the
  event to cdp.events.social; it runs when ``CDP_SOCIAL_META_GRAPH_URL`` and
  ``CDP_SOCIAL_INSTAGRAM_ACCESS_TOKEN`` are set (until then the notifications wait in Kafka);
* a reader of X's user compliance stream runs per partition when
  ``CDP_SOCIAL_X_COMPLIANCE_URL`` is set, filing erasures with the privacy service;
* ``social-page-scoped-ids`` retries the page-scoped erasures Meta's deletion callback could
  not file (page_scoped.py); it runs when ``CDP_SOCIAL_META_GRAPH_URL`` and
  ``CDP_SOCIAL_META_APP_ID`` are set, as the callback's resolution does.
"""

from __future__ import annotations

from pymongo.database import Database

from services.common import topics
from services.common.bus import ConsumerLoop, InvalidMessage, Outgoing, Producer
from services.common.config import ConfigError, Settings
from services.common.envelope import Envelope
from services.common.store import Index, ProcessedLedger, ensure_indexes
from services.social import messages, privacy
from services.social.compliance_stream import (
    ComplianceLoop,
    ComplianceReader,
    XUserComplianceStream,
    parse_partitions,
)
from services.social.filing import PrivacyFiler
from services.social.instagram import (
    InstagramTagsApi,
    MentionedContent,
    MentionGone,
    MentionRefused,
)
from services.social.messages import from_instagram_tags_page
from services.social.meta_ids import PageScopedIds
from services.social.page_scoped import PageScopedErasures, PageScopedRetryLoop
from services.social.poller import Poller, PollLoop, XMentionsApi
from services.social.publish import SERVICE, outgoing, publish
from services.social.social_store import (
    DeletionStatuses,
    MongoCheckpoints,
    MongoPendingDeletions,
    MongoPendingResolutions,
    MongoStreamPositions,
)

PRIVACY_GROUP = "social-privacy"
STATUS_GROUP = "social-deletion-status"
MENTIONS_GROUP = "social-instagram-mentions"
INDEXES = [Index(DeletionStatuses.COLLECTION, [("request_id", 1)]),
           Index(DeletionStatuses.COLLECTION, [("part_of", 1)])]


def build_consumers(settings: Settings, producer: Producer, db: Database) -> list:
    ensure_indexes(db, INDEXES)
    loops: list = []
    consumers = [(PRIVACY_GROUP, topics.PRIVACY_REQUESTS, handle_privacy_request),
                 (STATUS_GROUP, topics.PRIVACY_ACKS, make_ack_handler(DeletionStatuses(db)))]
    if settings.social_meta_graph_url and settings.social_instagram_access_token:
        consumers.append((MENTIONS_GROUP, topics.SOCIAL_MENTIONS, make_mention_handler(
            MentionedContent(settings.social_meta_graph_url,
                             settings.social_instagram_access_token))))
    for group, topic, handler in consumers:
        ledger = ProcessedLedger(db, group)
        ledger.prepare()
        loops.append(ConsumerLoop(settings=settings, service=SERVICE, group=group,
                                  topics=[topic], handler=handler, producer=producer,
                                  ledger=ledger))
    if settings.social_poll_url:
        loops.append(PollLoop(mentions_poller(settings, producer, db),
                              settings.social_poll_interval_seconds))
    if settings.social_meta_graph_url and settings.social_instagram_user_id:
        loops.append(PollLoop(instagram_poller(settings, producer, db),
                              settings.social_poll_interval_seconds))
    if settings.social_x_compliance_url:
        loops.extend(ComplianceLoop(compliance_reader(settings, db, partition))
                     for partition in parse_partitions(settings.social_x_compliance_partitions))
    if settings.social_meta_graph_url and settings.social_meta_app_id:
        loops.append(PageScopedRetryLoop(page_scoped_erasures(settings, db)))
    return loops


def page_scoped_erasures(settings: Settings, db: Database) -> PageScopedErasures:
    resolver = PageScopedIds(settings.social_meta_graph_url, settings.social_meta_app_id,
                             settings.social_meta_app_secret)
    filer = PrivacyFiler(settings.consent_url, settings.service_api_key, DeletionStatuses(db))
    return PageScopedErasures(resolver.resolve, filer.file, MongoPendingResolutions(db),
                              settings.social_meta_app_secret)


def instagram_poller(settings: Settings, producer: Producer, db: Database) -> Poller:
    account = settings.social_instagram_user_id
    source = InstagramTagsApi(settings.social_meta_graph_url, account,
                              settings.social_instagram_access_token)
    return Poller(f"instagram-tags-{account}", account, source, MongoCheckpoints(db),
                  lambda normalised: publish(producer, normalised, source="instagram-poller"),
                  normalise=from_instagram_tags_page)


def compliance_reader(settings: Settings, db: Database, partition: int) -> ComplianceReader:
    if not settings.social_x_consumer_secret:
        raise ConfigError(["CDP_SOCIAL_X_CONSUMER_SECRET: needed by the compliance stream "
                           "reader to key the confirmation codes of its deletions"])
    filer = PrivacyFiler(settings.consent_url, settings.service_api_key, DeletionStatuses(db))
    return ComplianceReader(
        partition, XUserComplianceStream(settings.social_x_compliance_url,
                                         settings.social_x_compliance_bearer_token),
        MongoStreamPositions(db), MongoPendingDeletions(db), filer.file,
        settings.social_x_consumer_secret)


def mentions_poller(settings: Settings, producer: Producer, db: Database) -> Poller:
    source = XMentionsApi(settings.social_poll_url, settings.social_poll_user_id,
                          settings.social_poll_bearer_token, settings.social_poll_page_size)
    return Poller(f"x-mentions-{settings.social_poll_user_id}", settings.social_poll_user_id,
                  source, MongoCheckpoints(db),
                  lambda normalised: publish(producer, normalised, source="x-poller"))


def make_mention_handler(content: MentionedContent):
    """An Instagram mention notification → its caption or comment, read from the Graph API
    (retried there; GraphUnavailable makes the loop retry it) → the event."""

    def handle(envelope: Envelope) -> list[Outgoing]:
        try:
            mention = messages.mention_from_request(envelope)
        except messages.UnreadablePayload as exc:
            raise InvalidMessage(str(exc)) from None
        kind = "comment" if mention.comment_id else "media"
        try:
            answer = content.fetch(mention)
        except MentionGone as exc:
            raise InvalidMessage(f"the Graph API says the mentioned {kind} "
                                 f"{mention.platform_id} no longer exists: {exc}") from None
        except MentionRefused as exc:
            raise InvalidMessage(f"the Graph API refused the mentioned {kind} "
                                 f"{mention.platform_id}: {exc}") from None
        try:
            normalised = messages.from_instagram_mention(mention, answer)
        except messages.UnreadablePayload as exc:
            raise InvalidMessage(str(exc)) from None
        return outgoing(normalised, source="instagram-mention")

    return handle


def handle_privacy_request(envelope: Envelope) -> list[Outgoing]:
    try:
        request = privacy.parse_request(envelope)
    except ValueError as error:
        raise InvalidMessage(str(error)) from None
    ack = privacy.acknowledgement(envelope, request)
    return [Outgoing(topics.PRIVACY_ACKS, request.request_id, ack)]


def make_ack_handler(statuses: DeletionStatuses):
    def handle(envelope: Envelope) -> list[Outgoing]:
        payload = envelope.payload
        request_id, service = payload.get("request_id"), payload.get("service")
        if isinstance(request_id, str) and isinstance(service, str):
            statuses.acknowledged(request_id, service, str(payload.get("status")))
        return []

    return handle
