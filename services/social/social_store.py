"""What the social service keeps in the store: the pollers' checkpoints, the compliance
streams' positions and the statuses of platform-driven deletion requests, none of which names a
person (a status is keyed by its confirmation code and holds only the request id and which
services have finished); and, briefly, stream deletions the privacy service has not yet
accepted and the app-scoped ids of Meta deletions whose page-scoped erasures are not yet
filed."""

from __future__ import annotations

from datetime import UTC, datetime

from pymongo.database import Database

from services.social.compliance_stream import PendingDeletionStore, StreamPositionStore
from services.social.page_scoped import PendingResolution, PendingResolutionStore
from services.social.poller import Checkpoint, CheckpointStore
from services.social.privacy import ANSWERING_SERVICES, DeletionRequest


class MongoCheckpoints(CheckpointStore):
    """One document per poller (``_id`` = the poller's name)."""

    COLLECTION = "social_poller_checkpoints"

    def __init__(self, db: Database):
        self._collection = db[self.COLLECTION]

    def load(self, name: str) -> Checkpoint:
        doc = self._collection.find_one({"_id": name}) or {}
        return Checkpoint(since_id=doc.get("since_id"), sweep_newest_id=doc.get("sweep_newest_id"),
                          pagination_token=doc.get("pagination_token"))

    def save(self, name: str, checkpoint: Checkpoint) -> None:
        self._collection.update_one({"_id": name}, {"$set": {
            "since_id": checkpoint.since_id, "sweep_newest_id": checkpoint.sweep_newest_id,
            "pagination_token": checkpoint.pagination_token,
            "updated_at": datetime.now(UTC)}}, upsert=True)


class DeletionStatuses:
    """Deletion requests by confirmation code, completed when every answering service acked."""

    COLLECTION = "social_deletion_requests"

    def __init__(self, db: Database):
        self._collection = db[self.COLLECTION]
        self._pending = db[MongoPendingResolutions.COLLECTION]

    def record(self, request: DeletionRequest, part_of: str | None = None) -> None:
        """Idempotent: a platform's retried callback finds its request already there.
        ``part_of`` names the confirmation code whose status page this request counts towards
        (the page-scoped erasures of a Meta callback)."""
        self._collection.update_one({"_id": request.confirmation_code}, {"$setOnInsert": {
            "request_id": request.request_id, "platform": request.platform,
            "status": "in_progress", "requested_at": request.requested_at,
            "services_done": [], "completed_at": None, "part_of": part_of}}, upsert=True)

    def acknowledged(self, request_id: str, service: str, status: str) -> bool:
        """Note one service's ack; returns False when the request is not one of ours."""
        doc = self._collection.find_one({"request_id": request_id})
        if doc is None:
            return False
        field = "services_done" if status == "done" else "services_failed"
        self._collection.update_one({"_id": doc["_id"]}, {"$addToSet": {field: service}})
        done = set(doc.get("services_done") or ()) | ({service} if status == "done" else set())
        if done >= set(ANSWERING_SERVICES) and doc.get("status") != "done":
            self._collection.update_one({"_id": doc["_id"]}, {"$set": {
                "status": "done", "completed_at": datetime.now(UTC)}})
        return True

    def get(self, confirmation_code: str) -> dict | None:
        """The status of a deletion: done only when its request and every part are done and
        no resolution of its parts is pending; incomplete when done but for parts that were
        never resolved (page_scoped.py). ``page_scoped_ids`` says which: pending,
        unresolved, or None."""
        doc = self._collection.find_one({"_id": confirmation_code})
        if doc is None:
            return None
        parts = list(self._collection.find({"part_of": confirmation_code}))
        resolving = self._pending.find_one({"_id": confirmation_code}, {"_id": 1}) is not None
        if resolving or any(part.get("status") != "done" for part in parts):
            doc = {**doc, "status": "in_progress", "completed_at": None}
        elif parts and doc.get("status") == "done":
            doc = {**doc, "completed_at": max(
                [doc["completed_at"], *(part["completed_at"] for part in parts)])}
        page_scoped = ("pending" if resolving else
                       "unresolved" if doc.get("page_scoped_unresolved_at") else None)
        if page_scoped == "unresolved" and doc.get("status") == "done":
            doc = {**doc, "status": "incomplete"}
        return {**doc, "parts": len(parts), "page_scoped_ids": page_scoped}

    def mark_unresolved(self, confirmation_code: str, at: datetime) -> None:
        self._collection.update_one({"_id": confirmation_code},
                                    {"$set": {"page_scoped_unresolved_at": at}})


class MongoStreamPositions(StreamPositionStore):
    """When each compliance stream partition was last heard from (``_id`` = stream name)."""

    COLLECTION = "social_stream_positions"

    def __init__(self, db: Database):
        self._collection = db[self.COLLECTION]

    def load(self, name: str) -> datetime | None:
        doc = self._collection.find_one({"_id": name}) or {}
        seen = doc.get("last_seen")
        return seen.replace(tzinfo=UTC) if seen and seen.tzinfo is None else seen

    def save(self, name: str, last_seen: datetime) -> None:
        self._collection.update_one({"_id": name}, {"$set": {"last_seen": last_seen}},
                                    upsert=True)


class MongoPendingDeletions(PendingDeletionStore):
    """Deletions read from a stream but not yet filed with the privacy service. The only
    place the social service holds a platform id, and only until the filing succeeds."""

    COLLECTION = "social_pending_deletions"

    def __init__(self, db: Database):
        self._collection = db[self.COLLECTION]

    def add(self, deletion: DeletionRequest) -> None:
        (type_, value), = deletion.identifiers
        self._collection.update_one({"_id": deletion.request_id}, {"$setOnInsert": {
            "confirmation_code": deletion.confirmation_code, "platform": deletion.platform,
            "reason": deletion.reason, "identifier": {"type": type_, "value": value},
            "requested_at": deletion.requested_at}}, upsert=True)

    def all(self) -> list[DeletionRequest]:
        return [DeletionRequest(
            request_id=doc["_id"], confirmation_code=doc["confirmation_code"],
            platform=doc["platform"], reason=doc["reason"],
            identifiers=((doc["identifier"]["type"], doc["identifier"]["value"]),),
            requested_at=doc["requested_at"]) for doc in self._collection.find().sort("_id")]

    def remove(self, request_id: str) -> None:
        self._collection.delete_one({"_id": request_id})


class MongoPendingResolutions(PendingResolutionStore):
    """Meta deletions whose page-scoped erasures are still to be filed (``_id`` = the
    confirmation code): the app-scoped id and when to try again, nothing more; the rest of
    the request is read from its status document."""

    COLLECTION = "social_pending_page_scoped_ids"

    def __init__(self, db: Database):
        self._collection = db[self.COLLECTION]
        self._statuses = DeletionStatuses(db)
        self._status_documents = db[DeletionStatuses.COLLECTION]

    def add(self, request: DeletionRequest, retry_at: datetime,
            refused_since: datetime | None) -> None:
        (_type, app_scoped_id), = request.identifiers
        self._collection.update_one({"_id": request.confirmation_code}, {
            "$set": {"retry_at": retry_at, "refused_since": refused_since},
            "$setOnInsert": {"app_scoped_id": app_scoped_id}}, upsert=True)

    def due(self, now: datetime) -> list[PendingResolution]:
        pending = list(self._collection.find({"retry_at": {"$lte": now}}).sort("retry_at"))
        if not pending:
            return []
        statuses = {doc["_id"]: doc for doc in self._status_documents.find(
            {"_id": {"$in": [doc["_id"] for doc in pending]}})}
        return [PendingResolution(
            request=DeletionRequest(
                request_id=statuses[doc["_id"]]["request_id"], confirmation_code=doc["_id"],
                platform="meta", reason="Meta data deletion request",
                identifiers=(("facebook_id", doc["app_scoped_id"]),),
                requested_at=_utc(statuses[doc["_id"]]["requested_at"])),
            refused_since=_utc(doc.get("refused_since"))) for doc in pending]

    def reschedule(self, confirmation_code: str, retry_at: datetime,
                   refused_since: datetime | None) -> None:
        self._collection.update_one({"_id": confirmation_code}, {"$set": {
            "retry_at": retry_at, "refused_since": refused_since}})

    def remove(self, confirmation_code: str) -> None:
        self._collection.delete_one({"_id": confirmation_code})

    def give_up(self, confirmation_code: str, at: datetime) -> None:
        self._statuses.mark_unresolved(confirmation_code, at)
        self.remove(confirmation_code)


def _utc(moment: datetime | None) -> datetime | None:
    """The store hands times back without their zone; they were written in UTC."""
    return moment.replace(tzinfo=UTC) if moment and moment.tzinfo is None else moment
