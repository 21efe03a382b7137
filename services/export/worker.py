"""Kafka entry point of the export service: the read-model consumer and the run executor.

One consumer loop (group ``export-feed``) keeps the read model from cdp.profile.changes and
cdp.consent.changes and answers cdp.privacy.requests on cdp.privacy.acks (services.export.feed).
Beside it the run executor (services.export.runs) claims export runs and deletion notices,
the stream executor (services.export.streaming) sends streaming partners their changes, and
the housekeeping (services.export.housekeeping) deletes their settled changes past retention.
"""

from __future__ import annotations

import os
import socket
import uuid
from itertools import groupby
from pathlib import Path

from pymongo.database import Database

from services.common import retention, topics
from services.common.bus import ConsumerLoop, Outgoing, Producer
from services.common.config import Settings
from services.common.envelope import Envelope
from services.common.store import Index, ProcessedLedger, ensure_indexes
from services.export import feed
from services.export.delivery import Deliverer, RetryPolicy
from services.export.export_store import (
    CONSENTS,
    DELIVERIES,
    NOTICES,
    RUNS,
    STREAM_CHANGES,
    ExportStore,
)
from services.export.housekeeping import SettledChangesSweep
from services.export.runs import RunExecutor
from services.export.sealing import SecretBox
from services.export.streaming import StreamExecutor

GROUP = "export-feed"
PRIVACY_TYPES = ("Erasure Requested", "Access Requested", "Restriction Requested",
                 "Restriction Lifted", "Rectification Requested")
INDEXES = [Index(CONSENTS, [("profile_id", 1)]), Index(DELIVERIES, [("profile_id", 1)]),
           Index(RUNS, [("partner_id", 1)]), Index(RUNS, [("status", 1)]),
           Index(NOTICES, [("status", 1)]), Index(DELIVERIES, [("partner_id", 1)]),
           Index(STREAM_CHANGES, [("partner_id", 1), ("status", 1)]),
           Index(STREAM_CHANGES, [("profile_id", 1)])]
STREAM_POLL_SECONDS = 0.5  # how late, at most, an idle stream sees a queued change


def build_consumers(settings: Settings, producer: Producer, db: Database) -> list:
    ensure_indexes(db, INDEXES)
    ledger = ProcessedLedger(db, GROUP)
    ledger.prepare()
    store = ExportStore(db, SecretBox.from_settings(settings))
    consumer = ConsumerLoop(
        settings=settings, service=feed.SERVICE, group=GROUP,
        topics=[topics.PROFILE_CHANGES, topics.CONSENT_CHANGES, topics.PRIVACY_REQUESTS],
        handler=make_handler(store), batch_handler=make_batch_handler(store),
        producer=producer, ledger=ledger)
    return [consumer, *build_executors(settings, store),
            SettledChangesSweep(store, retention.parse_policy(settings.retention_days))]


def make_handler(store: ExportStore):
    def handle(envelope: Envelope):
        if envelope.type == "Profile Changed":
            return feed.handle_profile_change(store, envelope)
        if envelope.type == "Consent Changed":
            return feed.handle_consent_change(store, envelope)
        if envelope.type in PRIVACY_TYPES:
            return feed.handle_privacy_request(store, envelope)
        return []

    return handle


def make_batch_handler(store: ExportStore):
    """A poll's messages in order, runs of profile changes and runs of consent changes each
    handled together."""
    handle = make_handler(store)
    together = {"Profile Changed": feed.handle_profile_changes,
                "Consent Changed": feed.handle_consent_changes}

    def handle_batch(envelopes: list[Envelope]) -> list[Outgoing]:
        messages: list[Outgoing] = []
        for kind, run in groupby(envelopes, key=lambda envelope: envelope.type):
            if kind in together:
                messages.extend(together[kind](store, list(run)))
            else:
                for envelope in run:
                    messages.extend(handle(envelope))
        return messages

    return handle_batch


def build_executors(settings: Settings, store: ExportStore
                    ) -> tuple[RunExecutor, StreamExecutor]:
    policy = RetryPolicy(max_attempts=settings.export_max_attempts,
                         base_seconds=settings.export_retry_base_seconds,
                         timeout_seconds=settings.export_http_timeout_seconds)
    root = Path(settings.export_directory_root)
    owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
    # one deliverer (one requests session) per thread: sessions are not thread-safe
    runs = RunExecutor(store, Deliverer(policy, root), owner=owner,
                       batch_size=settings.export_batch_size,
                       lease_seconds=settings.export_lease_seconds,
                       min_cell_size=settings.export_min_cell_size)
    streams = StreamExecutor(store, Deliverer(policy, root), owner=owner,
                             batch_size=settings.export_stream_batch_size,
                             lease_seconds=settings.export_lease_seconds,
                             poll_seconds=STREAM_POLL_SECONDS)
    return runs, streams
