"""The run executor: claims export runs and deletion notices and delivers them.

One executor runs in each export worker process beside the Kafka consumers. A run document is
claimed with a lease (renewed before each batch and each retry), so one worker at a time works
on it and another takes over when the holder dies. For each batch the executor:

1. renders the next page of the read model (profile-id order after the run's cursor, see
   ``ProfilePages``) and stores the batch, with its bytes, before sending anything;
2. delivers the stored bytes under the key ``<run id>:batch:<n>``;
3. records what the partner now holds, then marks the batch acknowledged and moves the run's
   cursor, counters and ``next_batch`` on in one conditional update.

A crash anywhere re-sends at most the batch in hand, byte for byte and under the same key; the
partner's idempotency makes that harmless. Batches in which nobody may be sent are not sent.
A resumed run (after a crash or a lease takeover) checks the stored batch again first: one
never attempted (``attempted_at`` is set just before the first delivery) that holds someone
erased, restricted or no longer consented since it was rendered is discarded and rendered
afresh. One already attempted may be held by the partner whatever happens next, so it is
re-sent unchanged, and right after it each such subject in it gets a deletion notice (reason
``erasure``, ``restricted`` or ``consent:<purpose>:<state>``). Between batches the executor
also sends the deletion notices that fell due (looked up at most every
``notice_check_seconds``), so a notice never waits for a long run to end; each notice is
claimed before it is tried (its next attempt moved past the try), so two workers never send
the same one at once. A run's end (any
status) drops the rendered rows of its batch in hand; acknowledged batches keep only their
hash, counts and receipt.
Before each batch the executor also checks that the partner is not retired: a retired
partner's queued or running run ends ``cancelled`` (the reason in its ``error``) and sends
nothing more, while deletion notices to it still go out. A delivery that fails for good (a
4xx, or a destination the HTTP client cannot even use) fails that run or notice alone, with
its reason recorded; the executor goes on with the others. A notice that failed for good is
tried again when the partner's contract is replaced or someone asks for it (the API).

An aggregate run (services.export.aggregates) has one batch: the whole read model, gated as
above, reduced to the cells that hold at least k profiles. Its counts are of cells
(considered, exported, excluded ``cell_below_k``), never of profiles, so nothing in the run's
record lets a suppressed cell be recovered by subtraction.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from services.common.store import pages_by_id
from services.export import aggregates, rendering
from services.export.contracts import PartnerContract
from services.export.delivery import Deliverer, Outcome, Parcel
from services.export.export_store import ExportStore, now

log = logging.getLogger(__name__)

NOTICE_RETRY_CAP = timedelta(minutes=10)
RETIRED = "the partner was retired: it receives no more rows"


class ProfilePages:
    """A run's read-model profiles, page by page in profile-id order.

    FerretDB answers neither a range on ``_id`` nor a sort from its index, so asking for
    "the next page after the cursor" scans the collection once per page (quadratic in the
    number of profiles). Instead the ids in scope are listed in one pass when the run
    (re)starts, and each page is read by id. A profile erased meanwhile is simply not found;
    a profile created meanwhile waits for the next run."""

    def __init__(self, store: ExportStore, changed_since: datetime | None,
                 segment: str | None):
        self.store = store
        self.changed_since = changed_since
        self.segment = segment
        self._ids: list[str] | None = None

    def after(self, cursor: str | None, limit: int) -> list[dict[str, Any]]:
        if self._ids is None:
            self._ids = self.store.profile_ids(self.changed_since, self.segment)
        # a page all erased since the listing is skipped
        return next(pages_by_id(self.store.profiles, self._ids, cursor, limit), [])


class PollingLoop:
    """A loop the worker runtime runs beside its consumers (the interface: run, stop,
    stopping, group): ``work_once`` until stopped, pausing when it found nothing to do."""

    group = "export-loop"

    def __init__(self, store: ExportStore, deliverer: Deliverer, *, owner: str,
                 batch_size: int, lease_seconds: float, poll_seconds: float = 1.0):
        self.store = store
        self.deliverer = deliverer
        self.owner = owner
        self.batch_size = batch_size
        self.lease_seconds = lease_seconds
        self.poll_seconds = poll_seconds
        self._stopping = threading.Event()

    def stop(self) -> None:
        self._stopping.set()

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    def run(self) -> None:
        log.info("export loop started", extra={"owner": self.owner, "group": self.group})
        while not self.stopping:
            try:
                busy = self.work_once()
            except Exception:  # noqa: BLE001 - a store outage or a bug: log, wait, go on
                log.exception("export loop step failed; retrying", extra={"group": self.group})
                busy = False
            if not busy:
                self._stopping.wait(self.poll_seconds)

    def work_once(self) -> bool:
        raise NotImplementedError

    def send(self, contract: PartnerContract, run_id: str, batch: dict[str, Any],
             keep_going: Callable[[], bool], headers: dict[str, str]) -> Outcome:
        # from now on the partner may hold these bytes: they are only ever re-sent unchanged
        self.store.batch_attempted(batch["_id"])
        parcel = Parcel(
            body=batch["body"], idempotency_key=batch["idempotency_key"], kind="batch",
            content_type=rendering.content_type(contract),
            content_encoding="gzip" if contract.gzip else None,
            file_name=rendering.file_name(contract, f"{_file_safe(run_id)}-"
                                                    f"{batch['number']:06d}"),
            headers={**headers, "X-Muisti-Batch": str(batch["number"])})
        return self.deliverer.deliver(contract.destination, parcel, keep_going)

    def record_sent(self, contract: PartnerContract, run_id: str,
                    batch: dict[str, Any]) -> None:
        sent = {item["profile_id"]: item["identifiers"] for item in batch["sent"]}
        self.store.record_deliveries(contract.partner_id, run_id, sent)
        # a withdrawal, restriction or erasure that came while the batch was on its way (or,
        # for a batch re-sent after a crash, since it was rendered) found no delivery record
        # to notify about: check now, so the partner still hears of it
        for profile_id, reason in self.no_longer_sendable(contract, list(sent)).items():
            delivery = self.store.delivery(contract.partner_id, profile_id)
            if delivery is not None:
                self.store.queue_notice(f"{batch['_id']}:{profile_id}:withdrawn", delivery,
                                        reason)

    def no_longer_sendable(self, contract: PartnerContract,
                           profile_ids: list[str]) -> dict[str, str]:
        """Of ``profile_ids``, those that may not be sent now, each with its reason: erased
        (``erasure``), restricted, or a required consent not (or no longer) given."""
        erased = self.store.erased_among(profile_ids)
        consents = self.store.consents(profile_ids, contract.required_purposes)
        restricted = self.store.restricted(profile_ids)
        reasons = {}
        for profile_id in profile_ids:
            reason = "erasure" if profile_id in erased else rendering.exclusion_reason(
                contract, consents.get(profile_id, {}), profile_id in restricted)
            if reason is not None:
                reasons[profile_id] = reason
        return reasons

    def rendered_before_a_change(self, contract: PartnerContract,
                                 batch: dict[str, Any]) -> bool:
        """Whether a stored batch never attempted holds someone who may no longer be sent: it
        is then rendered afresh. (An attempted one may be held by the partner: it is re-sent
        byte for byte and ``record_sent`` queues the deletion notices it then owes.)"""
        if batch.get("attempted_at") is not None or batch.get("acknowledged_at"):
            return False
        return bool(self.no_longer_sendable(contract,
                                            [item["profile_id"] for item in batch["sent"]]))

    def render_profiles(self, contract: PartnerContract, run_id: str, number: int,
                        page: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
        """Gate and render ``page`` as batch ``number`` of ``run_id`` and store it, bytes
        included, before anything is sent."""
        ids = [snapshot["profile_id"] for snapshot in page]
        built = rendering.build_batch(contract, number, page,
                                      self.store.consents(ids, contract.required_purposes),
                                      self.store.restricted(ids))
        body = (rendering.encode_rows(contract, [row.values for row in built.rows])
                if built.rows else b"")
        return self.store.save_batch({
            "_id": f"{run_id}:{number}", "run_id": run_id, "number": number,
            "idempotency_key": rendering.batch_idempotency_key(run_id, number),
            "body": body, "sha256": hashlib.sha256(body).hexdigest(),
            "last_profile_id": built.last_profile_id, "created_at": now(),
            "attempted_at": None,
            "sent": [{"profile_id": row.profile_id, "identifiers": row.identifiers(contract)}
                     for row in built.rows],
            "counts": {"considered": built.considered, "exported": len(built.rows),
                       "excluded": dict(built.excluded),
                       "invalid_values": dict(built.invalid_values)}, **extra})


class RunExecutor(PollingLoop):
    """Claims runs and sends due deletion notices."""

    group = "export-runs"

    def __init__(self, store: ExportStore, deliverer: Deliverer, *, owner: str,
                 batch_size: int, lease_seconds: float, min_cell_size: int,
                 poll_seconds: float = 1.0, notice_check_seconds: float = 5.0):
        super().__init__(store, deliverer, owner=owner, batch_size=batch_size,
                         lease_seconds=lease_seconds, poll_seconds=poll_seconds)
        self.min_cell_size = min_cell_size
        # between a run's batches, due notices are looked up at most this often: the lookup
        # reads the whole notices collection on FerretDB
        self.notice_check_seconds = notice_check_seconds
        self._notices_checked_at = float("-inf")

    def work_once(self) -> bool:
        """Send due deletion notices, then work on one claimable run; True if anything was
        done."""
        sent = self.send_due_notices()
        claimed = self.store.claim_run(self.owner, self.lease_seconds)
        if claimed is not None:
            self.execute(claimed)
        return bool(sent or claimed)

    # --- runs ----------------------------------------------------------------------------

    def execute(self, run: dict[str, Any]) -> None:
        run_id = run["_id"]
        contract = self.store.partner(run["partner_id"], include_deleted=True)
        if contract is None:
            self.store.finish_run(run_id, self.owner, "failed", error="the contract is gone")
            return
        log.info("running export", extra={"run_id": run_id, "partner": contract.partner_id,
                                          "next_batch": run.get("next_batch", 0)})
        pages = ProfilePages(self.store, run.get("changed_since"), contract.segment)
        while not self.stopping:
            # a deletion notice does not wait for a long run to end
            if time.monotonic() - self._notices_checked_at >= self.notice_check_seconds:
                # within a third of the lease, renewed right after: the run stays this
                # worker's even when a partner's endpoint is slow to answer
                self.send_due_notices(until=time.monotonic() + self.lease_seconds / 3)
            if not self.store.renew_lease(run_id, self.owner, self.lease_seconds):
                log.warning("lost the run's lease; leaving it", extra={"run_id": run_id})
                return
            if self.store.partner_retired(contract.partner_id):
                self.store.finish_run(run_id, self.owner, "cancelled", error=RETIRED)
                log.info("export cancelled: the partner was retired", extra={"run_id": run_id})
                return
            number = run.get("next_batch", 0)
            batch = self.store.batch(run_id, number)
            if batch is not None and self.rendered_before_a_change(contract, batch):
                self.store.discard_unsent_batch(batch["_id"])
                batch = None
            batch = batch or self._render(contract, run, number, pages)
            if batch is None:
                digest = hashlib.sha256(
                    "\n".join(run.get("batch_digests") or []).encode()).hexdigest()
                self.store.finish_run(run_id, self.owner, "succeeded", content_sha256=digest)
                log.info("export finished", extra={"run_id": run_id})
                return
            receipt: dict[str, Any] = batch.get("receipt") or {}
            if batch["counts"]["exported"] and not batch.get("acknowledged_at"):
                outcome = self._send(contract, run_id, batch)
                if not outcome.ok:
                    if not self.stopping and (outcome.permanent or outcome.attempts > 0):
                        self.store.finish_run(
                            run_id, self.owner, "failed", failed_batch=number,
                            error=outcome.error, receipt=outcome.receipt)
                    return
                receipt = outcome.receipt
                self.record_sent(contract, run_id, batch)
            self.store.batch_acknowledged(run_id, self.owner, batch, receipt)
            run = self.store.run(run_id)

    def _render(self, contract: PartnerContract, run: dict[str, Any], number: int,
                pages: ProfilePages) -> dict[str, Any] | None:
        if run["mode"] == "aggregate":
            return self._render_aggregate(contract, run, pages) if number == 0 else None
        page = pages.after(run.get("cursor"), self.batch_size)
        if not page:
            return None
        return self.render_profiles(contract, run["_id"], number, page)

    def _render_aggregate(self, contract: PartnerContract, run: dict[str, Any],
                          pages: ProfilePages) -> dict[str, Any] | None:
        spec = contract.aggregate
        if spec is None:
            return None  # the contract stopped being an aggregate one: nothing to send
        aggregator = aggregates.Aggregator(spec)
        cursor = None
        while page := pages.after(cursor, self.batch_size):
            cursor = page[-1]["profile_id"]
            ids = [snapshot["profile_id"] for snapshot in page]
            consents = self.store.consents(ids, contract.required_purposes)
            restricted = self.store.restricted(ids)
            for snapshot in page:
                profile_id = snapshot["profile_id"]
                if rendering.in_segment(contract, snapshot) and rendering.exclusion_reason(
                        contract, consents.get(profile_id, {}), profile_id in restricted) is None:
                    aggregator.add(snapshot)
        k = aggregates.effective_k(spec, self.min_cell_size)
        result = aggregator.result(k)
        body = (rendering.encode_rows(contract, result.rows, aggregates.columns(spec))
                if result.rows else b"")
        excluded = {"cell_below_k": result.suppressed_cells} if result.suppressed_cells else {}
        return self.store.save_batch({
            "_id": f"{run['_id']}:0", "run_id": run["_id"], "number": 0,
            "idempotency_key": rendering.batch_idempotency_key(run["_id"], 0),
            "body": body, "sha256": hashlib.sha256(body).hexdigest(), "last_profile_id": None,
            "created_at": now(), "attempted_at": None, "sent": [], "k": k,
            "counts": {"considered": result.published_cells + result.suppressed_cells,
                       "exported": result.published_cells, "excluded": excluded,
                       "invalid_values": {}}})

    def _send(self, contract: PartnerContract, run_id: str, batch: dict[str, Any]) -> Outcome:
        def keep_going() -> bool:
            return not self.stopping and self.store.renew_lease(run_id, self.owner,
                                                                self.lease_seconds)

        return self.send(contract, run_id, batch, keep_going, {"X-Muisti-Run": run_id})

    # --- deletion notices ----------------------------------------------------------------

    def send_due_notices(self, until: float | None = None) -> int:
        """Send the deletion notices that fell due, one attempt each; ``until`` (a monotonic
        time) stops before the next once it has passed (the rest wait for the next turn)."""
        self._notices_checked_at = time.monotonic()
        sent = 0
        for notice in self.store.due_notices():
            if self.stopping or (until is not None and time.monotonic() >= until):
                break
            hold = self.lease_seconds + self.deliverer.policy.timeout_seconds
            if not self.store.claim_notice(notice, hold):
                continue  # another worker is sending it
            contract = self.store.partner(notice["partner_id"], include_deleted=True)
            if contract is None:
                self.store.notice_failed(notice["_id"], "the contract is gone", None)
                continue
            body = rendering.deletion_notice_body(contract, notice["_id"], notice["reason"],
                                                  notice["identifiers"])
            parcel = Parcel(body=body, idempotency_key=notice["_id"], kind="deletion",
                            content_type="application/json",
                            file_name=f"deletion-{_file_safe(notice['_id'])}.json")
            # one attempt per turn: the store schedules the next with backoff, so a partner
            # that is down does not hold up the runs
            outcome = self.deliverer.deliver(contract.destination, parcel, attempts=1)
            if outcome.ok:
                self.store.notice_sent(notice["_id"], outcome.receipt)
                sent += 1
                continue
            retry_at = None
            if not outcome.permanent:
                delay = self.deliverer.policy.delay(notice["attempts"] + 1)
                retry_at = now() + min(timedelta(seconds=max(delay, 0.5)), NOTICE_RETRY_CAP)
            else:
                log.warning("deletion notice failed for good", extra={
                    "notice_id": notice["_id"], "partner": contract.partner_id,
                    "error": outcome.error})
            self.store.notice_failed(notice["_id"], outcome.error or "failed", retry_at)
        return sent


def _file_safe(text: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in text)

