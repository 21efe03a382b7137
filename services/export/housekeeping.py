"""The export worker's background sweep: retention of streaming partners' settled changes.

A change waits in ``export_stream_changes`` until its batch is acknowledged or it is
cancelled, and is then only bookkeeping: what each batch sent is recorded in the batch and
the deliveries, and the stream's progress counts it. So a settled change is kept for the
``stream_changes`` retention of ``CDP_RETENTION_DAYS`` (30 days by default, and when the
setting does not name the kind), then deleted with its id in its profile's index entry.
Thirty days is well past the 14 the consumer ledger remembers a message: a profile change
delivered again within them is skipped by the ledger or, failing that, by the change's own
id, and so is not queued and sent twice.
"""

from __future__ import annotations

from datetime import timedelta

from services.common.background import DailyHousekeeping
from services.export.export_store import ExportStore, now

RETENTION_KIND = "stream_changes"
DEFAULT_RETENTION = timedelta(days=30)


class SettledChangesSweep(DailyHousekeeping):
    """Once a day, the settled changes past retention deleted, a chunk at a time with pauses
    as long as the chunk took."""

    group = "export-housekeeping"
    report = ("settled stream changes swept", "stream_changes_deleted")

    def __init__(self, store: ExportStore, policy: dict[str, timedelta]):
        super().__init__()
        self.store = store
        self.keep_for = policy.get(RETENTION_KIND, DEFAULT_RETENTION)

    def sweep(self) -> int:
        """Delete the changes settled longer ago than the retention; returns how many."""
        return self.store.expire_settled_stream_changes(now() - self.keep_for, self.pause)
