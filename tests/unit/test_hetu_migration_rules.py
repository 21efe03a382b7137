"""Rewriting hetus stored in the clear before hetu protection: each service's rules give a
document the form ingestion gives it today, and nothing for a document already current (so
the migration is idempotent)."""

import os
from datetime import UTC, datetime

import pytest

from services.common.hetu_migration import DryRunKeys, PlainHetus
from services.common.hetu_protection import HetuProtector, hetu_digest, is_sealed_hetu
from services.common.shredding import FieldCipher, MasterKey, SubjectKeys
from services.common.store import PACKED
from services.export import hetu_migration as export
from services.identity import hetu_migration as identity
from services.profile import hetu_migration as profile
from services.profile.profile_store import unpack
from tests.unit.test_hetu_protection import InMemoryKeys

HETU = "131052-308T"
OTHER = "220478-123H"
DIGEST_KEY = b"unit-test-digest-key"
MASTER = MasterKey(os.urandom(32))
AT = datetime(2024, 5, 1, tzinfo=UTC)


@pytest.fixture
def keys():
    return InMemoryKeys()


@pytest.fixture
def protector(keys):
    return HetuProtector(DIGEST_KEY, FieldCipher(SubjectKeys(keys, MASTER)))


@pytest.fixture
def hetus(protector):
    return PlainHetus(protector)


def digest(code: str) -> str:
    return hetu_digest(DIGEST_KEY, code)


def test_only_a_plain_valid_hetu_is_rewritten(hetus):
    assert hetus.digest(HETU.lower()) == digest(HETU)
    for left in (digest(HETU), "131052-308A", "310299-123X", "not a hetu", 131052308, None):
        assert hetus.digest(left) is None
    assert hetus.digests([HETU, digest(HETU), "+358401234567"]) == [digest(HETU),
                                                                   "+358401234567"]
    assert hetus.digests([digest(HETU)]) is None


def test_a_key_ending_in_a_hetu_gets_its_digest(hetus):
    assert hetus.key(f"hetu:{HETU}") == f"hetu:{digest(HETU)}"
    assert hetus.key(f"m-1:hetu:{HETU}") == f"m-1:hetu:{digest(HETU)}"
    assert hetus.key(f"hetu:{digest(HETU)}") is None
    assert hetus.key("email:aino@example.com") is None


def test_an_identity_link_moves_to_the_digest_key_and_keeps_its_profile(hetus):
    link = {"_id": f"hetu:{HETU}", "type": "hetu", "value": HETU, "profile_id": "p1",
            "verified": True, "source_message_id": "m1", "linked_at": AT}
    new = identity.rewrite_link(hetus, link)
    assert new == {**link, "_id": f"hetu:{digest(HETU)}", "value": digest(HETU)}
    assert identity.rewrite_link(hetus, new) is None
    assert identity.rewrite_link(hetus, {"_id": "phone:+358401234567", "type": "phone",
                                         "value": "+358401234567", "profile_id": "p1"}) is None


def test_the_graph_profile_and_person_record_hold_the_digest(hetus):
    node = {"_id": "p1", "identifiers": {"hetu": [HETU, digest(HETU)], "user_id": ["u1"]}}
    new = identity.rewrite_profile(hetus, node)
    assert new["identifiers"] == {"hetu": [digest(HETU)], "user_id": ["u1"]}
    assert identity.rewrite_profile(hetus, new) is None
    record = identity.rewrite_person_record(hetus, {"_id": "p1", "id_number": HETU,
                                                    "given_name": "Aino"})
    assert record == {"_id": "p1", "id_number": digest(HETU), "given_name": "Aino"}
    assert identity.rewrite_person_record(hetus, record) is None


def test_merge_and_split_log_entries_and_conflicts_name_the_digest(hetus):
    merge = {"_id": "e1", "kind": "merge", "identifier": {"type": "hetu", "value": HETU}}
    assert identity.rewrite_log_entry(hetus, merge)["identifier"]["value"] == digest(HETU)
    split = {"_id": "e2", "kind": "split", "identifier": None, "identifiers": [
        {"type": "hetu", "value": HETU}, {"type": "user_id", "value": "u1"}]}
    assert identity.rewrite_log_entry(hetus, split)["identifiers"] == [
        {"type": "hetu", "value": digest(HETU)}, {"type": "user_id", "value": "u1"}]
    assert identity.rewrite_log_entry(hetus, identity.rewrite_log_entry(hetus, split)) is None
    conflict = {"_id": f"m1:hetu:{HETU}", "profile_id": "p1",
                "identifier": {"type": "hetu", "value": HETU}}
    new = identity.rewrite_conflict(hetus, conflict)
    assert new["_id"] == f"m1:hetu:{digest(HETU)}"
    assert new["identifier"] == {"type": "hetu", "value": digest(HETU)}
    assert identity.rewrite_conflict(hetus, new) is None


def trait(value, at=AT):
    return {"value": value, "rule": "most_recent", "source": "crm", "channel": "web",
            "at": at, "message_id": "m1"}


def test_a_profile_keeps_its_hetu_as_digest_and_one_sealed_trait_with_provenance(
        hetus, protector):
    doc = {"_id": "p1", "version": 3, "identifiers": {"hetu": [HETU], "email": ["a@x.fi"]},
           "traits": {"first_name": trait("Aino"), "henkilotunnus": trait(HETU.lower()),
                      "ssn": trait("not-a-code"), "note": trait("131052-308A")}}
    stored = profile.rewrite_profile(hetus, doc)
    assert PACKED in stored  # written back as the profile store keeps profiles
    new = unpack(stored)
    assert new["identifiers"] == {"hetu": [digest(HETU)], "email": ["a@x.fi"]}
    assert set(new["traits"]) == {"first_name", "hetu", "note"}  # ssn: invalid, dropped
    assert new["traits"]["note"] == trait("131052-308A")  # a lookalike that is no hetu
    sealed = new["traits"]["hetu"]
    assert {k: v for k, v in sealed.items() if k != "value"} == {
        k: v for k, v in trait(HETU).items() if k != "value"}
    assert protector.reveal(sealed["value"]) == HETU
    assert protector.sealed_key_id_of(sealed["value"]) == protector.sealed_key_id(digest(HETU))
    assert new["version"] == 3  # the store adapter bumps it as it writes
    assert profile.rewrite_profile(hetus, new) is None


def test_a_profile_keeps_the_hetu_trait_already_sealed(hetus, protector):
    sealed = protector.seal(digest(OTHER), OTHER)
    doc = {"_id": "p1", "identifiers": {}, "traits": {"hetu": trait(sealed),
                                                      "ssn": trait(HETU)}}
    assert unpack(profile.rewrite_profile(hetus, doc))["traits"] == {"hetu": trait(sealed)}


def test_the_profile_index_entry_moves_to_the_digest_key(hetus):
    entry = {"_id": f"hetu:{HETU}", "profile_id": "p1"}
    assert profile.rewrite_index_entry(hetus, entry) == {"_id": f"hetu:{digest(HETU)}",
                                                         "profile_id": "p1"}
    assert profile.rewrite_index_entry(hetus, {"_id": f"hetu:{digest(HETU)}",
                                               "profile_id": "p1"}) is None
    assert profile.rewrite_index_entry(hetus, {"_id": "user_id:hetu:x"}) is None


def test_a_kept_event_is_protected_as_ingestion_protects_it(hetus, protector):
    event = {"_id": "p1|m1", "profile_id": "p1", "identifiers": {"user_id": "u1"},
             "payload": {"traits": {"hetu": HETU, "first_name": "Aino"}, "call": "identify"}}
    new = profile.rewrite_event(hetus, event)
    assert new["identifiers"] == {"user_id": "u1", "hetu": digest(HETU)}
    assert new["payload"]["call"] == "identify"
    assert new["payload"]["traits"]["first_name"] == "Aino"
    assert protector.reveal(new["payload"]["traits"]["hetu"]) == HETU
    assert profile.rewrite_event(hetus, new) is None
    assert profile.rewrite_event(hetus, {"_id": "p1|m2", "identifiers": {"user_id": "u1"},
                                         "payload": None}) is None


def test_a_dry_run_creates_no_data_key(keys):
    dry = HetuProtector(DIGEST_KEY, FieldCipher(SubjectKeys(DryRunKeys(keys), MASTER)))
    sealed = PlainHetus(dry).sealed(HETU)
    assert is_sealed_hetu(sealed) and dry.reveal(sealed) == HETU
    assert keys.wrapped == {}


def test_the_export_read_model_holds_the_digest_and_the_sealed_trait(hetus, protector):
    doc = {"_id": "p1", "identifiers": {"hetu": [HETU], "email": ["a@x.fi"]},
           "traits": {"first_name": "Aino", "hetu": HETU, "ssn": OTHER}, "segments": ["vip"]}
    stored = export.rewrite_profile(hetus, doc)
    assert set(stored) == {"_id", "segments", PACKED}  # as the export store keeps its rows
    new = unpack(stored)
    assert new["identifiers"] == {"hetu": [digest(HETU)], "email": ["a@x.fi"]}
    assert set(new["traits"]) == {"first_name", "hetu"}  # one hetu trait: the named one
    assert protector.reveal(new["traits"]["hetu"]) == HETU
    assert export.rewrite_profile(hetus, stored) is None
    entry = {"_id": f"identifier:hetu:{HETU}", "profile_ids": ["p1"]}
    assert export.rewrite_index_entry(hetus, entry) == {
        "_id": f"identifier:hetu:{digest(HETU)}", "profile_ids": ["p1"]}
    assert export.rewrite_index_entry(hetus, {"_id": f"identifier:hetu:{digest(HETU)}"}) is None
