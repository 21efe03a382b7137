"""The identity worker's background sweep: links to profiles no longer in the graph.

An erasure removes the links its subject's profiles list. A link stored but not yet listed
when a crash cut the write short (an event's resolution, an identifier's release) is not
among them: an event carrying the identifier again removes it (privacy.unlink_orphans), and
this sweep removes the rest, so no identifier stays linked to an erased profile, whatever
failed when.
"""

from __future__ import annotations

import logging
import time

from services.common.background import BackgroundLoop
from services.common.store import paced
from services.identity import privacy
from services.identity.graph_store import MongoGraph

log = logging.getLogger(__name__)

PAGE = 1000  # links whose profiles are looked up in one read


class OrphanLinkSweep(BackgroundLoop):
    """Once a day (the first an hour after start, not on every restart; one that failed
    again an hour later), every link read once, a page at a time with pauses as long as the
    page took."""

    group = "identity-housekeeping"
    idle_seconds = 60.0
    FIRST_AFTER_SECONDS = RETRY_SECONDS = 3600.0
    EVERY_SECONDS = 86400.0

    def __init__(self, graph: MongoGraph):
        super().__init__()
        self.graph = graph
        self._due = time.monotonic() + self.FIRST_AFTER_SECONDS

    def step(self) -> None:
        began = time.monotonic()
        if began < self._due:
            return
        self._due = began + self.RETRY_SECONDS
        log.info("orphan links swept", extra={"links_removed": self.sweep()})
        self._due = began + self.EVERY_SECONDS

    def sweep(self) -> int:
        """Remove the links pointing at a profile no longer in the graph; returns how many."""
        return sum(privacy.unlink_orphaned(self.graph, page)
                   for page in paced(self.graph.all_links(), PAGE, self.pause))
