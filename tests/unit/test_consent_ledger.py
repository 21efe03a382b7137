"""The consent ledger's rules without I/O: catalogue validation, projection, checks,
objections, merges and links (stricter wins), splits, TC-string decisions, receipts and the
special-category rule."""

from __future__ import annotations

import base64
from datetime import UTC, datetime, timedelta

import pytest

from services.consent import ledger
from services.consent.catalogue import CatalogueError, load_catalogue, parse_catalogue
from services.consent.decisions import (
    DecisionRefused,
    DecisionRequest,
    decision_change,
    identifier_check,
    special_category_answers,
)
from services.consent.receipts import ReceiptSigner, verify

CATALOGUE = load_catalogue()
SIGNER = ReceiptSigner.from_setting(base64.b64encode(bytes(range(32))).decode())
T0 = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)


def decide(subject, purpose, state, at, cause, *, objection=False, proof=None, linked=None):
    request = DecisionRequest(subject=subject, channel="web", source="test", collected_at=at,
                              purpose=purpose, state=state, proof=proof or {})
    current = ledger.SubjectState(subject.key, linked=linked or [])
    return decision_change(CATALOGUE, request, cause_id=cause, subject_state=current,
                           signer=SIGNER, now=at, objection=objection).entries


def state_of(key, *entry_lists):
    state = ledger.SubjectState(key)
    for entries in entry_lists:
        state.apply(entries)
    return state


def test_packaged_catalogue_has_every_purpose_text_and_special_category():
    for name in ("marketing_email", "marketing_sms", "marketing_phone", "marketing_post",
                 "profiling", "personalisation", "analytics", "partner_sharing"):
        purpose = CATALOGUE.purpose(name)
        assert set(purpose.texts) == {"fi", "sv", "en"}
    assert set(CATALOGUE.special_categories) == {
        "health", "religion", "ethnic_origin", "political_opinion", "trade_union",
        "sexual_orientation", "biometric"}
    assert CATALOGUE.category_of_trait("Allergies").name == "health"
    assert CATALOGUE.current_notice in CATALOGUE.notices


def test_a_consent_purpose_defaulting_to_granted_is_refused_with_every_problem():
    with pytest.raises(CatalogueError) as error:
        parse_catalogue({"version": "1", "current_notice": "x", "notices": [{"id": "y"}],
                         "purposes": {"p": {"legal_basis": "consent", "default": "granted",
                                            "direct_marketing": False, "texts": {}}}})
    problems = " ".join(error.value.problems)
    assert "current_notice" in problems and "default to denied" in problems
    assert "texts.sv.title" in problems


def test_without_a_decision_the_legal_basis_decides():
    consent = ledger.check(CATALOGUE, None, "marketing_email")
    interest = ledger.check(CATALOGUE, None, "marketing_post")
    assert (consent.allowed, consent.state, consent.reason) == (False, "default",
                                                                ledger.DEFAULT)
    assert interest.allowed is True
    assert ledger.check(CATALOGUE, None, "teleportation").reason == ledger.UNKNOWN_PURPOSE


def test_the_latest_collected_decision_wins_whatever_the_order_applied():
    subject = ledger.profile_subject("p1")
    granted = decide(subject, "marketing_email", "granted", T0, "c1")
    withdrawn = decide(subject, "marketing_email", "withdrawn", T0 + timedelta(days=1), "c2")
    for order in ([granted, withdrawn], [withdrawn, granted], [withdrawn, granted, withdrawn]):
        answer = ledger.check(CATALOGUE, state_of("p1", *order), "marketing_email")
        assert (answer.allowed, answer.state, answer.reason) == (False, "withdrawn",
                                                                 ledger.EXPLICIT)


def test_an_objection_denies_every_direct_marketing_purpose_and_nothing_else():
    subject = ledger.identifier_subject("phone", "040 123 4567")
    assert subject.key == "id:phone:+358401234567"
    state = state_of(subject.key, decide(subject, None, None, T0, "o1", objection=True))
    for purpose in ("marketing_email", "marketing_sms", "marketing_phone", "marketing_post"):
        answer = ledger.check(CATALOGUE, state, purpose)
        assert (answer.allowed, answer.state, answer.reason) == (False, "denied", "objection")
    assert ledger.check(CATALOGUE, state, "analytics").reason == ledger.DEFAULT


def test_a_bare_identifiers_decision_also_applies_to_its_linked_profiles():
    subject = ledger.identifier_subject("phone", "+358401234567")
    entries = decide(subject, None, None, T0, "o2", objection=True, linked=["p9"])
    assert {e.subject.key for e in entries} == {subject.key, "p9"}
    assert ledger.check(CATALOGUE, state_of("p9", entries), "marketing_phone").reason == (
        "objection")


def test_on_a_merge_denied_beats_granted_until_the_customer_decides_again():
    survivor, merged = ledger.profile_subject("s"), ledger.profile_subject("m")
    s_state = state_of("s", decide(survivor, "marketing_email", "granted", T0, "a"),
                       decide(survivor, "analytics", "denied", T0, "b"))
    m_state = state_of("m", decide(merged, "marketing_email", "denied", T0 - timedelta(1), "c"),
                       decide(merged, "analytics", "granted", T0 + timedelta(1), "d"),
                       decide(merged, "profiling", "granted", T0, "e"))
    merge_at = T0 + timedelta(days=2)
    entries = ledger.stricter_entries(survivor, s_state, m_state, kind="merge",
                                      reason=ledger.MERGE, cause_id="merge-1", at=merge_at)
    s_state.apply(entries)
    email = ledger.check(CATALOGUE, s_state, "marketing_email")
    assert (email.allowed, email.reason) == (False, ledger.MERGE)
    assert ledger.check(CATALOGUE, s_state, "analytics").allowed is False
    assert ledger.check(CATALOGUE, s_state, "profiling").allowed is True
    again = ledger.stricter_entries(survivor, s_state, m_state, kind="merge",
                                    reason=ledger.MERGE, cause_id="merge-1", at=merge_at)
    assert again == []
    s_state.apply(decide(survivor, "marketing_email", "granted", merge_at + timedelta(1), "f"))
    assert ledger.check(CATALOGUE, s_state, "marketing_email").allowed is True


def test_a_split_profile_inherits_refusals_but_not_grants():
    original = state_of("p", decide(ledger.profile_subject("p"), "analytics", "granted", T0,
                                    "a"),
                        decide(ledger.profile_subject("p"), None, None, T0, "o", objection=True))
    entries = ledger.split_entries(ledger.profile_subject("q"), original, cause_id="split-1",
                                   at=T0)
    new = state_of("q", entries)
    assert ledger.check(CATALOGUE, new, "analytics").state == "default"
    assert ledger.check(CATALOGUE, new, "marketing_sms").reason == "objection"


def test_a_tc_string_decides_the_tcf_mapped_purposes():
    tc = ("COrEAV4OrXx94ACABBENAHCIAD-AAAAAAACAAxAAAAgAIAwgAgAAAAEAgQAAAAAEAYQAQAAAACAAAABAAA")
    entries = decide(ledger.profile_subject("p"), None, None, T0, "t",
                     proof={"tc_string": tc, "ip": "192.0.2.1"})
    decided = {e.purpose: e.state for e in entries}
    # the string consents to TCF purposes 3-9, not 1: nothing mapped is granted
    assert decided == {"analytics": "denied", "personalisation": "denied",
                       "profiling": "denied"}
    assert entries[0].proof["tcf"]["purpose_consents"] == [3, 4, 5, 6, 7, 8, 9]
    assert CATALOGUE.purposes_from_tcf({1, 8, 9})["analytics"] == "granted"


def test_a_tc_string_posted_again_later_does_not_outrank_a_decision_made_since_it_was_set():
    # the string was last updated 2019-12-10 18:53 and denies profiling
    tc = ("COrEAV4OrXx94ACABBENAHCIAD-AAAAAAACAAxAAAAgAIAwgAgAAAAEAgQAAAAAEAYQAQAAAACAAAABAAA")
    subject = ledger.profile_subject("p")
    later = decide(subject, "profiling", "granted", datetime(2024, 5, 1, tzinfo=UTC), "pc")
    earlier = decide(subject, "profiling", "granted", datetime(2019, 6, 1, tzinfo=UTC), "old")
    cookie = decide(subject, None, None, T0, "visit", proof={"tc_string": tc})
    assert {e.collected_at for e in cookie} == {datetime(2019, 12, 10, 18, 53, tzinfo=UTC)}
    assert ledger.check(CATALOGUE, state_of("p", later, cookie), "profiling").allowed
    assert not ledger.check(CATALOGUE, state_of("p", earlier, cookie), "profiling").allowed


def test_an_invalid_tc_string_or_unknown_purpose_is_refused():
    with pytest.raises(DecisionRefused, match="truncated"):
        decide(ledger.profile_subject("p"), None, None, T0, "x",
               proof={"tc_string": "COtybn4PA_zT4K"})
    with pytest.raises(DecisionRefused, match="unknown purpose"):
        decide(ledger.profile_subject("p"), "astrology", "granted", T0, "y")


def test_receipts_verify_with_the_public_key_and_not_once_altered():
    entry = decide(ledger.profile_subject("p"), "marketing_sms", "granted", T0, "r",
                   proof={"ip": "192.0.2.7"})[0]
    receipt = entry.receipt
    assert receipt["receipt_id"] == entry.id and receipt["algorithm"] == "Ed25519"
    assert verify(receipt, SIGNER.public_key_bytes)
    assert not verify({**receipt, "state": "denied"}, SIGNER.public_key_bytes)
    other = ReceiptSigner.from_setting(base64.b64encode(bytes(32)).decode())
    assert not verify(receipt, other.public_key_bytes)


def test_the_same_decision_retried_makes_the_same_entry_ids():
    subject = ledger.profile_subject("p")
    first = decide(subject, "marketing_sms", "granted", T0, "same")
    second = decide(subject, "marketing_sms", "granted", T0, "same")
    assert [e.id for e in first] == [e.id for e in second]


def test_special_category_traits_need_explicit_consent_for_their_category():
    subject = ledger.profile_subject("p")
    state = state_of("p", decide(subject, "special_health", "granted", T0, "h"))
    answers = {a.trait: a for a in special_category_answers(
        CATALOGUE, state, ["allergies", "religion", "shoe_size"])}
    assert answers["allergies"].allowed and answers["allergies"].category == "health"
    assert not answers["religion"].allowed
    assert answers["religion"].reason == "no_explicit_consent"
    assert answers["shoe_size"].allowed and answers["shoe_size"].category is None


PHONE = ledger.identifier_subject("phone", "+358401234567")


def test_an_identifier_check_takes_the_decisions_of_its_profile():
    profile = state_of("p", decide(ledger.profile_subject("p"), "marketing_sms", "granted", T0,
                                   "g"))
    answer = identifier_check(CATALOGUE, None, profile, "marketing_sms")
    assert (answer.allowed, answer.state, answer.reason) == (True, "granted",
                                                             "explicit_decision")
    assert identifier_check(CATALOGUE, None, None, "marketing_sms").reason == (
        "default_by_legal_basis")


@pytest.mark.parametrize("number_at, profile_at, allowed", [
    (T0, T0 + timedelta(days=1), True),  # the holder decided again on their profile
    (T0 + timedelta(days=1), T0, False),  # the number objected later
])
def test_between_the_identifier_and_its_profile_the_latest_decision_wins(
        number_at, profile_at, allowed):
    number = state_of(PHONE.key, decide(PHONE, None, None, number_at, "o", objection=True))
    profile = state_of("p", decide(ledger.profile_subject("p"), "marketing_phone", "granted",
                                   profile_at, "g"))
    assert identifier_check(CATALOGUE, number, profile, "marketing_phone").allowed is allowed


def test_an_objection_outliving_its_owners_erasure_denies_direct_marketing_until_a_new_grant():
    erased_at = T0 + timedelta(days=1)
    denied = identifier_check(CATALOGUE, None, None, "marketing_phone",
                              do_not_contact_since=erased_at)
    assert (denied.allowed, denied.reason, denied.decided_at) == (False, "objection", erased_at)
    assert identifier_check(CATALOGUE, None, None, "analytics",  # not direct marketing
                            do_not_contact_since=erased_at).reason == "default_by_legal_basis"
    returned = state_of("p", decide(ledger.profile_subject("p"), "marketing_phone", "granted",
                                    erased_at + timedelta(days=30), "g"))
    assert identifier_check(CATALOGUE, None, returned, "marketing_phone",
                            do_not_contact_since=erased_at).allowed


def test_an_identifier_whose_profile_cannot_be_resolved_is_never_allowed():
    assert identifier_check(CATALOGUE, None, None, "marketing_phone").allowed  # by default
    answer = identifier_check(CATALOGUE, None, None, "marketing_phone", profile_known=False)
    assert (answer.allowed, answer.reason) == (False, "profile_unresolved")
    number = state_of(PHONE.key, decide(PHONE, "marketing_sms", "granted", T0, "n"))
    unresolved = identifier_check(CATALOGUE, number, None, "marketing_sms", profile_known=False)
    assert (unresolved.allowed, unresolved.reason) == (False, "profile_unresolved")
