"""API keys and roles.

Keys are random 256-bit secrets shown once at creation; the store keeps only their SHA-256 (a
fast hash is right here: the keys carry full entropy, unlike passwords). A verified key is cached
for ``auth_cache_seconds``, which bounds how late a revocation takes effect.

Roles: collector (write events), agent (read profiles, masked), supervisor (read unmasked,
audit), partner (own exports only), dpo (consent and data-subject requests), admin (all).

Command line for operators::

    python -m services.common.auth create --role agent --name "Helpdesk 1"
    python -m services.common.auth revoke KEY_ID
"""

from __future__ import annotations

import argparse
import hashlib
import secrets
import sys
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime

from pymongo.database import Database

ROLES = ("collector", "agent", "supervisor", "partner", "dpo", "admin")
KEY_PREFIX = "mk_"


class UnknownRole(ValueError):
    pass


@dataclass(frozen=True)
class Principal:
    """Who is calling: the key's id (never the key), its name, roles and partner."""

    key_id: str
    name: str
    roles: frozenset[str]
    partner_id: str | None = None

    def may(self, allowed_roles: Iterable[str]) -> bool:
        """True when the key holds one of ``allowed_roles``; admin may do everything."""
        return "admin" in self.roles or not self.roles.isdisjoint(allowed_roles)


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def _check_roles(roles: Iterable[str]) -> list[str]:
    roles = sorted(set(roles))
    unknown = [role for role in roles if role not in ROLES]
    if unknown or not roles:
        raise UnknownRole(f"roles must be a non-empty subset of {', '.join(ROLES)}; got {roles}")
    return roles


class ApiKeys:
    """API keys in the store (collection ``api_keys``), with a short verification cache."""

    COLLECTION = "api_keys"

    def __init__(self, db: Database, cache_seconds: float = 5.0,
                 clock: Callable[[], float] = time.monotonic):
        self._collection = db[self.COLLECTION]
        self._cache_seconds = cache_seconds
        self._clock = clock
        self._cache: dict[str, tuple[float, Principal | None]] = {}
        self._lock = threading.Lock()

    def create(self, name: str, roles: Iterable[str], *, partner_id: str | None = None,
               key: str | None = None) -> tuple[str, str]:
        """Store a new key and return (key_id, key). The key itself is not stored.

        ``key`` may be given to register a known secret (local runs); creating the same key
        again updates its name and roles.
        """
        roles = _check_roles(roles)
        key = key or KEY_PREFIX + secrets.token_urlsafe(32)
        digest = hash_key(key)
        self._collection.update_one(
            {"_id": digest},
            {"$set": {"name": name, "roles": roles, "partner_id": partner_id,
                      "key_id": digest[:16], "revoked_at": None},
             "$setOnInsert": {"created_at": datetime.now(UTC)}},
            upsert=True,
        )
        return digest[:16], key

    def revoke(self, key_id: str) -> bool:
        """Revoke at once in this process; others notice within ``cache_seconds``."""
        result = self._collection.update_one(
            {"key_id": key_id, "revoked_at": None}, {"$set": {"revoked_at": datetime.now(UTC)}})
        with self._lock:
            for digest, (_, principal) in list(self._cache.items()):
                if principal is not None and principal.key_id == key_id:
                    del self._cache[digest]
        return result.modified_count == 1

    def authenticate(self, key: str) -> Principal | None:
        """The principal for ``key``, or None when it is unknown or revoked."""
        digest = hash_key(key)
        now = self._clock()
        with self._lock:
            cached = self._cache.get(digest)
        if cached and now - cached[0] < self._cache_seconds:
            return cached[1]
        doc = self._collection.find_one({"_id": digest})
        principal = None
        if doc and not doc.get("revoked_at"):
            principal = Principal(doc["key_id"], doc["name"], frozenset(doc["roles"]),
                                  doc.get("partner_id"))
        with self._lock:
            if len(self._cache) > 10_000:
                self._cache.clear()
            self._cache[digest] = (now, principal)
        return principal

    def register_bootstrap_keys(self, spec: str) -> None:
        """Register ``role:key,role:key`` keys from configuration. Only missing keys are
        created: a bootstrap key revoked through the API stays revoked across restarts."""
        for item in filter(None, (part.strip() for part in spec.split(","))):
            role, _, key = item.partition(":")
            digest = hash_key(key)
            self._collection.update_one({"_id": digest}, {"$setOnInsert": {
                "name": f"bootstrap {role}", "roles": [role], "key_id": digest[:16],
                "partner_id": "demo-partner" if role == "partner" else None,
                "revoked_at": None, "created_at": datetime.now(UTC)}}, upsert=True)


def main(argv: list[str] | None = None) -> int:
    from services.common import store
    from services.common.config import Settings

    parser = argparse.ArgumentParser(prog="python -m services.common.auth")
    commands = parser.add_subparsers(dest="command", required=True)
    create = commands.add_parser("create", help="create a key and print it once")
    create.add_argument("--role", action="append", required=True, choices=ROLES)
    create.add_argument("--name", required=True)
    create.add_argument("--partner-id")
    revoke = commands.add_parser("revoke", help="revoke a key by its id")
    revoke.add_argument("key_id")
    args = parser.parse_args(argv)

    settings = Settings.from_env()
    keys = ApiKeys(store.database(store.connect(settings), settings))
    if args.command == "create":
        key_id, key = keys.create(args.name, args.role, partner_id=args.partner_id)
        print(f"key_id: {key_id}\nkey:    {key}\n(the key is shown only now)")
        return 0
    if keys.revoke(args.key_id):
        print(f"revoked {args.key_id}")
        return 0
    print(f"no active key {args.key_id}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
