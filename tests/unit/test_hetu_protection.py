"""A hetu at rest: keyed digest for matching, sealed copy for display, never in the clear."""

import orjson
import pytest

from services.common.config import ConfigError, Settings
from services.common.envelope import new_envelope
from services.common.hetu_protection import (
    HetuProtector,
    hetu_digest,
    is_sealed_hetu,
    mask,
    matching_form,
)
from services.common.identifiers import InvalidIdentifier, is_hetu_digest, normalise
from services.common.shredding import identifier_key_id
from services.identity.channels import (
    CallEventSchema,
    SegmentMessageSchema,
    from_call,
    from_segment,
    protect_converted,
    protect_hetus,
)
from services.identity.matching import normalise_record
from tests.support.hetus import InMemoryKeys, in_memory_protector

HETU = "220478-123H"
OTHER = "131052-308T"
DIGEST_KEY = b"unit-test-digest-key"


@pytest.fixture
def keys():
    return InMemoryKeys()


@pytest.fixture
def hetus(keys):
    return in_memory_protector(DIGEST_KEY, keys)


@pytest.mark.parametrize("type_, value", [("hetu", HETU), ("user_id", HETU),
                                           ("user_id", " 220478-123h ")])
def test_a_hetu_named_in_a_lookup_or_request_is_matched_as_ingestion_keeps_it(type_, value):
    assert matching_form(DIGEST_KEY, type_, value) == ("hetu", hetu_digest(DIGEST_KEY, HETU))


def test_other_identifiers_named_are_only_normalised():
    assert matching_form(DIGEST_KEY, "user_id", "LOY100001") == ("user_id", "LOY100001")
    assert matching_form(DIGEST_KEY, "phone", "040 123 4567") == ("phone", "+358401234567")
    with pytest.raises(InvalidIdentifier):
        matching_form(DIGEST_KEY, "hetu", "220478-123X")


def test_equal_hetus_written_differently_have_one_digest_and_different_hetus_do_not():
    digest = hetu_digest(DIGEST_KEY, HETU)
    assert is_hetu_digest(digest)
    assert hetu_digest(DIGEST_KEY, " 220478-123h ") == digest
    assert hetu_digest(DIGEST_KEY, OTHER) != digest
    assert hetu_digest(b"another-digest-key", HETU) != digest
    assert HETU not in digest and "220478" not in digest


def test_a_digest_is_accepted_where_a_hetu_is_and_passes_unchanged():
    digest = hetu_digest(DIGEST_KEY, HETU)
    assert hetu_digest(DIGEST_KEY, digest) == digest
    assert normalise("hetu", digest) == digest


def test_an_invalid_hetu_has_no_digest():
    with pytest.raises(InvalidIdentifier):
        hetu_digest(DIGEST_KEY, "220478-123A")
    with pytest.raises(InvalidIdentifier):
        hetu_digest(DIGEST_KEY, "hmac:not-a-digest")


def test_a_hetu_identifier_becomes_its_digest_and_a_sealed_trait(hetus):
    protected = hetus.protect({"hetu": HETU, "user_id": "L-1"}, None)
    assert protected.changed and not protected.invalid
    assert protected.identifiers == {"hetu": hetus.digest(HETU), "user_id": "L-1"}
    assert is_sealed_hetu(protected.traits["hetu"])
    assert hetus.reveal(protected.traits["hetu"]) == HETU
    assert HETU.encode() not in orjson.dumps([protected.identifiers, protected.traits])


def test_a_trait_holding_a_hetu_becomes_the_identifier_whatever_its_name(hetus):
    for traits in ({"hetu": HETU.lower()}, {"henkilotunnus": HETU}, {"customer_ref": HETU}):
        protected = hetus.protect({"user_id": "L-1"}, {**traits, "firstName": "Aino"})
        assert protected.identifiers["hetu"] == hetus.digest(HETU)
        assert set(protected.traits) == {"hetu", "firstName"}
        assert hetus.reveal(protected.traits["hetu"]) == HETU


def test_an_invalid_hetu_is_dropped_and_reported_without_its_value(hetus):
    protected = hetus.protect({"hetu": "220478-123A", "user_id": "L-1"},
                              {"hetu": "not a hetu", "ssn": "010101-0102"})
    assert protected.identifiers == {"user_id": "L-1"}
    assert protected.traits == {}
    assert len(protected.invalid) == 3
    assert "220478" not in orjson.dumps(protected.invalid).decode()


def test_a_second_different_hetu_in_one_event_is_dropped(hetus):
    protected = hetus.protect({"hetu": HETU}, {"national_id": OTHER})
    assert protected.identifiers == {"hetu": hetus.digest(HETU)}
    assert hetus.reveal(protected.traits["hetu"]) == HETU
    assert [i["type"] for i in protected.invalid] == ["hetu"]


@pytest.mark.parametrize("type_", ["user_id", "anonymous_id", "device_id"])
def test_an_opaque_id_that_is_a_valid_hetu_becomes_the_hetu_identifier(hetus, type_):
    protected = hetus.protect({type_: f" {HETU.lower()} ", "email": "aino@example.com"}, None)
    assert protected.identifiers == {"hetu": hetus.digest(HETU), "email": "aino@example.com"}
    assert hetus.reveal(protected.traits["hetu"]) == HETU
    assert protected.changed and not protected.invalid


def test_a_user_id_that_is_another_hetu_than_the_events_is_dropped_and_reported(hetus):
    protected = hetus.protect({"hetu": HETU, "user_id": OTHER}, None)
    assert protected.identifiers == {"hetu": hetus.digest(HETU)}
    assert [i["type"] for i in protected.invalid] == ["hetu"]
    assert "131052" not in orjson.dumps(protected.invalid).decode()


def test_a_user_id_shaped_like_a_hetu_but_invalid_stays_a_user_id(hetus):
    protected = hetus.protect({"user_id": "220478-123A"}, None)
    assert protected.identifiers == {"user_id": "220478-123A"}
    assert not protected.changed


def test_a_segment_user_id_that_is_a_hetu_leaves_the_api_protected_its_key_included(hetus):
    message = SegmentMessageSchema().load({"type": "alias", "userId": HETU,
                                           "previousId": OTHER})
    converted = protect_converted(from_segment(message), hetus)
    assert converted.envelope.identifiers == {"hetu": hetus.digest(HETU)}
    assert converted.key == f"hetu:{hetus.digest(HETU)}"
    for code in (HETU, OTHER):
        assert code not in converted.key
        assert code.encode() not in converted.envelope.to_bytes()


def test_a_callers_customer_number_that_is_a_hetu_is_protected_and_the_number_stays_key(hetus):
    call = CallEventSchema().load({"call_id": "c-1", "event": "answered",
                                   "caller_number": "040 123 4567", "customer_number": HETU})
    converted = protect_converted(from_call(call), hetus)
    assert converted.envelope.identifiers == {"phone": "+358401234567",
                                              "hetu": hetus.digest(HETU)}
    assert converted.key == "phone:+358401234567"  # a call's steps stay on one partition
    assert HETU.encode() not in converted.envelope.to_bytes()


def test_protecting_twice_changes_nothing_the_second_time(hetus):
    once = hetus.protect({"hetu": HETU}, {"firstName": "Aino"})
    twice = hetus.protect(once.identifiers, once.traits)
    assert not twice.changed
    assert (twice.identifiers, twice.traits) == (once.identifiers, once.traits)


def test_an_event_without_a_hetu_is_left_alone(hetus):
    envelope = new_envelope("Identify", "web", identifiers={"user_id": "L-1"},
                            payload={"traits": {"birthday": "1978-04-22", "zip": "00100"}})
    assert protect_hetus(envelope, hetus) is envelope


def test_an_envelope_from_kafka_leaves_the_worker_with_digest_and_sealed_trait_only(hetus):
    envelope = new_envelope("Customer Verified", "phone",
                            identifiers={"user_id": "L-1", "hetu": HETU},
                            payload={"traits": {"hetu": HETU}})
    protected = protect_hetus(envelope, hetus)
    assert protected.identifiers["hetu"] == hetus.digest(HETU)
    assert HETU.encode() not in protected.to_bytes()
    assert protected.message_id == envelope.message_id


def test_erasing_the_digests_data_key_makes_every_sealed_copy_unreadable(hetus, keys):
    protected = hetus.protect({"hetu": HETU}, None)
    digest = protected.identifiers["hetu"]
    # what the consent service destroys for each identifier of an erased subject
    assert keys.delete([identifier_key_id(DIGEST_KEY, "hetu", digest)]) == 1
    assert hetus.reveal(protected.traits["hetu"]) is None


def test_a_sealed_trait_moved_to_another_digest_does_not_match_it(hetus):
    sealed = hetus.protect({"hetu": HETU}, None).traits["hetu"]
    assert hetus.sealed_key_id_of(sealed) == hetus.sealed_key_id(hetus.digest(HETU))
    assert hetus.sealed_key_id_of(sealed) != hetus.sealed_key_id(hetus.digest(OTHER))
    assert hetus.reveal("sealed1:identifier:abc:%%%") is None
    assert hetus.reveal("220478*****") is None


def test_agents_see_the_birth_date_part_only():
    assert mask(HETU) == "220478*****"
    assert mask(None) == "*****"


def test_probabilistic_matching_compares_hetu_digests():
    digest = hetu_digest(DIGEST_KEY, HETU)
    assert normalise_record({"record_id": 1, "id_number": digest}).id_number == digest


def test_the_protector_needs_both_keys():
    with pytest.raises(ConfigError) as error:
        HetuProtector.from_settings(Settings(), None, "identity")
    assert {p.split(":")[0] for p in error.value.problems} == {"CDP_PRIVACY_DIGEST_KEY",
                                                               "CDP_MASTER_KEY"}
