"""The identity graph's rules: which identifiers belong to which profile, and when two
profiles become one. Plain Python over the ``GraphRepository`` interface; no I/O of its own.

Rules, for one event carrying a set of normalised identifiers:

* Identifiers are taken in priority order (``PRIORITY``: user_id first, anonymous_id last).
  The event resolves to the profile of the highest-priority identifier already known, or to a
  new profile when none is known.
* Each further identifier that is unknown is linked to that profile, unless the profile already
  holds its type's limit (``DEFAULT_LIMITS``): then it stays unlinked and a conflict is recorded.
* An identifier known on another profile merges the two profiles, unless the merged profile
  would exceed a limit (two user_ids, six emails...) or the link is unverified (a caller-id
  phone number): then the profiles stay apart and a conflict is recorded. The event still
  resolves. The exception is an unknown caller's profile, made of caller-id numbers alone: a
  verified claim on its number absorbs it, so the outcome does not depend on whether the call
  or the claim was processed first.
* The survivor of a merge is the older profile (creation time, then id): deterministic
  whichever worker performs it.
* Every link remembers the event that made it, so any merge can be explained and undone.
* A link a crash left off its profile's list (a resolution or a release cut short) is listed
  by the next event carrying it, within the limit like a new link; past the limit it goes.
* An event may name one of its identifiers an earlier name of another of the same type (an
  account renamed: Segment's alias from an earlier userId). The earlier name counts toward no
  limit, so the two join one profile, and the profile lists it as such once it holds both:
  one account under two names, which still merges with other profiles as one would.
"""

from __future__ import annotations

import dataclasses
import uuid
from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from datetime import UTC, datetime

PRIORITY = (
    "user_id", "hetu", "email", "phone", "twitter_id", "facebook_id", "instagram_id",
    "twitter_handle", "instagram_handle", "device_id", "anonymous_id",
)
DEFAULT_LIMITS = {
    "user_id": 1, "hetu": 1, "email": 5, "phone": 5, "twitter_id": 10, "facebook_id": 10,
    "instagram_id": 10, "twitter_handle": 10, "instagram_handle": 10, "device_id": 100,
    "anonymous_id": 100,
}


@dataclass(frozen=True, order=True)
class Identifier:
    type: str
    value: str

    @property
    def key(self) -> str:
        return f"{self.type}:{self.value}"

    @classmethod
    def from_key(cls, key: str) -> Identifier:
        type_, _, value = key.partition(":")
        return cls(type_, value)


@dataclass(frozen=True)
class Link:
    identifier: Identifier
    profile_id: str
    verified: bool
    source_message_id: str
    linked_at: datetime


@dataclass(frozen=True)
class ProfileNode:
    """A profile as the graph keeps it; ``identifiers`` are those its own record lists (they
    can lag its links after a crash between the two writes; resolution repairs that), and
    ``renamed`` those of them it lists as earlier names of another."""

    profile_id: str
    created_at: datetime
    merged_into: str | None = None
    identifiers: frozenset[Identifier] = frozenset()
    renamed: frozenset[Identifier] = frozenset()

    def count_by_type(self, renamed: Iterable[Identifier] = ()) -> dict[str, int]:
        """Its identifiers per type as the limits count them: an earlier name (listed as one,
        or one of ``renamed``, which an event is about to list) counts for none. But the
        earlier names listed still count as the one account they name when the profile
        holds no other of their type (renamed back, or the new name split off), unless the
        event renames one of the profile's names of that type again."""
        renamed = set(renamed)
        counts: dict[str, int] = {}
        for identifier in self.identifiers - self.renamed - renamed:
            counts[identifier.type] = counts.get(identifier.type, 0) + 1
        renaming = {identifier.type for identifier in renamed & self.identifiers}
        for identifier in self.identifiers & self.renamed:
            if identifier.type not in renaming:
                counts.setdefault(identifier.type, 1)
        return counts


@dataclass(frozen=True)
class Merge:
    """Profile ``merged`` became part of ``survivor`` because of ``identifier`` (an event
    linked them) or of a person's decision (``identifier`` None, ``cause_message_id`` the
    decision's id)."""

    merge_id: str
    survivor: str
    merged: str
    identifier: Identifier | None
    cause_message_id: str
    at: datetime


@dataclass(frozen=True)
class Conflict:
    """``identifier`` was not linked to ``profile_id`` (it is on ``other_profile`` or over a
    limit); ``reason`` says which rule held it back."""

    identifier: Identifier
    profile_id: str
    other_profile: str | None
    reason: str


@dataclass
class Resolution:
    profile_id: str
    created: bool = False
    linked: list[Identifier] = field(default_factory=list)
    merges: list[Merge] = field(default_factory=list)
    conflicts: list[Conflict] = field(default_factory=list)
    renamed: list[Identifier] = field(default_factory=list)  # listed as earlier names now


@dataclass(frozen=True)
class Split:
    """Identifiers taken off ``profile_id``: moved to ``new_profile_id`` (kind "unmerge") or
    unlinked altogether (kind "release")."""

    split_id: str
    kind: str
    profile_id: str
    new_profile_id: str | None
    identifiers: tuple[Identifier, ...]
    reason: str
    actor: str
    at: datetime


class NotOnProfile(Exception):
    """The identifiers named are not (all) linked to the profile named."""


class MergeRefused(Exception):
    """Merging would break merge protection (a limit); the message names it."""


class LinkTaken(Exception):
    """Another worker linked the identifier first; resolution starts over."""


class GraphReader(ABC):
    @abstractmethod
    def links(self, identifiers: Iterable[Identifier]) -> dict[Identifier, Link]: ...

    @abstractmethod
    def profile(self, profile_id: str) -> ProfileNode | None:
        """The profile with the identifiers its record lists, in one read."""

    def read_profiles(self, profile_ids: Iterable[str]) -> dict[str, ProfileNode]:
        """The profiles that exist among ``profile_ids`` (a store reads them at once)."""
        nodes = {profile_id: self.profile(profile_id) for profile_id in profile_ids}
        return {profile_id: node for profile_id, node in nodes.items() if node is not None}


class GraphRepository(GraphReader):
    """Where the graph is kept. ``lock`` serialises changes to a set of profiles across
    workers; every other method is a single read or an idempotent write."""

    @abstractmethod
    def create_profile(self, node: ProfileNode) -> None:
        """Create the profile if absent (idempotent: a re-delivered event recreates nothing)."""

    @abstractmethod
    def add_links(self, links: list[Link]) -> None:
        """Link identifiers to one profile, then list them on its record; raise LinkTaken if
        one is already linked to another profile."""

    def link_together(self, created: list[ProfileNode], links: list[Link]) -> set[str]:
        """Create the ``created`` profiles (if absent), then store ``links`` (of several
        profiles) and list the stored ones on their profiles' records, in that order, as
        ``create_profile`` and ``add_links`` would; returns the keys of the identifiers
        another profile holds already. A store may do it for all at once."""
        for node in created:
            self.create_profile(node)
        by_profile: dict[str, list[Link]] = {}
        for link in links:
            by_profile.setdefault(link.profile_id, []).append(link)
        taken: set[str] = set()
        for profile_id, group in by_profile.items():
            try:
                self.add_links(group)
            except LinkTaken:
                now = self.links(link.identifier for link in group)
                taken |= {link.identifier.key for link in group
                          if now[link.identifier].profile_id != profile_id}
        return taken

    def listed(self, profile_id: str) -> set[Identifier]:
        node = self.profile(profile_id)
        return set(node.identifiers) if node else set()

    @abstractmethod
    def merge(self, merge: Merge) -> None:
        """Mark ``merge.merged`` as merged into the survivor and move all its links there,
        the earlier names it lists listed as such on the survivor.

        Idempotent and safe to repeat after a crash half-way."""

    @abstractmethod
    def note_renamed(self, profile_id: str, identifiers: Iterable[Identifier]) -> None:
        """List ``identifiers`` (on the profile) as earlier names of another of its own; one
        that leaves the profile (``move_links``, ``remove_links``) is no longer listed so."""

    @abstractmethod
    def move_links(self, identifiers: Iterable[Identifier], from_profile: str,
                   to_profile: str) -> None: ...

    @abstractmethod
    def remove_links(self, identifiers: Iterable[Identifier], profile_id: str) -> int: ...

    @abstractmethod
    def record_split(self, split: Split) -> None: ...

    @abstractmethod
    def lock(self, profile_ids: Iterable[str]) -> AbstractContextManager[None]: ...


class GraphSnapshot(GraphReader):
    """The links and profiles a batch of events will look at, read together when the batch
    begins, for the unlocked first look of ``resolve``: a known customer's event then costs
    no read of its own. What is not in it is read from ``repo``. After an event changed the
    graph, ``forget`` what it touched, so later events of the batch read that afresh; what
    other workers change meanwhile is seen as late as by any unlocked read, and whatever
    would be changed is re-read under the lock anyway."""

    def __init__(self, repo: GraphReader, asked: Iterable[Identifier],
                 links: Mapping[Identifier, Link], nodes: Mapping[str, ProfileNode]):
        self.repo = repo
        self._known = set(asked)  # those absent from ``links`` were unlinked
        self._links = dict(links)
        self._nodes = dict(nodes)

    def links(self, identifiers: Iterable[Identifier]) -> dict[Identifier, Link]:
        identifiers = list(identifiers)
        missing = [i for i in identifiers if i not in self._known]
        found = self.repo.links(missing) if missing else {}
        found.update({i: self._links[i] for i in identifiers if i in self._links})
        return found

    def profile(self, profile_id: str) -> ProfileNode | None:
        if profile_id in self._nodes:
            return self._nodes[profile_id]
        return self.repo.profile(profile_id)

    def reread(self, identifiers: Iterable[Identifier], profile_ids: Iterable[str]) -> None:
        """Read the links of ``identifiers`` again, and the profiles ``profile_ids`` and
        those the links point to: once the locks of the profiles a chunk of events will
        change are held, nobody else links to or from those until they are released (an
        erasure takes them too)."""
        identifiers = set(identifiers)
        links = self.repo.links(identifiers)
        for identifier in identifiers:
            self._known.add(identifier)
            self._links.pop(identifier, None)
        self._links.update(links)
        wanted = set(profile_ids) | {link.profile_id for link in links.values()}
        for profile_id in wanted:
            self._nodes.pop(profile_id, None)  # one gone meanwhile is read as gone
        self._nodes.update(self.repo.read_profiles(wanted))

    def learn(self, links: Iterable[Link], node: ProfileNode) -> None:
        """What an event of the batch wrote: its links, and its profile as it now stands."""
        for link in links:
            self._known.add(link.identifier)
            self._links[link.identifier] = link
        self._nodes[node.profile_id] = node

    def forget(self, identifiers: Iterable[Identifier], profile_ids: Iterable[str]) -> None:
        for identifier in identifiers:
            self._links.pop(identifier, None)
            self._known.discard(identifier)
        for profile_id in profile_ids:
            self._nodes.pop(profile_id, None)


def limits_from(overrides: Mapping[str, int]) -> dict[str, int]:
    """The default limits with the configured overrides applied."""
    return {**DEFAULT_LIMITS, **overrides}


def canonical_node(repo: GraphReader, profile_id: str) -> ProfileNode | None:
    """Follow merged_into to the profile that holds the identifiers now."""
    seen = set()
    node = repo.profile(profile_id)
    while node is not None and node.merged_into and node.profile_id not in seen:
        seen.add(node.profile_id)
        survivor = repo.profile(node.merged_into)
        if survivor is None:
            break
        node = survivor
    return node


def canonical(repo: GraphRepository, profile_id: str) -> str:
    node = canonical_node(repo, profile_id)
    return node.profile_id if node else profile_id


_NEVER = datetime.min.replace(tzinfo=UTC)


class _Owners:
    """The canonical profile behind each link, each profile read once per pass (the store is
    paid by the round trip). ``forget`` after a merge: the merged profile's owner changed."""

    def __init__(self, repo: GraphReader):
        self.repo = repo
        self._nodes: dict[str, ProfileNode] = {}

    def of(self, profile_id: str) -> ProfileNode:
        if profile_id not in self._nodes:
            self._nodes[profile_id] = (canonical_node(self.repo, profile_id)
                                       or ProfileNode(profile_id, _NEVER))
        return self._nodes[profile_id]

    def gone(self, profile_id: str) -> bool:
        """Whether there is no such profile (erased): ``of`` stands in a node never created."""
        return self.of(profile_id).created_at == _NEVER

    def read(self, profile_id: str) -> ProfileNode | None:
        """The profile ``profile_id`` as read in this pass, if it was."""
        return next((node for node in self._nodes.values() if node.profile_id == profile_id),
                    None)

    def forget(self) -> None:
        self._nodes.clear()


def priority_order(identifiers: Iterable[Identifier]) -> list[Identifier]:
    rank = {type_: index for index, type_ in enumerate(PRIORITY)}
    return sorted(set(identifiers), key=lambda i: (rank.get(i.type, len(PRIORITY)), i.value))


def new_profile_id(message_id: str) -> str:
    """Deterministic per event, so a re-delivered event finds the profile it created."""
    return "p_" + uuid.uuid5(uuid.NAMESPACE_URL, f"muisti:profile:{message_id}").hex


def merge_id(message_id: str, merged: str) -> str:
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"muisti:merge:{message_id}:{merged}"))


def resolve(
    repo: GraphRepository,
    identifiers: Iterable[Identifier],
    *,
    message_id: str,
    at: datetime,
    unverified: Iterable[Identifier] = (),
    limits: Mapping[str, int] = DEFAULT_LIMITS,
    max_attempts: int = 20,
    first_look: GraphReader | None = None,
    renamed: Iterable[Identifier] = (),
) -> Resolution:
    """Resolve an event's identifiers to one profile, linking and merging by the rules above.

    Raises ValueError when ``identifiers`` is empty. Concurrent resolutions by other workers
    are handled by locking the profiles involved and starting over when the graph changed
    under us (LinkTaken); after ``max_attempts`` the LinkTaken propagates. ``first_look``
    (a GraphSnapshot) serves the first, unlocked read; it is then told what the resolution
    changed. ``renamed``: those of ``identifiers`` the event names earlier names of another
    of its identifiers of the same type.
    """
    ordered = priority_order(identifiers)
    if not ordered:
        raise ValueError("an event needs at least one identifier to resolve")
    unverified, renamed = set(unverified), set(renamed)
    for attempt in range(max_attempts):
        reader = first_look if first_look is not None and attempt == 0 else repo
        links, owners, involved = _look(reader, ordered)
        if _nothing_to_change(ordered, links, owners, involved, renamed):
            # the common case, a known customer again: nothing to link, merge or repair
            return Resolution(involved[0])
        created = None
        if not links:
            # a new customer: its profile is locked before its links exist. Another worker
            # reaching it through one of them would otherwise be free to merge it while its
            # record does not list them all yet, and a merge moves the links the record lists
            created = ProfileNode(new_profile_id(message_id), at)
            involved = [created.profile_id]
            repo.create_profile(created)
        with repo.lock(involved):
            if created is None:
                # re-read under the lock: another worker may have changed the graph meanwhile
                links = repo.links(ordered)
                owners = _Owners(repo)
                now_involved = sorted({owners.of(link.profile_id).profile_id
                                       for link in links.values()})
                if now_involved != involved:
                    continue
                gone = {i: link for i, link in links.items() if owners.gone(link.profile_id)}
                if gone:
                    # left pointing at a profile erased since (a crash came between the
                    # writes that list or unlink it): no link at all, and start over
                    for identifier, link in gone.items():
                        repo.remove_links([identifier], link.profile_id)
                    continue
            try:
                result = _resolve_locked(repo, ordered, links, owners, message_id, at,
                                         unverified, limits, renamed)
            except LinkTaken:
                if attempt == max_attempts - 1:
                    raise
                continue
        _tell(first_look, result, ordered, links, created or owners.read(result.profile_id),
              unverified, message_id, at)
        return result
    raise LinkTaken("the graph kept changing under this event")


def profiles_to_lock(reader: GraphReader, identifiers: Iterable[Identifier],
                     message_id: str, renamed: Iterable[Identifier] = ()) -> list[str]:
    """The profiles ``resolve`` would lock for this event as ``reader`` sees the graph now:
    none for a known customer, the profile it would create for a new one."""
    ordered = priority_order(identifiers)
    if not ordered:
        return []
    links, owners, involved = _look(reader, ordered)
    if _nothing_to_change(ordered, links, owners, involved, set(renamed)):
        return []
    return involved or [new_profile_id(message_id)]


@dataclass(frozen=True)
class Arrival:
    """An event as the graph sees it."""

    message_id: str
    at: datetime
    identifiers: tuple[Identifier, ...]
    unverified: frozenset[Identifier] = frozenset()
    renamed: frozenset[Identifier] = frozenset()


@dataclass(frozen=True)
class Straight:
    """An event whose resolution only links its unknown identifiers: to ``profile`` (the
    one live profile holding the others), or to a new profile when ``profile`` is None."""

    event: Arrival
    profile: ProfileNode | None
    known: dict[Identifier, Link]

    @property
    def target_id(self) -> str:
        """The profile its identifiers are linked to."""
        return self.profile.profile_id if self.profile else new_profile_id(self.event.message_id)


def straight_events(reader: GraphReader, events: Iterable[Arrival],
                    limits: Mapping[str, int] = DEFAULT_LIMITS) -> list[Straight]:
    """The events, in order, whose resolution only links unknown identifiers to one profile:
    their known identifiers are all linked to the same live profile and listed on its record
    (or none is known: a new customer), the profile then holds no more of a type than its
    limit, they name no earlier name (``resolve`` lists it as one), and no earlier one of
    ``events`` names any of their identifiers or any profile their identifiers are linked
    to. ``resolve`` would link each as said; since nothing before them in ``events``
    touches what they touch, linking them all first (``link_straight``) ends as resolving
    ``events`` one at a time does. ``reader`` must have read the events' links and profiles
    under the locks of the profiles they change (``GraphSnapshot.reread``)."""
    named: set[Identifier] = set()
    touched: set[str] = set()
    found = []
    for event in events:
        keys = set(event.identifiers)
        known = reader.links(keys)
        owners = {link.profile_id for link in known.values()}
        node = reader.profile(next(iter(owners))) if len(owners) == 1 else None
        counts = node.count_by_type() if node is not None else {}
        for identifier in keys - set(known):
            counts[identifier.type] = counts.get(identifier.type, 0) + 1
        if (keys and not event.renamed and not keys & named and not owners & touched
                and len(known) < len(keys)
                and (not owners or (node is not None and node.merged_into is None
                                    and set(known) <= node.identifiers))
                and all(n <= limits.get(t, 1) for t, n in counts.items())):
            found.append(Straight(event, node, known))
        named |= keys
        # what the event would change: its identifiers' profiles and those they merged into
        for owner in owners:
            touched.add(owner)
            canonical = canonical_node(reader, owner)
            if canonical is not None:
                touched.add(canonical.profile_id)
    return found


def link_straight(repo: GraphRepository, events: list[Straight],
                  first_look: GraphSnapshot | None = None) -> dict[str, Resolution]:
    """Link the ``straight_events`` together (their profiles' locks held), as ``resolve``
    would one at a time; returns their resolutions by message id. An event missing from the
    answer had an identifier taken by another worker meanwhile: resolve it as usual, in its
    turn (``first_look`` has forgotten what it named)."""
    planned = []
    for straight in events:
        event = straight.event
        node = straight.profile or ProfileNode(straight.target_id, event.at)
        ordered = priority_order(event.identifiers)
        planned.append((straight, node, ordered, [
            Link(i, node.profile_id, i not in event.unverified, event.message_id, event.at)
            for i in ordered if i not in straight.known]))
    taken = repo.link_together([node for straight, node, _, _ in planned
                                if straight.profile is None],
                               [link for *_, links in planned for link in links])
    resolutions = {}
    for straight, node, ordered, links in planned:
        event = straight.event
        if any(link.identifier.key in taken for link in links):
            if first_look is not None:
                first_look.forget(ordered, {node.profile_id})
            continue
        result = Resolution(node.profile_id, created=straight.profile is None,
                            linked=[link.identifier for link in links])
        _tell(first_look, result, ordered, straight.known, node, set(event.unverified),
              event.message_id, event.at)
        resolutions[event.message_id] = result
    return resolutions


def _look(reader: GraphReader, ordered: list[Identifier]
          ) -> tuple[dict[Identifier, Link], _Owners, list[str]]:
    """The event's links, their owners, and the profiles those are (sorted)."""
    links = reader.links(ordered)
    owners = _Owners(reader)
    return links, owners, sorted({owners.of(link.profile_id).profile_id
                                  for link in links.values()})


def _nothing_to_change(ordered: list[Identifier], links: Mapping[Identifier, Link],
                       owners: _Owners, involved: list[str], renamed: set[Identifier]) -> bool:
    return (len(links) == len(ordered) and len(involved) == 1
            and all(link.profile_id == involved[0] for link in links.values())
            and set(ordered) <= owners.of(involved[0]).identifiers
            and renamed <= owners.of(involved[0]).renamed)


def _tell(first_look: GraphReader | None, result: Resolution, ordered: list[Identifier],
          links: Mapping[Identifier, Link], before: ProfileNode | None, unverified: set[Identifier],
          message_id: str, at: datetime) -> None:
    """Bring the batch's snapshot up to date with what ``result`` wrote: later events of the
    customer in the same batch then need no read of their own. After a merge or a conflict
    the snapshot forgets instead, and they read afresh."""
    if not isinstance(first_look, GraphSnapshot):
        return
    if result.merges or result.conflicts or result.renamed or before is None:
        first_look.forget(ordered, {result.profile_id,
                                    *(merge.merged for merge in result.merges)})
        return
    first_look.learn(
        [dataclasses.replace(links[i], profile_id=result.profile_id) if i in links
         else Link(i, result.profile_id, i not in unverified, message_id, at) for i in ordered],
        dataclasses.replace(before, identifiers=before.identifiers | set(ordered)))


def _resolve_locked(repo, ordered, links, owners, message_id, at, unverified, limits,
                    renamed) -> Resolution:
    anchor_identifier = next((i for i in ordered if i in links), None)
    if anchor_identifier is None:
        node = ProfileNode(new_profile_id(message_id), at)
        result = Resolution(node.profile_id, created=True)
    else:
        node = owners.of(links[anchor_identifier].profile_id)
        result = Resolution(node.profile_id)
    counts = node.count_by_type(renamed)
    listed = set(node.identifiers)  # kept current below
    new_links: list[Link] = []  # written together, before anything reads the profile again

    for identifier in ordered:
        link = links.get(identifier)
        counted = identifier not in renamed  # an earlier name counts toward no limit
        if link is None:
            limit = limits.get(identifier.type, 1)
            if counted and counts.get(identifier.type, 0) >= limit:
                result.conflicts.append(_at_limit(identifier, result.profile_id, limit))
                continue
            new_links.append(Link(identifier, result.profile_id, identifier not in unverified,
                                  message_id, at))
            if counted:
                counts[identifier.type] = counts.get(identifier.type, 0) + 1
            listed.add(identifier)
            result.linked.append(identifier)
            continue
        owner = owners.of(link.profile_id)
        if owner.profile_id == result.profile_id:
            if identifier not in listed and counted:
                limit = limits.get(identifier.type, 1)
                if counts.get(identifier.type, 0) >= limit:
                    # a release cut short, or a link whose listing came after the profile
                    # filled up: the profile cannot list it, so it goes
                    repo.remove_links([identifier], link.profile_id)
                    result.conflicts.append(_at_limit(identifier, result.profile_id, limit))
                    continue
                counts[identifier.type] = counts.get(identifier.type, 0) + 1
            if link.profile_id != owner.profile_id or identifier not in listed:
                # finish what a crash interrupted: a merge that did not move this link, or a
                # link the profile's record does not list yet
                repo.move_links([identifier], link.profile_id, owner.profile_id)
                listed.add(identifier)
            continue
        if identifier in unverified or (not link.verified
                                        and _holds_a_verified_link(repo, owners, owner)):
            result.conflicts.append(Conflict(identifier, result.profile_id, owner.profile_id,
                                             "unverified link never merges profiles"))
            continue
        other_counts = owner.count_by_type(renamed)
        over = [t for t in set(counts) | set(other_counts)
                if counts.get(t, 0) + other_counts.get(t, 0) > limits.get(t, 1)]
        if over:
            result.conflicts.append(Conflict(identifier, result.profile_id, owner.profile_id,
                                             f"merge would exceed the {', '.join(sorted(over))} "
                                             "limit"))
            continue
        if new_links:
            repo.add_links(new_links)  # the merge moves what the store lists
            new_links = []
        survivor, merged = _survivor(node, owner)
        merge = Merge(merge_id(message_id, merged.profile_id), survivor.profile_id,
                      merged.profile_id, identifier, message_id, at)
        repo.merge(merge)
        result.merges.append(merge)
        result.profile_id = survivor.profile_id
        owners.forget()
        node = owners.of(survivor.profile_id)
        listed = set(node.identifiers)
        counts = {t: counts.get(t, 0) + other_counts.get(t, 0)
                  for t in set(counts) | set(other_counts)}
    if new_links:
        repo.add_links(new_links)
    # once the profile holds both names (under its lock, so no other resolution counts the
    # earlier one meanwhile; a crash before this is finished by the event's next delivery)
    result.renamed = sorted(i for i in renamed - node.renamed if i in listed and any(
        other.type == i.type and other != i and other in listed for other in ordered))
    if result.renamed:
        repo.note_renamed(result.profile_id, result.renamed)
    return result


def _at_limit(identifier: Identifier, profile_id: str, limit: int) -> Conflict:
    return Conflict(identifier, profile_id, None,
                    f"profile already has {limit} {identifier.type} (limit)")


def _holds_a_verified_link(repo: GraphRepository, owners: _Owners, owner: ProfileNode) -> bool:
    """False for a profile made of caller-id numbers alone (an unknown caller): a verified
    claim on its number absorbs it, as it would have had the call come after the claim. Only
    links that are the owner's count: a crash may have left a released identifier listed."""
    return any(link.verified and owners.of(link.profile_id).profile_id == owner.profile_id
               for link in repo.links(owner.identifiers).values())


def _survivor(a: ProfileNode, b: ProfileNode) -> tuple[ProfileNode, ProfileNode]:
    if (a.created_at, a.profile_id) <= (b.created_at, b.profile_id):
        return a, b
    return b, a


def split(repo: GraphRepository, profile_id: str, identifiers: Iterable[Identifier], *,
          reason: str, at: datetime, actor: str) -> Split:
    """Move ``identifiers`` off a profile into a new one (undoing a wrong merge). Both
    profiles keep their history; the log says who split what and why.

    Raises NotOnProfile when an identifier is not on the profile or none would remain.
    """
    identifiers = tuple(priority_order(identifiers))
    profile_id = canonical(repo, profile_id)
    with repo.lock([profile_id]):
        _require_on_profile(repo, profile_id, identifiers)
        remaining = len(repo.listed(profile_id)) - len(identifiers)
        if remaining < 1:
            raise NotOnProfile("splitting off every identifier would leave the profile empty")
        split_id = str(uuid.uuid4())
        new_id = "p_" + uuid.uuid5(uuid.NAMESPACE_URL, f"muisti:split:{split_id}").hex
        repo.create_profile(ProfileNode(new_id, at))
        repo.move_links(identifiers, profile_id, new_id)
        result = Split(split_id, "unmerge", profile_id, new_id, identifiers, reason, actor, at)
        repo.record_split(result)
        return result


def release(repo: GraphRepository, identifier: Identifier, *, reason: str, at: datetime,
            actor: str) -> Split:
    """Unlink an identifier from whichever profile holds it (a recycled phone number).

    Raises NotOnProfile when no profile holds it."""
    link = repo.links([identifier]).get(identifier)
    if link is None:
        raise NotOnProfile(f"no profile holds this {identifier.type}")
    profile_id = canonical(repo, link.profile_id)
    with repo.lock([profile_id]):
        _require_on_profile(repo, profile_id, (identifier,))
        repo.remove_links([identifier], profile_id)
        result = Split(str(uuid.uuid4()), "release", profile_id, None, (identifier,), reason,
                       actor, at)
        repo.record_split(result)
        return result


def _require_on_profile(repo, profile_id: str, identifiers) -> None:
    links = repo.links(identifiers)
    missing = [i.key for i in identifiers
               if i not in links or canonical(repo, links[i].profile_id) != profile_id]
    if missing:
        raise NotOnProfile(f"not linked to profile {profile_id}: {', '.join(missing)}")


def merge_profiles(repo: GraphRepository, a: str, b: str, *, decision_id: str, at: datetime,
                   limits: Mapping[str, int] = DEFAULT_LIMITS) -> Merge | None:
    """Merge two profiles on a person's decision (an accepted match suggestion).

    Returns None when they are already one profile. Raises MergeRefused when the merged
    profile would exceed a limit, and NotOnProfile when a profile does not exist.
    """
    if repo.profile(a) is None or repo.profile(b) is None:
        raise NotOnProfile("both profiles must exist")
    while True:
        a, b = canonical(repo, a), canonical(repo, b)
        if a == b:
            return None
        with repo.lock([a, b]):
            node_a, node_b = canonical_node(repo, a), canonical_node(repo, b)
            if (node_a.profile_id, node_b.profile_id) != (a, b):
                continue  # merged elsewhere while we waited for the locks
            return _merge_locked(repo, node_a, node_b, decision_id, at, limits)


def _merge_locked(repo, a: ProfileNode, b: ProfileNode, decision_id, at, limits) -> Merge:
    counts_a, counts_b = a.count_by_type(), b.count_by_type()
    over = sorted(t for t in set(counts_a) | set(counts_b)
                  if counts_a.get(t, 0) + counts_b.get(t, 0) > limits.get(t, 1))
    if over:
        raise MergeRefused(f"merging would exceed the {', '.join(over)} limit")
    survivor, merged = _survivor(a, b)
    merge = Merge(merge_id(decision_id, merged.profile_id), survivor.profile_id,
                  merged.profile_id, None, decision_id, at)
    repo.merge(merge)
    return merge
