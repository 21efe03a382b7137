"""What the social service keeps in the store: the pollers' checkpoints and the statuses of
platform-driven deletion requests. Neither names a person (a status is keyed by its
confirmation code and holds only the request id and which services have finished)."""

from __future__ import annotations

from datetime import UTC, datetime

from pymongo.database import Database

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

    def record(self, request: DeletionRequest) -> None:
        """Idempotent: a platform's retried callback finds its request already there."""
        self._collection.update_one({"_id": request.confirmation_code}, {"$setOnInsert": {
            "request_id": request.request_id, "platform": request.platform,
            "status": "in_progress", "requested_at": request.requested_at,
            "services_done": [], "completed_at": None}}, upsert=True)

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
        return self._collection.find_one({"_id": confirmation_code})
