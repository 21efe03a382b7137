"""An in-memory identity graph: a fake that subclasses the real repository interface, so it
breaks when the interface changes."""

from __future__ import annotations

import dataclasses
from contextlib import contextmanager

from services.identity.graph import GraphRepository, Identifier, Link, LinkTaken, Merge, ProfileNode


class InMemoryGraph(GraphRepository):
    """Keeps what the store keeps: links, and on each profile's record the identifiers it
    lists. As on the store, a merge moves the links the merged profile's record lists, not
    every link pointing at it, so a link left unlisted stays behind here too."""

    def __init__(self):
        self.link_table: dict[Identifier, Link] = {}
        self.nodes: dict[str, ProfileNode] = {}
        self.listed_on: dict[str, set[Identifier]] = {}  # profile id -> its record's list
        self.renamed_on: dict[str, set[Identifier]] = {}  # its record's earlier names
        self.merges: list[Merge] = []
        self.splits: list = []

    def links(self, identifiers):
        return {i: self.link_table[i] for i in identifiers if i in self.link_table}

    def profile(self, profile_id):
        node = self.nodes.get(profile_id)
        if node is None:
            return None
        return dataclasses.replace(node, identifiers=frozenset(self.listed_on[profile_id]),
                                   renamed=frozenset(self.renamed_on.get(profile_id, ())))

    def create_profile(self, node):
        if node.profile_id not in self.nodes:
            self.nodes[node.profile_id] = node
            self.listed_on[node.profile_id] = set()

    def add_links(self, links):
        taken = []
        for link in links:
            existing = self.link_table.get(link.identifier)
            if existing and existing.profile_id != link.profile_id:
                taken.append(link.identifier.key)
                continue
            self.link_table.setdefault(link.identifier, link)
            self._list(link.profile_id, [link.identifier])
        if taken:
            raise LinkTaken(taken[0])

    def merge(self, merge):
        self.merges.append(merge)
        node = self.nodes[merge.merged]
        self.nodes[merge.merged] = ProfileNode(node.profile_id, node.created_at, merge.survivor)
        moved = set(self.listed_on[merge.merged])
        self._list(merge.survivor, moved)
        self.note_renamed(merge.survivor, self.renamed_on.get(merge.merged, ()))
        self._relink(moved, merge.merged, merge.survivor)

    def note_renamed(self, profile_id, identifiers):
        self.renamed_on.setdefault(profile_id, set()).update(identifiers)

    def move_links(self, identifiers, from_profile, to_profile):
        identifiers = list(identifiers)
        self._list(to_profile, identifiers)
        if from_profile == to_profile:
            return
        self._relink(identifiers, from_profile, to_profile)
        self._unlist(from_profile, identifiers)

    def remove_links(self, identifiers, profile_id):
        removed = [i for i in identifiers
                   if i in self.link_table and self.link_table[i].profile_id == profile_id]
        for identifier in removed:
            del self.link_table[identifier]
        self._unlist(profile_id, identifiers)
        return len(removed)

    def _unlist(self, profile_id, identifiers):
        self.listed_on.get(profile_id, set()).difference_update(identifiers)
        self.renamed_on.get(profile_id, set()).difference_update(identifiers)

    def _list(self, profile_id, identifiers):
        if profile_id in self.listed_on:  # the store's record update upserts nothing either
            self.listed_on[profile_id].update(identifiers)

    def _relink(self, identifiers, from_profile, to_profile):
        for identifier in identifiers:
            link = self.link_table.get(identifier)
            if link and link.profile_id == from_profile:
                self.link_table[identifier] = Link(identifier, to_profile, link.verified,
                                                   link.source_message_id, link.linked_at)

    def record_split(self, split):
        self.splits.append(split)

    @contextmanager
    def lock(self, profile_ids):
        yield

    def partition(self) -> set[frozenset[Identifier]]:
        """The graph as a set of identifier groups, one per live profile."""
        groups: dict[str, set[Identifier]] = {}
        for identifier, link in self.link_table.items():
            groups.setdefault(link.profile_id, set()).add(identifier)
        return {frozenset(group) for group in groups.values()}
