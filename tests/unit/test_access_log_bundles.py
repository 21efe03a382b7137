"""The API ships its spooled reads bundled, and the worker takes a bundle apart again."""

from __future__ import annotations

from datetime import UTC, datetime

import orjson
import pytest

from services.common import topics
from services.common.bus import InvalidMessage, Outgoing, encode_value
from services.common.envelope import decode
from services.profile import access_log

AT = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)


def spooled(count: int) -> list[Outgoing]:
    """Reads as the spool gives them back to be shipped: values parsed from the spool file."""
    reads = [access_log.entry_message(profile_id=f"p_{n}", key_id="k", roles=["agent"],
                                      purpose="customer_service", endpoint="/v1/profiles",
                                      at=AT) for n in range(count)]
    return [Outgoing(read.topic, read.key, orjson.loads(encode_value(read.value)))
            for read in reads]


def shipped(message: Outgoing):
    return decode(encode_value(message.value))


def test_reads_are_shipped_in_bundles_the_worker_takes_apart_read_by_read():
    reads = spooled(access_log.BUNDLE_READS + 5)

    bundles = access_log.bundled(reads)

    assert [len(b.value.payload["reads"]) for b in bundles] == [access_log.BUNDLE_READS, 5]
    assert {b.topic for b in bundles} == {topics.PROFILE_ACCESSES}
    entries = [e for bundle in bundles for e in access_log.stored_entries(shipped(bundle))]
    assert [e["_id"] for e in entries] == [
        f"{read.key}|{read.value['message_id']}" for read in reads]
    assert entries[0] == {"_id": entries[0]["_id"], "profile_id": "p_0", "key_id": "k",
                          "roles": ["agent"], "purpose": "customer_service",
                          "endpoint": "/v1/profiles", "at": AT}


def test_a_single_read_from_an_older_api_is_still_stored():
    [read] = spooled(1)
    assert [e["profile_id"] for e in access_log.stored_entries(decode(orjson.dumps(
        read.value)))] == ["p_0"]


@pytest.mark.parametrize(("broken", "reason"), [
    ({"type": "Profile Read"}, "read 1 of the bundle: invalid envelope"),
    (None, "read 1 of the bundle: envelope must be a JSON object"),
])
def test_a_bundle_holding_a_broken_read_is_refused_naming_the_read(broken, reason):
    reads = spooled(2)
    reads[1] = Outgoing(reads[1].topic, reads[1].key, broken)
    [bundle] = access_log.bundled(reads)
    with pytest.raises(InvalidMessage, match=reason):
        access_log.stored_entries(shipped(bundle))


def test_a_read_missing_its_profile_in_a_bundle_is_refused():
    reads = spooled(1)
    del reads[0].value["profile_id"]
    [bundle] = access_log.bundled(reads)
    with pytest.raises(InvalidMessage, match="read 0 of the bundle: .*profile_id"):
        access_log.stored_entries(shipped(bundle))


def test_a_bundle_without_reads_is_refused():
    [bundle] = access_log.bundled(spooled(1))
    bundle.value.payload["reads"] = []
    with pytest.raises(InvalidMessage, match="lists its reads"):
        access_log.stored_entries(shipped(bundle))


def test_a_bundle_ends_before_it_outgrows_what_kafka_takes():
    reads = spooled(300)
    for read in reads:
        read.value["payload"]["endpoint"] = "/v1/profiles/" + "x" * 2000

    bundles = access_log.bundled(reads)

    assert len(bundles) == 2
    assert all(len(encode_value(b.value)) <= access_log.BUNDLE_BYTES + 1024 for b in bundles)
    assert sum(len(b.value.payload["reads"]) for b in bundles) == 300
    assert access_log.bundled([]) == []
