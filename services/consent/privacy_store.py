"""Data-subject requests in the store, with their personal parts crypto-shredded.

Collection ``privacy_requests`` holds one document per request: the state, digests, audit
trail and acks in the clear (they are the proof) and the plain identifiers and rectified
values sealed under the request's own data key (``privacy-request:<id>``). Forgetting them
after an erasure destroys that key. ``privacy_access_data`` holds each service's access data,
sealed under the same key, until the retention sweep removes it (``access_exports``).
Changes go through ``update``, under a lease lock per request: a lock document inserted with
the request id as ``_id`` (the store's unique ``_id`` is the one compare-and-swap FerretDB 1.x
really has; a version-filtered replace can still lose an update under concurrent writers
there), so the API and the worker never overwrite each other's changes.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import pymongo
import pymongo.errors
from pymongo.database import Database

from services.common.retention import RetentionRule
from services.common.shredding import FieldCipher, Shredded, SubjectKeys
from services.common.store import Index
from services.consent.privacy import (
    COMPLETED,
    OPEN_STATES,
    OVERDUE,
    PARTIALLY_FAILED,
    RECEIVED,
    Ack,
    Identifier,
    PrivacyRequest,
)

REQUESTS = "privacy_requests"
ACCESS_DATA = "privacy_access_data"
LOCKS = "privacy_request_locks"
LOCK_LEASE = timedelta(seconds=30)

INDEXES = [
    Index(REQUESTS, [("state", 1), ("received_at", -1)]),
    Index(ACCESS_DATA, [("request_id", 1)]),
]

RETENTION_RULES = [
    RetentionRule("privacy_requests", REQUESTS, "closed_at",
                  "closed data-subject requests and their audit trail (the DPO's proof)",
                  {"state": {"$in": [COMPLETED, PARTIALLY_FAILED]}}),
    RetentionRule("access_exports", ACCESS_DATA, "stored_at",
                  "services' access data awaiting download by the DPO"),
]


class PrivacyRequests:
    """The repository the privacy flow works through; unit tests use an in-memory one."""

    def add(self, request: PrivacyRequest) -> None:
        raise NotImplementedError

    def get(self, request_id: str) -> PrivacyRequest | None:
        raise NotImplementedError

    def update(self, request_id: str,
               change: Callable[[PrivacyRequest], bool]) -> PrivacyRequest | None:
        """Load, apply ``change`` (True when it changed the request) and store; None when
        there is no such request."""
        raise NotImplementedError

    def waiting(self, received_before: datetime, limit: int = 100) -> list[PrivacyRequest]:
        """Requests still in ``received`` since before ``received_before`` (not fanned out)."""
        raise NotImplementedError

    def store_access_data(self, ack: Ack, at: datetime) -> None:
        raise NotImplementedError

    def access_data(self, request_id: str) -> dict[str, Any]:
        """Every service's access data, by service (a shredded part is None)."""
        raise NotImplementedError

    def forget(self, request_id: str) -> None:
        """Make the request's sealed personal data unreadable for good."""
        raise NotImplementedError

    def others_about(self, request: PrivacyRequest) -> list[str]:
        """The ids of the other requests naming one of ``request``'s profiles or identifier
        digests that an erasure makes forget: every one but an erasure not completed yet,
        whose retry still needs its identifiers (an access export collected earlier or still
        being collected, a rectification's corrected values: nothing is left to send them
        to)."""
        raise NotImplementedError


class MongoPrivacyRequests(PrivacyRequests):
    LOCK_WAIT_SECONDS = 10.0

    def __init__(self, db: Database, keys: SubjectKeys):
        self.requests = db[REQUESTS]
        self.access = db[ACCESS_DATA]
        self.locks = db[LOCKS]
        self.keys = keys
        self.cipher = FieldCipher(keys)

    def add(self, request: PrivacyRequest) -> None:
        self.requests.insert_one({**self._to_doc(request), "version": 0})

    def get(self, request_id: str) -> PrivacyRequest | None:
        doc = self.requests.find_one({"_id": request_id})
        return None if doc is None else self._from_doc(doc)

    def update(self, request_id: str,
               change: Callable[[PrivacyRequest], bool]) -> PrivacyRequest | None:
        with self._locked(request_id):
            doc = self.requests.find_one({"_id": request_id})
            if doc is None:
                return None
            request = self._from_doc(doc)
            if not change(request):
                return request
            self.requests.replace_one({"_id": request_id},
                                      {**self._to_doc(request), "version": doc["version"] + 1})
            return request

    @contextmanager
    def _locked(self, request_id: str) -> Iterator[None]:
        """Hold the request's lease lock; raises TimeoutError when it stays taken (the lease
        of a holder that died expires)."""
        token, delay = uuid.uuid4().hex, 0.005
        deadline = time.monotonic() + self.LOCK_WAIT_SECONDS
        while True:
            try:
                self.locks.insert_one({"_id": request_id, "token": token,
                                       "until": datetime.now(UTC) + LOCK_LEASE})
                break
            except pymongo.errors.DuplicateKeyError:
                self.locks.delete_one({"_id": request_id, "until": {"$lt": datetime.now(UTC)}})
                if time.monotonic() > deadline:
                    raise TimeoutError(f"privacy request {request_id} stayed locked") from None
                time.sleep(delay)
                delay = min(delay * 2, 0.2)
        try:
            yield
        finally:
            self.locks.delete_one({"_id": request_id, "token": token})

    def waiting(self, received_before: datetime, limit: int = 100) -> list[PrivacyRequest]:
        docs = self.requests.find({"state": RECEIVED, "received_at": {"$lt": received_before}})
        return [self._from_doc(doc) for doc in docs.sort("received_at", 1).limit(limit)]

    def listing(self, state: str | None, now: datetime, limit: int) -> list[PrivacyRequest]:
        """Newest first; ``state`` as shown (overdue is an open request past its deadline)."""
        if state == OVERDUE:
            query: dict = {"state": {"$in": list(OPEN_STATES)}, "deadline": {"$lt": now}}
        elif state in OPEN_STATES:
            query = {"state": state, "deadline": {"$gte": now}}
        elif state:
            query = {"state": state}
        else:
            query = {}
        docs = self.requests.find(query).sort("received_at", pymongo.DESCENDING).limit(limit)
        return [self._from_doc(doc) for doc in docs]

    def erasure_backlog(self, now: datetime) -> dict[str, Any]:
        """Counts of open, overdue and partially failed erasures and when the oldest open
        one was received (None when none is open)."""
        open_erasures = {"kind": "erasure", "state": {"$in": list(OPEN_STATES)}}
        oldest = next(iter(self.requests.find(open_erasures, {"received_at": 1})
                           .sort("received_at", 1).limit(1)), None)
        return {
            "open": self.requests.count_documents(open_erasures),
            "overdue": self.requests.count_documents({**open_erasures,
                                                      "deadline": {"$lt": now}}),
            "partially_failed": self.requests.count_documents(
                {"kind": "erasure", "state": PARTIALLY_FAILED}),
            "oldest_received_at": oldest["received_at"] if oldest else None,
        }

    def store_access_data(self, ack: Ack, at: datetime) -> None:
        sealed = self.cipher.seal(_request_key(ack.request_id), ack.data)
        self.access.update_one(
            {"_id": f"{ack.request_id}:{ack.service}"},
            {"$setOnInsert": {"request_id": ack.request_id, "service": ack.service,
                              "data": sealed, "stored_at": at}},
            upsert=True)

    def access_data(self, request_id: str) -> dict[str, Any]:
        found = {}
        for doc in self.access.find({"request_id": request_id}):
            try:
                found[doc["service"]] = self.cipher.open(doc["data"])
            except Shredded:
                found[doc["service"]] = None
        return found

    def forget(self, request_id: str) -> None:
        self.keys.destroy([_request_key(request_id)])

    def others_about(self, request: PrivacyRequest) -> list[str]:
        digests = [d["digest"] for d in request.identifier_digests]
        return [doc["_id"] for doc in self.requests.find({
            "_id": {"$ne": request.request_id},
            "$or": [{"profile_ids": {"$in": list(request.profile_ids)}},
                    {"identifier_digests.digest": {"$in": digests}}]},
            {"_id": 1, "kind": 1, "state": 1})
            if doc["kind"] != "erasure" or doc["state"] == COMPLETED]

    # --- documents -------------------------------------------------------------------------

    def _to_doc(self, request: PrivacyRequest) -> dict[str, Any]:
        personal = None
        if not request.personal_data_forgotten:
            personal = self.cipher.seal(_request_key(request.request_id), {
                "identifiers": [i.as_dict() for i in request.identifiers],
                "fields": request.fields})
        return {
            "_id": request.request_id, "kind": request.kind, "state": request.state,
            "requested_by": request.requested_by, "reason": request.reason,
            "received_at": request.received_at, "deadline": request.deadline,
            "expected": list(request.expected), "subject": request.subject,
            "profile_ids": request.profile_ids, "identifier_digests": request.identifier_digests,
            "personal": personal,
            "acks": [_ack_doc(ack) for ack in request.acks.values()],
            "audit": request.audit, "subject_expanded_at": request.subject_expanded_at,
            "fanned_out_at": request.fanned_out_at, "closed_at": request.closed_at,
            "personal_data_forgotten": request.personal_data_forgotten,
            "last_error": request.last_error, "receipt": request.receipt,
            "retries": request.retries,
        }

    def _from_doc(self, doc: dict[str, Any]) -> PrivacyRequest:
        identifiers: list[Identifier] = []
        fields: dict[str, Any] = {}
        if doc.get("personal"):
            try:
                personal = self.cipher.open(doc["personal"])
                identifiers = [Identifier(i["type"], i["value"]) for i in personal["identifiers"]]
                fields = personal["fields"]
            except Shredded:
                pass  # forgotten while this copy was being read
        return PrivacyRequest(
            request_id=doc["_id"], kind=doc["kind"], requested_by=doc["requested_by"],
            reason=doc["reason"], received_at=doc["received_at"], deadline=doc["deadline"],
            expected=tuple(doc["expected"]), subject=doc["subject"],
            profile_ids=list(doc["profile_ids"]), identifiers=identifiers,
            identifier_digests=list(doc["identifier_digests"]), fields=fields,
            state=doc["state"], acks={a["service"]: _ack(doc["_id"], doc["kind"], a)
                                      for a in doc["acks"]},
            audit=list(doc["audit"]), subject_expanded_at=doc.get("subject_expanded_at"),
            fanned_out_at=doc.get("fanned_out_at"), closed_at=doc.get("closed_at"),
            personal_data_forgotten=doc.get("personal_data_forgotten", False),
            last_error=doc.get("last_error"), receipt=doc.get("receipt"),
            retries=list(doc.get("retries") or []))


def _request_key(request_id: str) -> str:
    return f"privacy-request:{request_id}"


def _ack_doc(ack: Ack) -> dict[str, Any]:
    return {"service": ack.service, "status": ack.status, "summary": ack.summary,
            "at": ack.at, "message_id": ack.message_id, "error": ack.error}


def _ack(request_id: str, kind: str, doc: dict[str, Any]) -> Ack:
    return Ack(request_id=request_id, kind=kind, service=doc["service"], status=doc["status"],
               summary=doc["summary"], at=doc["at"], message_id=doc["message_id"],
               error=doc.get("error"))
