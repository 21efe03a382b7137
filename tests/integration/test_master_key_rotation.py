"""Rotating CDP_MASTER_KEY on the real store: the rewrap command wraps every data key under
the new master key, so sealed values (and their copies in retained events) still open after
the previous key is removed; a key destroyed by an erasure stays destroyed. Runs in a database
of its own, since it re-wraps every key it finds."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys

import pytest

from services.common.shredding import (
    FieldCipher,
    MasterKey,
    MongoWrappedKeys,
    Shredded,
    SubjectKeys,
    profile_key_id,
)


@pytest.fixture
def rotation_db(mongo_client, unique):
    name = f"muisti_rotation_{unique}"
    yield mongo_client[name]
    mongo_client.drop_database(name)


def rewrap(test_env, db_name, master, previous):
    env = {**test_env, "CDP_MONGO_DB": db_name,
           "CDP_MASTER_KEY": base64.b64encode(master).decode(),
           "CDP_MASTER_KEY_PREVIOUS": base64.b64encode(previous).decode()}
    return subprocess.run([sys.executable, "-m", "services.common.shredding", "rewrap"],
                          env=env, capture_output=True, text=True, timeout=120)


def test_the_rewrap_command_moves_every_data_key_to_the_new_master_key(
        test_env, rotation_db, unique):
    old_master, new_master = os.urandom(32), os.urandom(32)
    before = FieldCipher(SubjectKeys(MongoWrappedKeys(rotation_db), MasterKey(old_master)))
    sealed = {n: before.seal(profile_key_id(f"p-{n}-{unique}"), f"aino{n}@example.com")
              for n in range(3)}
    erased = before.seal(profile_key_id(f"erased-{unique}"), "gone@example.com")
    SubjectKeys(MongoWrappedKeys(rotation_db), MasterKey(old_master)).destroy(
        [profile_key_id(f"erased-{unique}")])

    done = rewrap(test_env, rotation_db.name, new_master, old_master)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert (report["scanned"], report["rewrapped"], report["unreadable"]) == (3, 3, [])

    after = FieldCipher(SubjectKeys(MongoWrappedKeys(rotation_db), MasterKey(new_master)))
    assert {n: after.open(s) for n, s in sealed.items()} == {
        n: f"aino{n}@example.com" for n in range(3)}
    with pytest.raises(Shredded):
        after.open(erased)
    again = json.loads(rewrap(test_env, rotation_db.name, new_master, old_master).stdout)
    assert (again["rewrapped"], again["already_current"]) == (0, 3)


def test_the_rewrap_command_exits_1_when_a_key_opens_under_neither_master_key(
        test_env, rotation_db, unique):
    FieldCipher(SubjectKeys(MongoWrappedKeys(rotation_db), MasterKey(os.urandom(32)))).seal(
        profile_key_id(f"alien-{unique}"), 1)
    done = rewrap(test_env, rotation_db.name, os.urandom(32), os.urandom(32))
    assert done.returncode == 1
    assert json.loads(done.stdout)["unreadable"] == [profile_key_id(f"alien-{unique}")]
