"""Export domain without I/O: k-anonymous aggregates, sealed partner secrets, and finding a
subject known only by identifiers among what partners received."""

import base64
import hashlib
import os

import orjson
import pytest

from services.common.config import Settings
from services.export import aggregates, rendering
from services.export.contracts import (
    InvalidContract,
    from_document,
    parse_contract,
    public_view,
    to_document,
)
from services.export.sealing import SecretBox, SecretUnreadable

DESTINATION = {"kind": "https", "url": "https://partner.example/in",
               "signing_secret": "s" * 32, "authorization": "Bearer partner-token-123"}


def aggregate_contract(k=None, measures=None):
    return parse_contract("stats", {
        "name": "Statistics", "required_purposes": ["analytics"], "mode": "aggregate",
        "destination": DESTINATION, "format": "csv",
        "aggregate": {"dimensions": [{"name": "city", "source": "traits.city"},
                                     {"name": "tier", "source": "computed.tier"}],
                      "measures": measures if measures is not None else
                      [{"name": "spend", "source": "computed.total_spend"}],
                      "k": k}})


def person(i, city, tier="gold", spend=10.0):
    computed = {"tier": tier} if spend is None else {"tier": tier, "total_spend": spend}
    return {"profile_id": f"p{i}", "traits": {"city": city}, "computed": computed}


def aggregate(contract, people, k):
    aggregator = aggregates.Aggregator(contract.aggregate)
    for snapshot in people:
        aggregator.add(snapshot)
    return aggregator.result(k)


def test_a_cell_of_exactly_k_profiles_is_published_and_one_below_k_is_suppressed():
    contract = aggregate_contract()
    people = ([person(i, "Oulu") for i in range(5)]
              + [person(10 + i, "Turku", spend=2.0 + i) for i in range(4)])
    result = aggregate(contract, people, k=5)
    assert result.published_cells == 1 and result.suppressed_cells == 1
    assert result.rows == [{"city": "Oulu", "tier": "gold", "count": 5, "spend_sum": 50.0,
                            "spend_avg": 10.0}]
    body = rendering.encode_rows(contract, result.rows, aggregates.columns(contract.aggregate))
    assert body.decode() == "city,tier,count,spend_sum,spend_avg\nOulu,gold,5,50.0,10.0\n"
    assert "Turku" not in body.decode()  # a suppressed cell leaves no trace, not even its name


def test_a_sum_over_fewer_than_k_values_is_suppressed_even_in_a_large_cell():
    contract = aggregate_contract()
    people = [person(i, "Oulu", spend=None) for i in range(5)] + [person(9, "Oulu", spend=99)]
    [row] = aggregate(contract, people, k=5).rows
    assert row["count"] == 6
    assert row["spend_sum"] is None and row["spend_avg"] is None


def test_the_cell_size_is_the_stricter_of_the_service_and_the_contract():
    assert aggregates.effective_k(aggregate_contract(k=25).aggregate, 10) == 25
    assert aggregates.effective_k(aggregate_contract(k=3).aggregate, 10) == 10
    assert aggregates.effective_k(aggregate_contract().aggregate, 10) == 10


def test_aggregates_group_by_attributes_never_by_identifiers():
    with pytest.raises(InvalidContract) as error:
        parse_contract("stats", {
            "name": "S", "required_purposes": ["analytics"], "mode": "aggregate",
            "destination": DESTINATION,
            "fields": [{"name": "em", "source": "identifiers.email"}],
            "aggregate": {"dimensions": [{"name": "email", "source": "identifiers.email"}],
                          "k": 1}})
    assert {"fields", "aggregate.dimensions.0", "aggregate.k"} <= set(error.value.problems)


def test_an_aggregate_contract_round_trips_through_its_document():
    contract = aggregate_contract(k=12)
    assert from_document(to_document(contract)) == contract


def box():
    return SecretBox(os.urandom(32))


def test_a_sealed_secret_opens_only_for_its_partner_and_field_under_the_same_master_key():
    secrets = box()
    sealed = secrets.seal("ads", "signing_secret", "partner-signing-secret")
    assert "partner-signing-secret" not in orjson.dumps(sealed).decode()
    assert secrets.open("ads", "signing_secret", sealed) == "partner-signing-secret"
    for owner, name in (("other", "signing_secret"), ("ads", "pseudonym_key")):
        with pytest.raises(SecretUnreadable):
            secrets.open(owner, name, sealed)
    with pytest.raises(SecretUnreadable):
        box().open("ads", "signing_secret", sealed)
    with pytest.raises(SecretUnreadable):
        secrets.open("ads", "signing_secret", "partner-signing-secret")


def test_the_secret_box_reads_the_master_key_settings():
    raw = os.urandom(32)
    sealed = SecretBox(raw).seal("ads", "pseudonym_key", "k" * 20)
    settings = Settings(master_key=base64.b64encode(raw).decode())
    assert SecretBox.from_settings(settings).open("ads", "pseudonym_key", sealed) == "k" * 20


def test_during_a_rotation_a_secret_sealed_under_the_previous_master_key_still_opens():
    old_key, new_key = os.urandom(32), os.urandom(32)
    sealed = SecretBox(old_key).seal("ads", "signing_secret", "partner-signing-secret")
    rotating = SecretBox.from_settings(Settings(
        master_key=base64.b64encode(new_key).decode(),
        master_key_previous=base64.b64encode(old_key).decode()))
    assert rotating.open("ads", "signing_secret", sealed) == "partner-signing-secret"

    resealed = rotating.resealed("ads", "signing_secret", sealed)
    assert SecretBox(new_key).open("ads", "signing_secret", resealed) == (
        "partner-signing-secret")
    assert rotating.resealed("ads", "signing_secret", resealed) is None  # already current
    with pytest.raises(SecretUnreadable):  # the previous key alone no longer opens it
        SecretBox(old_key).open("ads", "signing_secret", resealed)
    with pytest.raises(SecretUnreadable):
        SecretBox(new_key).open("ads", "signing_secret", sealed)


def test_endpoint_credentials_are_never_shown_back():
    contract = parse_contract("ads", {
        "name": "Ads", "required_purposes": ["marketing"], "destination": DESTINATION,
        "fields": [{"name": "em", "source": "identifiers.email"}]})
    view = public_view(contract)
    assert "partner-token" not in orjson.dumps(view).decode()
    assert view["destination"]["authorization_set"] is True


def test_a_subject_known_by_identifiers_is_found_in_the_partners_own_treatment():
    contract = parse_contract("ads", {
        "name": "Ads", "required_purposes": ["marketing"], "destination": DESTINATION,
        "pseudonym_key": "k" * 20,
        "fields": [{"name": "em", "source": "identifiers.email", "treatment": "sha256",
                    "platform": "meta", "platform_field": "em"},
                   {"name": "phone", "source": "identifiers.phone"},
                   {"name": "pid", "source": "profile_id", "treatment": "hmac"}]})
    treated = rendering.treated_identifiers(
        contract, [("email", "matti@example.com"), ("phone", "+358401234567"),
                   ("email", "not an email"), ("device", "d-1")])
    assert treated == {"em": [hashlib.sha256(b"matti@example.com").hexdigest()],
                       "phone": ["+358401234567"]}
