"""The identity worker's background sweeps: links to profiles no longer in the graph, and the
erasure counts past their retention.

An erasure removes the links its subject's profiles list. A link stored but not yet listed
when a crash cut the write short (an event's resolution, an identifier's release) is not
among them: an event carrying the identifier again removes it (privacy.unlink_orphans), and
this sweep removes the rest, so no identifier stays linked to an erased profile, whatever
failed when.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from services.common.background import DailyHousekeeping
from services.common.erasure_counts import ErasureCounts
from services.common.store import paced
from services.identity import privacy
from services.identity.graph_store import MongoGraph

PAGE = 1000  # links whose profiles are looked up in one read


class OrphanLinkSweep(DailyHousekeeping):
    """Once a day, every link read once, a page at a time with pauses as long as the page
    took."""

    group = "identity-housekeeping"
    report = ("orphan links swept", "links_removed")

    def __init__(self, graph: MongoGraph):
        super().__init__()
        self.graph = graph

    def sweep(self) -> int:
        """Remove the links pointing at a profile no longer in the graph; returns how many."""
        return sum(privacy.unlink_orphaned(self.graph, page)
                   for page in paced(self.graph.all_links(), PAGE, self.pause))


class ErasureCountsSweep(DailyHousekeeping):
    """Once a day, the counts of erasures last handled longer ago than closed requests are
    kept (``privacy_requests`` in CDP_RETENTION_DAYS; kept for good when it is not set)."""

    group = "identity-erasure-counts"
    report = ("erasure counts past retention deleted", "erasure_counts_deleted")

    def __init__(self, counts: ErasureCounts, policy: dict[str, timedelta]):
        super().__init__()
        self.counts = counts
        self.keep_for = policy.get("privacy_requests")

    def sweep(self) -> int:
        if self.keep_for is None:
            return 0
        return self.counts.expire(datetime.now(UTC) - self.keep_for, self.pause)
