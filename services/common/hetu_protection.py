"""The Finnish personal identity code (hetu) at rest: a keyed digest to match on, a sealed
copy to show to the roles allowed to see it, and never the code itself.

At ingestion (the identity and social APIs for HTTP, the identity worker for events producers
put on Kafka themselves) :meth:`HetuProtector.protect` validates every hetu an event carries,
as an identifier (``hetu``, or an opaque id such as a ``user_id`` whose value is a valid hetu:
customers' systems do use the code as their customer number) or as a trait (a trait named like
a hetu, or any trait whose value is a valid hetu), and replaces it by

* the identifier ``hetu`` = ``hmac:`` + HMAC-SHA-256 of ``hetu:<code>`` under
  ``CDP_PRIVACY_DIGEST_KEY`` (``shredding.identifier_digest``): the value the identity graph
  links, matches, suppresses and looks up by. The same key and construction as the
  suppression list's digests, on purpose: every service that holds one holds the other, and
  a lookup by hetu anywhere is "digest the query, compare";
* the trait ``hetu`` = the code sealed with AES-256-GCM (``shredding.FieldCipher``) under a
  data key of its own, ``identifier_key_id`` of the digest, wrapped by ``CDP_MASTER_KEY``.
  That is the key an erasure destroys (the consent service destroys the data key of every
  identifier of the subject), so erasing the subject makes every copy unreadable: the
  profile's, and the ones in retained Kafka topics and backups that cannot be deleted.

:meth:`HetuProtector.reveal` opens a sealed trait for display (None once it was erased);
:func:`mask` is what an agent sees. Protecting is idempotent: a protected event passes
unchanged, so the worker can protect what the API already protected.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from pymongo.database import Database

from services.common.config import ConfigError, Settings
from services.common.identifiers import (
    HETU_DIGEST_PREFIX,
    InvalidIdentifier,
    is_hetu_digest,
    normalise,
)
from services.common.shredding import (
    FieldCipher,
    InvalidMasterKey,
    MasterKey,
    MongoWrappedKeys,
    Shredded,
    SubjectKeys,
    WrappedKeyStore,
    identifier_digest,
    identifier_key_id,
    is_sealed,
)

HETU = "hetu"
SEALED_PREFIX = "sealed1:"
MASK = "*****"
# trait names customers' systems use for the code; such a trait never reaches a profile in
# the clear, valid or not
HETU_TRAIT_NAMES = frozenset({
    "hetu", "henkilotunnus", "henkilötunnus", "personal_identity_code",
    "personalIdentityCode", "personal_id", "personalId", "national_id", "nationalId",
    "ssn", "socialSecurityNumber", "social_security_number"})


# identifiers whose value is whatever the customer's system chose, a hetu included: such a
# value is taken for the hetu identifier it is
OPAQUE_TYPES = ("user_id", "anonymous_id", "device_id")

# cheap test before the full validation of every string trait on every event
_HETU_SHAPED = re.compile(r"\s*[0-9]{6}[-+A-Ya-y][0-9]{3}[0-9A-Ya-y]\s*")


@dataclass
class Protected:
    """An event's identifiers and traits with every hetu replaced; ``invalid`` lists the
    hetus refused (``{"type", "reason"}``, never the value) and ``changed`` whether anything
    was replaced or dropped."""

    identifiers: dict[str, str]
    traits: dict[str, Any] | None
    invalid: list[dict[str, str]] = field(default_factory=list)
    changed: bool = False

    def payload(self, payload: Mapping[str, Any]) -> dict[str, Any]:
        """An event payload with these traits and the refused hetus in
        ``invalid_identifiers``."""
        payload = dict(payload)
        if self.traits is not None:
            payload["traits"] = self.traits
        if self.invalid:
            payload["invalid_identifiers"] = [*(payload.get("invalid_identifiers") or ()),
                                              *self.invalid]
        return payload


class HetuProtector:
    def __init__(self, digest_key: bytes, cipher: FieldCipher):
        self._digest_key = digest_key
        self._cipher = cipher

    @classmethod
    def from_settings(cls, settings: Settings, db: Database, service: str,
                      keys: WrappedKeyStore | None = None) -> HetuProtector:
        """Raises ConfigError when CDP_PRIVACY_DIGEST_KEY or CDP_MASTER_KEY is missing.
        ``keys`` replaces the store's data keys (a dry run's, which creates none)."""
        problems = []
        if not settings.privacy_digest_key:
            problems.append(f"CDP_PRIVACY_DIGEST_KEY: the {service} service digests personal "
                            "identity codes with this secret")
        try:
            master = MasterKey.from_settings(settings)
        except InvalidMasterKey as exc:
            problems.append(f"CDP_MASTER_KEY: {exc} (the {service} service seals personal "
                            "identity codes)")
        if problems:
            raise ConfigError(problems)
        return cls(settings.privacy_digest_key.encode(),
                   FieldCipher(SubjectKeys(keys or MongoWrappedKeys(db), master)))

    def digest(self, value: str) -> str:
        """The matching form of a hetu (see :func:`hetu_digest`)."""
        return hetu_digest(self._digest_key, value)

    def matching_form(self, type_: str, value: str, region: str = "FI") -> tuple[str, str]:
        """See :func:`matching_form`."""
        return matching_form(self._digest_key, type_, value, region)

    def seal(self, digest: str, code: str) -> str:
        """The display form of a valid, normalised hetu, under its digest's data key."""
        sealed = self._cipher.seal(identifier_key_id(self._digest_key, HETU, digest), code)
        return f"{SEALED_PREFIX}{sealed['key_id']}:{sealed['ciphertext']}"

    def reveal(self, sealed: str) -> str | None:
        """The hetu in a sealed trait, or None when its key was destroyed (erased) or the
        value is not one this platform sealed."""
        document = _sealed_document(sealed)
        if document is None:
            return None
        try:
            code = self._cipher.open(document)
        except (Shredded, ValueError):
            return None
        return code if isinstance(code, str) else None

    def sealed_key_id(self, digest: str) -> str:
        """The data key id a hetu with this digest is sealed under."""
        return identifier_key_id(self._digest_key, HETU, digest)

    @staticmethod
    def sealed_key_id_of(sealed: str) -> str | None:
        """The data key id a sealed trait names (None if it is not one)."""
        document = _sealed_document(sealed)
        return None if document is None else document["key_id"]

    def protect(self, identifiers: Mapping[str, Any],
                traits: Mapping[str, Any] | None) -> Protected:
        """``identifiers`` and ``traits`` with every hetu as digest and sealed trait. A hetu
        found in an opaque identifier (which is dropped) or a trait becomes the event's hetu
        identifier when it has none; a second, different one is dropped and reported."""
        identifiers = dict(identifiers)
        traits = None if traits is None else dict(traits)
        invalid: list[dict[str, str]] = []
        codes: list[str] = []
        changed = False
        value = identifiers.get(HETU)
        if value is not None and not is_hetu_digest(value):
            changed = True
            del identifiers[HETU]
            try:
                codes.append(normalise(HETU, str(value)))
            except InvalidIdentifier as exc:
                invalid.append({"type": HETU, "reason": exc.reason})
        for type_ in OPAQUE_TYPES:
            code = _valid_hetu(identifiers.get(type_))
            if code is not None:
                del identifiers[type_]
                changed = True
                codes.append(code)
        for name, value in list((traits or {}).items()):
            if not may_hold_hetu(name, value):
                continue
            try:
                code = normalise(HETU, value) if isinstance(value, str) else None
            except InvalidIdentifier as exc:
                if name in HETU_TRAIT_NAMES:
                    invalid.append({"type": HETU, "reason": f"trait {name}: {exc.reason}"})
                code = None
            if code is None and name not in HETU_TRAIT_NAMES:
                continue
            del traits[name]
            changed = True
            if code is not None and not is_hetu_digest(code):
                codes.append(code)
        linked = identifiers.get(HETU)
        for code in dict.fromkeys(codes):
            digest = self.digest(code)
            linked = linked or digest
            if digest != linked:
                invalid.append({"type": HETU, "reason": "a second, different personal identity "
                                "code in one event; dropped"})
                continue
            identifiers[HETU] = digest
            traits = {**(traits or {}), HETU: self.seal(digest, code)}
        return Protected(identifiers, traits, invalid, changed)


def hetu_digest(digest_key: bytes, value: str) -> str:
    """The matching form of a hetu: what the graph links and lookups compare. A digest is
    returned as it is; anything but a valid hetu raises InvalidIdentifier."""
    code = normalise(HETU, value)
    if is_hetu_digest(code):
        return code
    return HETU_DIGEST_PREFIX + identifier_digest(digest_key, HETU, code)


def matching_form(digest_key: bytes, type_: str, value: str,
                  region: str = "FI") -> tuple[str, str]:
    """An identifier someone names (a lookup, a consent decision, a data-subject request) as
    ingestion keeps it: normalised, and a hetu, given as one or as an opaque id whose value
    is one (a user_id), as the hetu's keyed digest. Raises InvalidIdentifier."""
    if type_ == HETU or (type_ in OPAQUE_TYPES and _valid_hetu(value) is not None):
        return HETU, hetu_digest(digest_key, value)
    return type_, normalise(type_, value, region=region)


def _valid_hetu(value: Any) -> str | None:
    """``value`` normalised when it is a valid hetu, else None."""
    if not isinstance(value, str) or _HETU_SHAPED.fullmatch(value) is None:
        return None
    try:
        return normalise(HETU, value)
    except InvalidIdentifier:
        return None


def _sealed_document(sealed: Any) -> dict[str, Any] | None:
    if not isinstance(sealed, str) or not sealed.startswith(SEALED_PREFIX):
        return None
    key_id, _, ciphertext = sealed[len(SEALED_PREFIX):].rpartition(":")
    document = {"sealed": 1, "key_id": key_id, "ciphertext": ciphertext}
    if not key_id or not is_sealed(document):
        return None
    try:
        base64.b64decode(ciphertext, validate=True)
    except ValueError:
        return None
    return document


def may_hold_hetu(trait: str, value: Any) -> bool:
    """Whether ingestion takes a trait for a hetu (to protect, or to drop when invalid): a
    hetu's trait name or a hetu-shaped string, unless it is already a sealed hetu."""
    if trait == HETU and is_sealed_hetu(value):
        return False
    return trait in HETU_TRAIT_NAMES or (isinstance(value, str)
                                         and _HETU_SHAPED.fullmatch(value) is not None)


def is_sealed_hetu(value: Any) -> bool:
    return _sealed_document(value) is not None


def mask(code: str | None) -> str:
    """What an agent sees: the birth date part, enough to confirm with the caller."""
    return code[:6] + MASK if code else MASK
