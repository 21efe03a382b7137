"""Data-subject requests as the identity service sees them (cdp.privacy.requests).

The identity graph is where a request's subject is known in full: a request may name only an
identifier (a platform's deletion callback knows just a social handle), so the graph finds
every profile that identifier reached and every profile merged into those, and every
identifier they hold. Erasure then removes the links, the profile nodes, the person records
behind match suggestions, the conflicts, and the identifier values in the identity log (the
log keeps that merges happened, not with what), and puts each erased identifier on the
suppression list, so a later event carrying it (a new tweet from the same handle) is dropped
instead of starting a new profile.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from services.common import privacy_requests
from services.common.identifiers import IDENTIFIER_TYPES, InvalidIdentifier, normalise
from services.common.privacy_requests import InvalidRequest
from services.identity.graph import GraphRepository, Identifier, Link, canonical


@dataclass(frozen=True)
class PrivacyRequest:
    request_id: str
    kind: str
    profile_ids: tuple[str, ...]
    identifiers: tuple[Identifier, ...]


def parse_request(payload: dict[str, Any]) -> PrivacyRequest:
    """The request in a cdp.privacy.requests payload, its identifiers normalised as on
    ingestion; raises InvalidRequest."""
    request = privacy_requests.parse_request(payload)
    identifiers = []
    for type_, value in request.identifiers:
        if type_ not in IDENTIFIER_TYPES:
            raise InvalidRequest(f"not an identifier: {type_!r}")
        try:
            identifiers.append(Identifier(type_, normalise(type_, value)))
        except InvalidIdentifier as error:
            raise InvalidRequest(f"invalid {type_}: {error}") from None
    if not request.profile_ids and not identifiers:
        raise InvalidRequest("the request names no profile and no identifier")
    return PrivacyRequest(request.request_id, request.kind, request.profile_ids,
                          tuple(identifiers))


@dataclass(frozen=True)
class Subject:
    """Everything the graph holds about one person: their profiles (the canonical ones and
    those merged into them) and every identifier linked to any of them."""

    profile_ids: frozenset[str]
    identifiers: frozenset[Identifier]


def expand_subject(repo: GraphRepository, request: PrivacyRequest,
                   merged_into: callable) -> Subject:
    """Follow the request's profiles and identifiers through the graph.

    ``merged_into(ids)`` returns the profiles whose ``merged_into`` is one of ``ids`` (the
    graph keeps merge pointers forward only). The subject's identifiers are the request's
    and those its profiles list that are linked to one of them: a profile merged away keeps
    its list, and an identifier on it may since have been split off or released to someone
    else."""
    roots = {canonical(repo, p) for p in request.profile_ids if repo.profile(p) is not None}
    roots |= {canonical(repo, link.profile_id)
              for link in repo.links(request.identifiers).values()}
    profiles = absorbed_closure(roots, merged_into)
    listed = set().union(*(node.identifiers for node in repo.read_profiles(profiles).values()))
    identifiers = set(request.identifiers) | {
        identifier for identifier, link in repo.links(listed).items()
        if link.profile_id in profiles}
    return Subject(frozenset(profiles), frozenset(identifiers))


def absorbed_closure(profile_ids: Iterable[str], merged_into: callable) -> set[str]:
    """The profiles and every profile merged into them, however long ago."""
    profiles = set(profile_ids)
    frontier = set(profiles)
    while frontier:
        frontier = set(merged_into(frontier)) - profiles
        profiles |= frontier
    return profiles


@contextmanager
def locked_subject(repo: GraphRepository, request: PrivacyRequest, merged_into: callable,
                   max_attempts: int = 10) -> Iterator[Subject]:
    """The request's subject, read again once its profiles are locked, for the block.

    Every change to the graph locks the profiles it changes, so while the block erases them
    no event links another identifier to them or merges another profile into them: what the
    block sees is all there is to erase. Raises TimeoutError (the caller retries) when a lock
    stays taken or merges keep reaching further."""
    subject = expand_subject(repo, request, merged_into)
    for _ in range(max_attempts):
        with repo.lock(subject.profile_ids):
            current = expand_subject(repo, request, merged_into)
            if current.profile_ids <= subject.profile_ids:
                yield current
                return
        subject = current  # a merge reached further meanwhile: lock those profiles too
    raise TimeoutError("the subject's profiles kept changing")


def unlink_erased(repo: GraphRepository, identifiers: Iterable[Identifier], merged_into: callable,
                  max_attempts: int = 10) -> int:
    """Remove the links of identifiers erased on request, wherever they point, and their
    place on the lists of the profiles holding them and of those merged into these (each
    profile locked as it changes); returns how many links were removed. An event linked them
    after all: it was resolved against a suppression list read before the erasure, or by an
    attempt a crash cut short. Raises TimeoutError (the caller retries) when a merge keeps
    moving them."""
    removed, pending = 0, set(identifiers)
    for _ in range(max_attempts):
        links = repo.links(pending)
        if not links:
            return removed
        by_profile: dict[str, list[Identifier]] = {}
        for identifier, link in links.items():
            by_profile.setdefault(link.profile_id, []).append(identifier)
        for profile_id, held in sorted(by_profile.items()):
            holder = canonical(repo, profile_id)
            with repo.lock([holder]):
                # off every list first, the link last: an attempt cut short still finds it
                for listing in sorted(absorbed_closure({holder}, merged_into) - {profile_id}):
                    repo.remove_links(held, listing)
                removed += repo.remove_links(held, profile_id)
        pending = set(links)  # read again: a merge may have moved one meanwhile
    raise TimeoutError("the erased identifiers' links kept moving")


def unlink_orphans(repo: GraphRepository, identifiers: Iterable[Identifier]) -> int:
    """Remove the links of ``identifiers`` that point at a profile no longer in the graph
    (erased); returns how many."""
    return unlink_orphaned(repo, repo.links(identifiers).values())


def unlink_orphaned(repo: GraphRepository, links: Iterable[Link]) -> int:
    """Remove those of ``links`` that point at a profile no longer in the graph (each only
    if it still points there); returns how many."""
    links = list(links)
    alive = repo.read_profiles({link.profile_id for link in links})
    return sum(repo.remove_links([link.identifier], link.profile_id)
               for link in links if link.profile_id not in alive)


def identifier_view(identifiers: Iterable[Identifier]) -> list[dict[str, str]]:
    return [{"type": i.type, "value": i.value}
            for i in sorted(identifiers, key=lambda i: (i.type, i.value))]
