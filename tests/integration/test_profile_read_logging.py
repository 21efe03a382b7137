"""Every profile read answered is in the access log, even when the API process is killed right
after answering: concurrent reads share their access-log writes (group commit) but each is
answered only once its own entry is stored."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime

import requests

from services.common.envelope import new_envelope
from services.profile import projection
from services.profile.profile_store import ACCESS_INDEX, ACCESS_LOG, ProfileStore
from tests.support.processes import ServiceApi

READS = 48


def stored_profile(db, unique: str) -> str:
    """A profile written as the projection writes one, found by its phone."""
    profile_id = f"p_{unique}"
    phone = f"+35840{abs(hash(unique)) % 10_000_000:07d}"
    event = new_envelope("Identify", "web", identifiers={"phone": phone},
                         payload={"traits": {"city": "Oulu"}},
                         message_id=f"{unique}-m1").resolved_to(profile_id)
    store = ProfileStore(db)
    store.save(projection.apply_event(None, event.to_dict()))
    store.index_entries({f"phone:{phone}": profile_id})
    return phone


def test_every_read_answered_before_a_kill_has_its_access_entry(test_env, api_keys, db,
                                                                 unique):
    phone = stored_profile(db, unique)
    api = ServiceApi("profile", test_env).start()
    headers = {"Authorization": f"Bearer {api_keys['agent']}", "X-Purpose": "customer_service"}

    def read(_: int) -> int:
        return requests.get(f"{api.url}/v1/profiles", headers=headers, timeout=30,
                            params={"type": "phone", "value": phone}).status_code

    try:
        with ThreadPoolExecutor(max_workers=12) as pool:
            statuses = list(pool.map(read, range(READS)))
    finally:
        api.kill()  # SIGKILL: nothing buffered in the process survives
    assert statuses == [200] * READS
    entries = list(db[ACCESS_LOG].find({"profile_id": f"p_{unique}"}))
    assert len(entries) == READS
    assert {(e["key_id"], e["purpose"], e["endpoint"]) for e in entries} == {
        (entries[0]["key_id"], "customer_service", "/v1/profiles")}
    listed = db[ACCESS_INDEX].find_one({"_id": f"p_{unique}"})["entries"]
    assert sorted(listed) == sorted(e["_id"] for e in entries)


def read_at_once(processes: list[ProfileStore], profile_ids: list[str], callers: int = 8):
    """``callers`` threads reading each new profile at the same moment, spread over the API
    processes' stores."""
    start = threading.Barrier(callers)

    def read(caller: int) -> None:
        for profile_id in profile_ids:
            start.wait(30)
            processes[caller % len(processes)].log_access(
                profile_id=profile_id, key_id=f"k{caller}", roles=["agent"],
                purpose="customer_service", endpoint="/v1/profiles", at=datetime.now(UTC))

    with ThreadPoolExecutor(max_workers=callers) as pool:
        list(pool.map(read, range(callers)))


def test_concurrent_reads_in_one_api_process_list_every_entry_for_erasure(db, unique):
    profile_ids = [f"p_{unique}_{n}" for n in range(10)]
    read_at_once([ProfileStore(db)], profile_ids)
    for profile_id in profile_ids:
        entries = [e["_id"] for e in db[ACCESS_LOG].find({"profile_id": profile_id})]
        assert len(entries) == 8
        assert sorted(db[ACCESS_INDEX].find_one({"_id": profile_id})["entries"]) == sorted(
            entries)


def test_first_reads_of_a_profile_in_two_api_processes_at_once_all_succeed_and_are_logged(
        db, unique):
    profile_ids = [f"p_{unique}_{n}" for n in range(10)]
    read_at_once([ProfileStore(db), ProfileStore(db)], profile_ids)
    for profile_id in profile_ids:
        assert db[ACCESS_LOG].count_documents({"profile_id": profile_id}) == 8
        assert db[ACCESS_INDEX].find_one({"_id": profile_id})["entries"]
