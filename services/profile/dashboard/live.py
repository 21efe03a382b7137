"""Live dashboard updates without I/O: which open dashboard hears about which Kafka message.

A dashboard tab subscribes with an ``Interest``: the profile it shows and, for screen pops, the
agent id, extension or queue whose calls it wants to see. ``notices_for`` turns one envelope
(a ``Profile Changed`` from cdp.profile.changes, a ``Call Started``/``Call Answered`` from
cdp.events.resolved) into notices keyed by what they concern, and ``StreamHub`` fans them out
to the matching subscriptions.

Each subscription has a bounded queue, so a slow browser cannot make the process hoard memory:
one that overflows is handed a single ``resync`` notice (reload the profile) instead of the
backlog. Notices carry ids and kinds only, never profile data: the browser re-reads the profile
through the masked, access-logged API.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Hashable, Iterable
from dataclasses import dataclass, field

import orjson

from services.common.envelope import Envelope

SCREEN_POP_TYPES = frozenset({"Call Started", "Call Answered"})
PROFILE_CHANGED = "Profile Changed"

Key = tuple[str, str]


class HubFull(Exception):
    """The process already serves as many live streams as it may."""


@dataclass(frozen=True)
class Interest:
    """What one dashboard tab wants to hear about; empty fields mean 'not this'."""

    profile_id: str | None = None
    agent_id: str | None = None
    extension: str | None = None
    queue: str | None = None

    def keys(self) -> frozenset[Key]:
        named = (("profile", self.profile_id), ("agent", self.agent_id),
                 ("extension", self.extension), ("queue", self.queue))
        return frozenset((name, value) for name, value in named if value)


@dataclass(frozen=True)
class Notice:
    """One server-sent event: its event name, id and JSON-serialisable data."""

    event: str
    id: str
    data: dict = field(default_factory=dict)


RESYNC = Notice("resync", "", {"reason": "too many updates at once; reload the profile"})
# handed to a stream replaced by a newer one of the same tab: it ends at once, freeing its thread
CLOSED = Notice("closed", "", {})


def notices_for(envelope: Envelope) -> list[tuple[Key, Notice]]:
    """The notices one envelope causes, each with the subscription key it concerns."""
    payload = envelope.payload or {}
    if envelope.type == PROFILE_CHANGED and envelope.profile_id:
        data = {"profile_id": envelope.profile_id, "kind": payload.get("kind"),
                "event_type": payload.get("event_type"), "channel": payload.get("channel"),
                "merged_into": payload.get("merged_into")}
        return [(("profile", envelope.profile_id),
                 Notice("profile-changed", envelope.message_id, data))]
    if envelope.type in SCREEN_POP_TYPES and envelope.profile_id:
        call = {name: _text(payload.get(name)) for name in ("agent_id", "extension", "queue")}
        notice = Notice("screen-pop", envelope.message_id, {
            "profile_id": envelope.profile_id, "type": envelope.type,
            "call_id": _text(payload.get("call_id")), **call})
        return [((name.removesuffix("_id"), value), notice)
                for name, value in call.items() if value]
    return []


def _text(value) -> str | None:
    text = str(value).strip() if value is not None else ""
    return text or None


class Subscription:
    """One live stream's mailbox. ``offer`` never blocks; ``next`` waits for a notice."""

    def __init__(self, interest: Interest, queue_size: int, owner: Hashable | None = None):
        self.interest = interest
        self.owner = owner
        self._queue: queue.Queue[Notice] = queue.Queue(maxsize=queue_size)
        self._overflowed = threading.Event()
        self._closed = threading.Event()

    @property
    def closed(self) -> bool:
        return self._closed.is_set()

    def offer(self, notice: Notice) -> None:
        if self._closed.is_set():
            return
        try:
            self._queue.put_nowait(notice)
        except queue.Full:
            self._overflowed.set()

    def close(self) -> None:
        """End the stream: a waiting ``next`` returns ``CLOSED`` at once."""
        self._closed.set()
        self._drain()
        try:
            self._queue.put_nowait(CLOSED)
        except queue.Full:
            pass  # an offer raced in; ``next`` sees the flag on its next call

    def next(self, timeout: float) -> Notice | None:
        """The next notice, ``RESYNC`` after an overflow, ``CLOSED`` once closed, or None
        when ``timeout`` passed."""
        if self._closed.is_set():
            return CLOSED
        if self._overflowed.is_set():
            self._overflowed.clear()
            self._drain()
            return RESYNC
        try:
            return self._queue.get(timeout=timeout)
        except queue.Empty:
            return None

    def _drain(self) -> None:
        while True:
            try:
                self._queue.get_nowait()
            except queue.Empty:
                return


class StreamHub:
    """Subscriptions by key, and the fan-out of envelopes to them. Thread-safe: Kafka's
    thread delivers while request threads subscribe and unsubscribe."""

    def __init__(self, *, capacity: int, queue_size: int = 100):
        self.capacity = capacity
        self.queue_size = queue_size
        self._by_key: dict[Key, set[Subscription]] = {}
        self._by_owner: dict[Hashable, Subscription] = {}
        self._count = 0
        self._lock = threading.Lock()

    def subscribe(self, interest: Interest, owner: Hashable | None = None) -> Subscription:
        """A new subscription. An ``owner`` (e.g. key id and browser tab) holds one at a time:
        its previous subscription is closed, since a browser that switched profile has left
        that stream, but its server would notice only at its next write.

        Raises HubFull at capacity, ValueError for an empty interest."""
        keys = interest.keys()
        if not keys:
            raise ValueError("an interest needs a profile, agent id, extension or queue")
        subscription = Subscription(interest, self.queue_size, owner)
        with self._lock:
            previous = self._by_owner.get(owner) if owner is not None else None
            if previous is not None:
                self._remove(previous)
                previous.close()
            if self._count >= self.capacity:
                raise HubFull(f"this process serves {self.capacity} live streams already")
            self._count += 1
            for key in keys:
                self._by_key.setdefault(key, set()).add(subscription)
            if owner is not None:
                self._by_owner[owner] = subscription
        return subscription

    def unsubscribe(self, subscription: Subscription) -> None:
        with self._lock:
            self._remove(subscription)

    def _remove(self, subscription: Subscription) -> None:
        removed = False
        for key in subscription.interest.keys():
            subscribers = self._by_key.get(key)
            if subscribers and subscription in subscribers:
                subscribers.discard(subscription)
                removed = True
                if not subscribers:
                    del self._by_key[key]
        if removed:
            self._count -= 1
        if self._by_owner.get(subscription.owner) is subscription:
            del self._by_owner[subscription.owner]

    @property
    def active(self) -> int:
        with self._lock:
            return self._count

    def deliver(self, envelope: Envelope) -> int:
        """Offer the envelope's notices to every matching subscription, once each even when
        several of its keys match. Returns how many subscriptions were offered a notice."""
        return self.deliver_notices(notices_for(envelope))

    def deliver_notices(self, notices: Iterable[tuple[Key, Notice]]) -> int:
        targets: dict[Subscription, Notice] = {}
        with self._lock:
            for key, notice in notices:
                for subscription in self._by_key.get(key, ()):
                    targets.setdefault(subscription, notice)
        for subscription, notice in targets.items():
            subscription.offer(notice)
        return len(targets)


def server_sent_event(notice: Notice) -> bytes:
    """``notice`` in the text/event-stream format (data is one JSON line)."""
    lines = [f"event: {notice.event}"]
    if notice.id:
        lines.append(f"id: {notice.id}")
    lines.append("data: " + orjson.dumps(notice.data).decode())
    return ("\n".join(lines) + "\n\n").encode()


def heartbeat() -> bytes:
    """A comment line: keeps proxies from closing an idle stream and finds dead clients."""
    return b": heartbeat\n\n"
