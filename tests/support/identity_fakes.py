"""An in-memory identity graph: a fake that subclasses the real repository interface, so it
breaks when the interface changes."""

from __future__ import annotations

import dataclasses
from contextlib import contextmanager

from services.identity.graph import GraphRepository, Identifier, Link, LinkTaken, Merge, ProfileNode


class InMemoryGraph(GraphRepository):
    def __init__(self):
        self.link_table: dict[Identifier, Link] = {}
        self.nodes: dict[str, ProfileNode] = {}
        self.merges: list[Merge] = []
        self.splits: list = []

    def links(self, identifiers):
        return {i: self.link_table[i] for i in identifiers if i in self.link_table}

    def profile(self, profile_id):
        node = self.nodes.get(profile_id)
        if node is None:
            return None
        return dataclasses.replace(node, identifiers=frozenset(
            i for i, link in self.link_table.items() if link.profile_id == profile_id))

    def create_profile(self, node):
        self.nodes.setdefault(node.profile_id, node)

    def add_links(self, links):
        for link in links:
            existing = self.link_table.get(link.identifier)
            if existing and existing.profile_id != link.profile_id:
                raise LinkTaken(link.identifier.key)
            self.link_table.setdefault(link.identifier, link)

    def merge(self, merge):
        self.merges.append(merge)
        node = self.nodes[merge.merged]
        self.nodes[merge.merged] = ProfileNode(node.profile_id, node.created_at, merge.survivor)
        for identifier, link in list(self.link_table.items()):
            if link.profile_id == merge.merged:
                self.link_table[identifier] = Link(identifier, merge.survivor, link.verified,
                                                   link.source_message_id, link.linked_at)

    def move_links(self, identifiers, from_profile, to_profile):
        for identifier in identifiers:
            link = self.link_table.get(identifier)
            if link and link.profile_id == from_profile:
                self.link_table[identifier] = Link(identifier, to_profile, link.verified,
                                                   link.source_message_id, link.linked_at)

    def remove_links(self, identifiers, profile_id):
        removed = [i for i in identifiers
                   if i in self.link_table and self.link_table[i].profile_id == profile_id]
        for identifier in removed:
            del self.link_table[identifier]
        return len(removed)

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
