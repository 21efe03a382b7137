"""Kafka topic names: a contract between services. Keys decide ordering (docs/ARCHITECTURE.md)."""

EVENTS_WEB = "cdp.events.web"
EVENTS_PHONE = "cdp.events.phone"
EVENTS_SOCIAL = "cdp.events.social"
EVENTS_RESOLVED = "cdp.events.resolved"
IDENTITY_MERGES = "cdp.identity.merges"
PROFILE_CHANGES = "cdp.profile.changes"
CONSENT_CHANGES = "cdp.consent.changes"
PRIVACY_REQUESTS = "cdp.privacy.requests"
PRIVACY_ACKS = "cdp.privacy.acks"
DEAD_LETTER = "cdp.deadletter"
# internal to the social service: Instagram mention notifications (ids only) whose text its
# worker fetches from the Graph API after the webhook was answered
SOCIAL_MENTIONS = "cdp.social.mentions"
# internal to the profile service: one entry per profile read, stored in the access log by its
# worker (a lookup waits for Kafka's acknowledgement, never for a store write)
PROFILE_ACCESSES = "cdp.profile.accesses"

ALL = (
    EVENTS_WEB,
    EVENTS_PHONE,
    EVENTS_SOCIAL,
    EVENTS_RESOLVED,
    IDENTITY_MERGES,
    PROFILE_CHANGES,
    CONSENT_CHANGES,
    PRIVACY_REQUESTS,
    PRIVACY_ACKS,
    DEAD_LETTER,
    SOCIAL_MENTIONS,
    PROFILE_ACCESSES,
)
