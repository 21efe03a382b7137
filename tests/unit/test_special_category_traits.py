"""Special categories (GDPR art. 9) enforced by the profile projection: the shared
classification, withholding a classified trait without explicit consent in force when the
event happened, and the catalogue's agreement with the shared classification."""

from datetime import UTC, datetime, timedelta

import pytest

from services.common.special_categories import (
    ClassificationError,
    load_classification,
    parse_classification,
)
from services.consent.catalogue import CatalogueError, load_catalogue, parse_catalogue
from services.profile import projection, special_traits

CLASSIFICATION = load_classification()
GRANTED_AT = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)


def identify(message_id, traits, at):
    return {"message_id": message_id, "profile_id": "p-1", "type": "Identify",
            "channel": "web", "source": "web", "occurred_at": at, "identifiers": {},
            "payload": {"traits": traits}}


def granted(purpose="special_health", at=GRANTED_AT, allowed=True):
    return {purpose: {"allowed": allowed, "state": "granted" if allowed else "withdrawn",
                      "collected_at": at, "receipt_id": "r-1"}}


def test_the_shared_classification_covers_every_special_category_case_insensitively():
    assert set(CLASSIFICATION.categories) == {
        "health", "religion", "ethnic_origin", "political_opinion", "trade_union",
        "sexual_orientation", "biometric"}
    assert CLASSIFICATION.category_of("Allergies").purpose == "special_health"
    assert CLASSIFICATION.category_of("first_name") is None


@pytest.mark.parametrize("data, message", [
    ({"astrology": {"purpose": "p", "traits": ["sign"]}}, "not one of"),
    ({"health": {"purpose": "special_health", "traits": []}}, "non-empty list"),
    ({"health": {"traits": ["allergies"]}}, "purpose must name"),
    ({"health": {"purpose": "a", "traits": ["x"]}, "religion": {"purpose": "b", "traits": ["X"]}},
     "is in both"),
])
def test_a_bad_classification_is_refused_with_the_reason(data, message):
    with pytest.raises(ClassificationError, match=message):
        parse_classification(data)


def test_the_consent_catalogue_takes_its_special_categories_from_the_shared_file():
    catalogue = load_catalogue()
    assert catalogue.category_of_trait("voiceprint").purpose == "special_biometric"
    assert catalogue.special_categories == dict(CLASSIFICATION.categories)


def test_a_catalogue_defining_its_own_special_categories_or_missing_their_purposes_is_refused():
    with pytest.raises(CatalogueError) as error:
        parse_catalogue({"version": "1", "current_notice": "n", "notices": [{"id": "n"}],
                         "special_categories": {},
                         "purposes": {"p": {"legal_basis": "contract", "default": "granted",
                                            "direct_marketing": False, "texts": {
                                                lang: {"title": "t", "used_for": "u",
                                                       "customer_gets": "c"}
                                                for lang in ("fi", "sv", "en")}}}})
    problems = " ".join(error.value.problems)
    assert "services/common/special_categories.toml" in problems
    assert "special category health: purpose 'special_health'" in problems


def test_a_special_trait_without_consent_is_withheld_and_the_rest_kept():
    event = identify("m-1", {"first_name": "Aino", "Allergies": "peanuts"}, GRANTED_AT)
    candidates = special_traits.classified(event, CLASSIFICATION)
    kept, refused = special_traits.withhold(event, candidates, {}, GRANTED_AT)
    assert [(r.trait, r.category, r.purpose) for r in refused] == [
        ("Allergies", "health", "special_health")]
    assert kept["payload"]["traits"] == {"first_name": "Aino"}
    assert event["payload"]["traits"]["Allergies"] == "peanuts"  # the input is not changed
    profile = projection.apply_event(None, kept, GRANTED_AT)
    assert "allergies" not in profile["traits"] and "Allergies" not in profile["traits"]


@pytest.mark.parametrize("states, at, kept", [
    (granted(), GRANTED_AT + timedelta(seconds=1), True),
    (granted(), GRANTED_AT, True),
    (granted(), GRANTED_AT - timedelta(seconds=1), False),  # the grant does not reach back
    (granted(allowed=False), GRANTED_AT + timedelta(days=1), False),
    (granted(purpose="special_religion"), GRANTED_AT + timedelta(days=1), False),
])
def test_explicit_consent_keeps_special_traits_only_for_events_after_it(states, at, kept):
    event = identify("m-2", {"allergies": "peanuts"}, at)
    result, refused = special_traits.withhold(
        event, special_traits.classified(event, CLASSIFICATION), states, at)
    assert ("allergies" in result["payload"]["traits"]) is kept
    assert bool(refused) is not kept


def test_events_without_special_traits_need_no_consent_lookup():
    assert special_traits.classified(identify("m-3", {"first_name": "Aino"}, GRANTED_AT),
                                     CLASSIFICATION) == []
    assert special_traits.classified({"payload": {}}, CLASSIFICATION) == []


def test_refusals_are_noted_by_name_never_by_value_and_bounded():
    profile = projection.new_profile("p-1")
    refusal = special_traits.Refusal("allergies", "health", "special_health")
    for n in range(special_traits.REFUSALS_KEPT + 5):
        special_traits.note_refusals(profile, [refusal], f"m-{n}", GRANTED_AT)
    notes = profile["special_category_refusals"]
    assert len(notes) == special_traits.REFUSALS_KEPT
    assert notes[-1] == {"trait": "allergies", "category": "health",
                         "purpose": "special_health", "message_id": "m-54", "at": GRANTED_AT}
    assert projection.view(profile, unmasked=False)["special_category_refusals"][-1][
        "message_id"] == "m-54"
