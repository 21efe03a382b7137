import base64
import os

import pytest
from cryptography.exceptions import InvalidTag

from services.common.shredding import (
    FieldCipher,
    InvalidMasterKey,
    MasterKey,
    Shredded,
    SubjectKeys,
    identifier_digest,
    identifier_key_id,
    profile_key_id,
)
from tests.support.hetus import InMemoryKeys


@pytest.fixture
def store():
    return InMemoryKeys()


@pytest.fixture
def cipher(store):
    return FieldCipher(SubjectKeys(store, MasterKey(os.urandom(32))))


def test_sealed_personal_fields_round_trip(cipher):
    proof = {"ip": "192.0.2.7", "user_agent": "Mozilla/5.0", "email": "aino@example.com"}
    sealed = cipher.seal(profile_key_id("p-1"), proof)
    assert "aino" not in str(sealed) and "192.0.2.7" not in str(sealed)
    assert cipher.open(sealed) == proof


def test_destroying_the_subject_key_makes_every_copy_unreadable(store):
    keys = SubjectKeys(store, MasterKey(os.urandom(32)))
    cipher = FieldCipher(keys)
    first = cipher.seal(profile_key_id("p-1"), "040 123 4567")
    second = cipher.seal(profile_key_id("p-1"), {"ip": "192.0.2.7"})
    other = cipher.seal(profile_key_id("p-2"), "kept")
    assert keys.destroy([profile_key_id("p-1")]) == 1
    for sealed in (first, second):
        with pytest.raises(Shredded):
            cipher.open(sealed)
    assert cipher.open(other) == "kept"
    assert keys.destroy([profile_key_id("p-1")]) == 0  # idempotent


def test_a_wrapped_key_cannot_be_unwrapped_with_another_master_key(store):
    sealed = FieldCipher(SubjectKeys(store, MasterKey(os.urandom(32)))).seal("profile:x", 1)
    with pytest.raises(Exception):  # noqa: B017 - cryptography's InvalidTag
        FieldCipher(SubjectKeys(store, MasterKey(os.urandom(32)))).open(sealed)


def test_a_value_moved_to_another_subjects_key_does_not_open(store, cipher):
    sealed = cipher.seal("profile:a", "secret")
    cipher.seal("profile:b", "other")
    with pytest.raises(ValueError, match="does not match"):
        cipher.open({**sealed, "key_id": "profile:b"})


def test_master_key_must_be_base64_of_32_bytes():
    with pytest.raises(InvalidMasterKey, match="not set"):
        MasterKey.from_setting("")
    with pytest.raises(InvalidMasterKey, match="32 bytes"):
        MasterKey.from_setting(base64.b64encode(b"short").decode())
    MasterKey.from_setting(base64.b64encode(os.urandom(32)).decode())


def test_identifier_digests_are_keyed_and_stable():
    key, other = b"k" * 32, b"o" * 32
    digest = identifier_digest(key, "email", "aino@example.com")
    assert digest == identifier_digest(key, "email", "aino@example.com")
    assert digest != identifier_digest(other, "email", "aino@example.com")
    assert "aino" not in identifier_key_id(key, "email", "aino@example.com")


def test_a_rotation_opens_old_keys_with_the_previous_master_key_and_rewraps_them(store):
    old_master, new_master = os.urandom(32), os.urandom(32)
    sealed = [FieldCipher(SubjectKeys(store, MasterKey(old_master))).seal(
        profile_key_id(f"p-{n}"), {"email": f"aino{n}@example.com"}) for n in range(5)]

    without_previous = FieldCipher(SubjectKeys(store, MasterKey(new_master)))
    with pytest.raises(InvalidTag):
        without_previous.open(sealed[0])
    rotating = SubjectKeys(store, MasterKey(new_master, previous=old_master))
    assert FieldCipher(rotating).open(sealed[0]) == {"email": "aino0@example.com"}
    fresh = FieldCipher(rotating).seal(profile_key_id("p-new"), "new")  # under the new key

    report = rotating.rewrap_all(batch=2)
    assert report == {"scanned": 6, "rewrapped": 5, "already_current": 1,
                      "changed_meanwhile": 0, "unreadable": []}
    assert [without_previous.open(s) for s in sealed] == [
        {"email": f"aino{n}@example.com"} for n in range(5)]
    assert without_previous.open(fresh) == "new"
    assert rotating.rewrap_all()["already_current"] == 6  # idempotent


def test_a_key_erased_during_the_rewrap_stays_erased_and_unknown_keys_are_reported(store):
    old_master, new_master = os.urandom(32), os.urandom(32)
    keys = SubjectKeys(store, MasterKey(old_master))
    sealed = FieldCipher(keys).seal(profile_key_id("p-erased"), "gone")
    FieldCipher(SubjectKeys(store, MasterKey(os.urandom(32)))).seal(profile_key_id("p-alien"), 1)
    wrapped = store.wrapped[profile_key_id("p-erased")]
    keys.destroy([profile_key_id("p-erased")])
    assert not store.replace_if_unchanged(profile_key_id("p-erased"), wrapped, b"new")
    report = SubjectKeys(store, MasterKey(new_master, previous=old_master)).rewrap_all()
    assert report["unreadable"] == [profile_key_id("p-alien")]
    assert profile_key_id("p-erased") not in store.wrapped
    with pytest.raises(Shredded):
        FieldCipher(SubjectKeys(store, MasterKey(new_master))).open(sealed)


def test_a_previous_master_key_of_the_wrong_size_is_refused():
    with pytest.raises(InvalidMasterKey):
        MasterKey(os.urandom(32), previous=os.urandom(16))
