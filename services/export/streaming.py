"""Streaming exports: changed profiles go to a partner in small batches as the changes arrive.

The feed (services.export.feed) queues one change per streaming partner for each Profile
Changed in the partner's segment (and for each consent that becomes allowed), with an id
derived from the Kafka message, so a redelivered message queues nothing new. A consent
withdrawn cancels the profile's waiting changes at once.

This loop holds each streaming partner's stream under a lease (as a run is held) and, per
turn, takes the oldest waiting changes, renders the current read-model snapshots of their
profiles (consent, restriction and segment checked then, as for a run) and stores the batch
before sending it under the key ``stream:<partner>:batch:<n>``, signed and retried like a
run's batches. Only then are the changes marked sent and the stream moved to ``n + 1``.

Delivery is at least once, and exactly once for a receiver that applies each
``Idempotency-Key`` once: a worker that dies after sending re-sends the stored batch, byte for
byte under the same key, and never renders those changes into another batch. Several changes
of one profile waiting together are sent as one row (its latest state). A batch rendered but
never attempted before a crash is checked again and rendered afresh if someone in it was
erased or restricted, or lost a required consent, meanwhile (an erasure discards such a batch
at once). A batch already attempted is re-sent byte for byte, and a withdrawal, restriction or
erasure that came after it was rendered is caught right after it: the partner gets a deletion
notice for that profile.

A partner that keeps failing does not lose changes: the stream pauses with backoff and
re-sends the same batch; the stream's document records the error.
"""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import Any

from services.export.contracts import PartnerContract
from services.export.export_store import now, stream_id
from services.export.runs import NOTICE_RETRY_CAP, PollingLoop

log = logging.getLogger(__name__)


class StreamExecutor(PollingLoop):
    group = "export-streams"

    def work_once(self) -> bool:
        busy = False
        for contract in self.store.streaming_partners():
            if self.stopping:
                break
            stream = self.store.claim_stream(contract.partner_id, self.owner,
                                             self.lease_seconds)
            if stream is not None:
                busy = self.send_next_batch(contract, stream) or busy
        return busy

    def send_next_batch(self, contract: PartnerContract, stream: dict[str, Any]) -> bool:
        """Render (or take up again) the stream's next batch and send it; True if a batch was
        settled or re-rendered."""
        partner_id, number = contract.partner_id, stream["next_batch"]
        run_id = stream_id(partner_id)
        batch = self.store.batch(run_id, number)
        if batch is None:
            changes = self.store.pending_stream_changes(partner_id, self.batch_size)
            if not changes:
                return False
            profile_ids = sorted({change["profile_id"] for change in changes})
            batch = self.render_profiles(contract, run_id, number,
                                         self.store.profiles(profile_ids),
                                         changes=[change["_id"] for change in changes])
        elif self.rendered_before_a_change(contract, batch):
            self.store.discard_unsent_batch(batch["_id"])
            return True
        receipt: dict[str, Any] = batch.get("receipt") or {}
        if batch["counts"]["exported"] and not batch.get("acknowledged_at"):
            outcome = self.send(contract, run_id, batch, lambda: self._keep(partner_id),
                                {"X-Muisti-Stream": partner_id})
            if not outcome.ok:
                delay = self.deliverer.policy.delay(stream.get("failures", 0) + 1)
                retry_at = now() + min(timedelta(seconds=max(delay, 0.5)), NOTICE_RETRY_CAP)
                log.warning("streaming delivery failed; will retry",
                            extra={"partner": partner_id, "batch": number,
                                   "error": outcome.error})
                self.store.stream_failed(partner_id, self.owner, outcome.error or "failed",
                                         outcome.permanent, retry_at)
                return False
            receipt = outcome.receipt
            self.record_sent(contract, run_id, batch)
        self.store.stream_batch_acknowledged(partner_id, self.owner, batch, receipt)
        return True

    def _keep(self, partner_id: str) -> bool:
        return not self.stopping and self.store.renew_stream_lease(partner_id, self.owner,
                                                                   self.lease_seconds)
