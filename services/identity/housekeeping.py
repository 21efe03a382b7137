"""The identity worker's background sweep: links to profiles no longer in the graph.

An erasure removes the links its subject's profiles list. A link stored but not yet listed
when a crash cut the write short (an event's resolution, an identifier's release) is not
among them: an event carrying the identifier again removes it (privacy.unlink_orphans), and
this sweep removes the rest, so no identifier stays linked to an erased profile, whatever
failed when.
"""

from __future__ import annotations

from services.common.background import DailyHousekeeping
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
