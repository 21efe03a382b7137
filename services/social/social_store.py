"""What the social service keeps in the store: the pollers' checkpoints, the compliance
streams' positions and the statuses of platform-driven deletion requests, none of which names a
person (a status is keyed by its confirmation code and holds only the request id and which
services have finished); and, briefly, stream deletions the privacy service has not yet
accepted."""

from __future__ import annotations

from datetime import UTC, datetime

from pymongo.database import Database

from services.social.compliance_stream import PendingDeletionStore, StreamPositionStore
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
        """The status of a deletion: done only when its request and every part are done."""
        doc = self._collection.find_one({"_id": confirmation_code})
        if doc is None:
            return None
        parts = list(self._collection.find({"part_of": confirmation_code}))
        if any(part.get("status") != "done" for part in parts):
            doc = {**doc, "status": "in_progress", "completed_at": None}
        elif parts and doc.get("status") == "done":
            doc = {**doc, "completed_at": max(
                [doc["completed_at"], *(part["completed_at"] for part in parts)])}
        return {**doc, "parts": len(parts)}


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
