"""A profile reads back from its packed stored form exactly as it was written."""

from datetime import UTC, datetime

import bson

from services.common.store import PACKED
from services.profile.profile_store import pack, unpack


def a_profile() -> dict:
    at = datetime(2026, 11, 29, 12, 0, 5, 123000, tzinfo=UTC)
    return {"_id": "p_1", "version": 3, "merged_into": None,
            "identifiers": {"phone": ["+358401234567"]},
            "traits": {"first_name": {"value": "Äijä", "source": "web", "at": at}},
            "computed": {"purchase_total": 89.9, "purchase_count": 1},
            "timeline": [{"at": at, "channel": "web", "summary": {"url": "https://x.fi/"}}]}


def test_only_the_id_version_and_merge_pointer_stay_fields_the_rest_is_one_binary():
    stored = pack(a_profile())
    assert set(stored) == {"_id", "version", "merged_into", PACKED}
    assert isinstance(stored[PACKED], bson.Binary)


def test_a_packed_profile_unpacks_to_the_same_profile_with_aware_times():
    # through BSON as the store would keep it
    stored = bson.decode(bson.encode(pack(a_profile())))
    assert unpack(stored) == a_profile()
    assert unpack(stored)["traits"]["first_name"]["at"].tzinfo is not None


def test_a_profile_stored_before_packing_reads_as_it_is():
    assert unpack(a_profile()) == a_profile()
    assert unpack(None) is None
