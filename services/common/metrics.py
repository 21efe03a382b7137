"""Every Prometheus metric Muisti exposes, declared once with its meaning.

Labels stay low-cardinality: service, topic, endpoint (the route rule, never the raw path).
"""

from prometheus_client import Counter, Gauge, Histogram

HTTP_REQUESTS = Counter(
    "muisti_http_requests_total",
    "HTTP requests answered, by route and status code",
    ["service", "method", "endpoint", "status"],
)
HTTP_LATENCY = Histogram(
    "muisti_http_request_duration_seconds",
    "Time from request received to response ready",
    ["service", "method", "endpoint"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)
MESSAGES_CONSUMED = Counter(
    "muisti_messages_consumed_total",
    "Kafka messages whose effect was stored (duplicates skipped are counted separately)",
    ["service", "topic"],
)
MESSAGES_DUPLICATE = Counter(
    "muisti_messages_duplicate_total",
    "Kafka messages skipped because their message_id was already applied",
    ["service", "topic"],
)
MESSAGES_PRODUCED = Counter(
    "muisti_messages_produced_total",
    "Kafka messages acknowledged by the broker",
    ["service", "topic"],
)
MESSAGES_DEAD_LETTERED = Counter(
    "muisti_messages_dead_lettered_total",
    "Kafka messages sent to cdp.deadletter, by source topic and reason kind",
    ["service", "topic", "kind"],
)
HANDLER_RETRIES = Counter(
    "muisti_handler_retries_total",
    "Handler attempts that failed and were retried (transient errors, store or broker down)",
    ["service", "topic"],
)
PROCESSING_LATENCY = Histogram(
    "muisti_message_processing_seconds",
    "Time to apply one polled batch, from poll returned to offsets committed",
    ["service", "topic"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
EVENT_AGE = Histogram(
    "muisti_event_age_seconds",
    "Age of an event (now - received_at) when a worker applied it: end-to-end freshness",
    ["service", "topic"],
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)
CONSUMER_LAG = Gauge(
    "muisti_consumer_lag_messages",
    "Messages in a partition not yet consumed by this worker's group",
    ["service", "topic", "partition"],
)

EVENTS_INGESTED = Counter(
    "muisti_events_ingested_total",
    "Channel events accepted at ingestion (acknowledged by Kafka)",
    ["service", "channel"],
)
EVENTS_REJECTED = Counter(
    "muisti_events_rejected_total",
    "Channel events refused at ingestion, by reason kind",
    ["service", "channel", "reason"],
)
CARD_NUMBERS_REDACTED = Counter(
    "muisti_card_numbers_redacted_total",
    "Payment card numbers found in free text and redacted before storage",
    ["service"],
)
IDENTIFIERS_DROPPED = Counter(
    "muisti_identifiers_dropped_total",
    "Identifiers dropped from events: invalid, or suppressed after erasure",
    ["service", "type", "reason"],
)
SPECIAL_TRAITS_REFUSED = Counter(
    "muisti_special_category_traits_refused_total",
    "Special-category traits (GDPR art. 9) withheld from a profile for want of explicit "
    "consent, by category",
    ["service", "category"],
)
ERASURE_REQUESTS = Gauge(
    "muisti_erasure_requests",
    "Erasure requests by state: open (not every service acknowledged yet), overdue (open past "
    "the deadline), partially_failed (a service failed; retry it); read from the store at "
    "scrape time",
    ["service", "state"],
)
ERASURE_OLDEST_OPEN_AGE = Gauge(
    "muisti_erasure_oldest_open_age_seconds",
    "Seconds since the oldest open erasure request was received (0 when none is open)",
    ["service"],
)
DELETION_NOTICES = Gauge(
    "muisti_deletion_notices",
    "Deletion notices to partners by state: pending (not delivered yet), failed (failed for "
    "good: fix the contract, then retry them); read from the store at scrape time",
    ["service", "state"],
)
DELETION_NOTICE_OLDEST_PENDING_AGE = Gauge(
    "muisti_deletion_notice_oldest_pending_age_seconds",
    "Seconds since the oldest pending deletion notice was queued (0 when none is pending)",
    ["service"],
)
EVENTS_SUPPRESSED = Counter(
    "muisti_events_suppressed_total",
    "Events dropped because they carry an identifier erased on the data subject's request",
    ["service", "channel"],
)
IDENTITY_MERGES = Counter(
    "muisti_identity_merges_total",
    "Profiles merged into another by the identity graph",
    ["service"],
)
IDENTITY_CONFLICTS = Counter(
    "muisti_identity_conflicts_total",
    "Identifiers held back from a profile by merge protection (limits, unverified links)",
    ["service", "type"],
)
SOCIAL_MESSAGES_SKIPPED = Counter(
    "muisti_social_messages_skipped_total",
    "Platform notifications not turned into events: the brand's own posts, retweets, edits, "
    "blocked authors, notifications naming no author, unsupported fields",
    ["service", "platform", "reason"],
)
SOCIAL_COMPLAINTS = Counter(
    "muisti_social_complaints_total",
    "Social messages classified as complaints at ingestion",
    ["service", "platform"],
)
CONSUMER_RECONNECTS = Counter(
    "muisti_consumer_reconnects_total",
    "Kafka consumers a worker replaced because the client was wedged: stalled (records wait, "
    "nothing committed) or spinning (polls return at once with nothing)",
    ["service", "group", "reason"],
)
SPOOL_SHIPPED = Counter(
    "muisti_spool_shipped_total",
    "Messages an API spooled locally and Kafka then acknowledged",
    ["spool"],
)
SPOOL_PENDING_BYTES = Gauge(
    "muisti_spool_pending_bytes",
    "Bytes spooled and not yet acknowledged by Kafka (grows while the broker is away)",
    ["spool"],
)
SPOOL_REFUSED = Counter(
    "muisti_spool_refused_total",
    "Appends refused because the spool was full: the work they recorded was refused too",
    ["spool"],
)
