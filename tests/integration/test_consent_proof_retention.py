"""The consent_proof retention in the real store: a decision replaced by a later one on its
purpose longer ago than the retention goes, with its copy in its change and its place in the
subject's history; the decision in force stays however old, and so does what the same change
decided on other purposes."""

from __future__ import annotations

import base64
from datetime import UTC, datetime, timedelta

import pytest

from services.consent import ledger
from services.consent.catalogue import load_catalogue
from services.consent.consent_store import CHANGES, LEDGER, ConsentStore
from services.consent.decisions import DecisionRequest, decision_change
from services.consent.privacy_retention import PROOF, sweep
from services.consent.receipts import ReceiptSigner

SIGNER = ReceiptSigner.from_setting(base64.b64encode(bytes(range(32))).decode())
NOW = datetime(2026, 12, 1, tzinfo=UTC)
FIVE_YEARS = {PROOF: timedelta(days=1825)}


@pytest.fixture
def own_db(mongo_client, unique):
    name = f"muisti_consent_proof_{unique}"
    yield mongo_client[name]
    mongo_client.drop_database(name)


def decide(store: ConsentStore, profile_id: str, cause: str, at: datetime,
           purpose: str | None = None, state: str | None = None,
           recorded_at: datetime | None = None) -> list[str]:
    """Record a decision (an objection when no purpose is named) collected ``at`` and
    recorded then too, unless ``recorded_at`` says later; returns its entry ids."""
    subject = ledger.profile_subject(profile_id)
    request = DecisionRequest(subject=subject, channel="web", source="test", collected_at=at,
                              purpose=purpose, state=state)
    change = decision_change(load_catalogue(), request, cause_id=cause,
                             subject_state=store.state(subject.key), signer=SIGNER,
                             now=recorded_at or at, objection=purpose is None)
    store.finish(store.commit(change, announce_later=False))
    return [entry.id for entry in change.entries]


def proof_report(report: list[dict]) -> dict:
    return next(kind for kind in report if kind["kind"] == PROOF)


def test_a_decision_replaced_longer_ago_than_the_retention_goes_and_the_one_in_force_stays(
        own_db):
    store = ConsentStore(own_db)
    objection = decide(store, "p1", "objection", datetime(2019, 1, 1, tzinfo=UTC))
    [old_grant] = decide(store, "p1", "grant", datetime(2019, 6, 1, tzinfo=UTC),
                         "marketing_email", "granted")
    [withdrawal] = decide(store, "p1", "withdrawal", datetime(2025, 6, 1, tzinfo=UTC),
                          "marketing_email", "withdrawn")
    [email_objection] = [e for e in store.entries(objection) if e.purpose == "marketing_email"]
    [first] = decide(store, "p2", "first", datetime(2018, 1, 1, tzinfo=UTC),
                     "profiling", "granted")
    [second] = decide(store, "p2", "second", datetime(2019, 1, 1, tzinfo=UTC),
                      "profiling", "denied")

    dry = proof_report(sweep(own_db, FIVE_YEARS, NOW, apply=False))
    assert (dry["retention_days"], dry["expired"], dry["deleted"]) == (1825, 2, 0)
    assert own_db[LEDGER].count_documents({}) == len(objection) + 4

    done = proof_report(sweep(own_db, FIVE_YEARS, NOW, apply=True))
    assert (done["expired"], done["deleted"]) == (2, 2)
    # replaced in 2019: gone; replaced in 2025 (within five years): kept
    assert {e.id for e in store.entries([*objection, old_grant, withdrawal])} == {
        *objection, old_grant, withdrawal} - {email_objection.id}
    assert store.entries([first, second])[0].id == second
    # the objection's change keeps what it decided on the other purposes
    kept = own_db[CHANGES].find_one({"_id": "objection"})
    assert sorted(e["_id"] for e in kept["entries"]) == sorted(set(objection)
                                                               - {email_objection.id})
    assert own_db[CHANGES].find_one({"_id": "first"}) is None  # nothing of it is left
    p1, p2 = store.state("p1"), store.state("p2")
    assert email_objection.id not in p1.applied and p2.applied == [second]
    catalogue = load_catalogue()
    assert not ledger.check(catalogue, p1, "marketing_email").allowed  # still withdrawn
    assert not ledger.check(catalogue, p1, "marketing_sms").allowed  # still objected to
    assert not ledger.check(catalogue, p2, "profiling").allowed

    assert proof_report(sweep(own_db, FIVE_YEARS, NOW, apply=True))["expired"] == 0
    unlimited = proof_report(sweep(own_db, {}, NOW, apply=True))
    assert (unlimited["retention_days"], unlimited["expired"]) == (None, 0)


def test_a_decision_replaced_by_one_collected_long_ago_but_recorded_lately_keeps_its_proof(
        own_db):
    store = ConsentStore(own_db)
    [grant] = decide(store, "p1", "grant", datetime(2018, 1, 1, tzinfo=UTC),
                     "marketing_email", "granted")
    # a paper withdrawal signed in 2019, entered only last month: the grant was in force, and
    # its proof the basis of what was done, until then
    decide(store, "p1", "paper", datetime(2019, 1, 1, tzinfo=UTC), "marketing_email",
           "withdrawn", recorded_at=NOW - timedelta(days=30))

    report = proof_report(sweep(own_db, FIVE_YEARS, NOW, apply=True))

    assert report["expired"] == 0 and store.entries([grant])


def test_a_sweep_cut_short_after_deleting_entries_drops_them_from_the_history_next_time(own_db):
    store = ConsentStore(own_db)
    [first] = decide(store, "p1", "first", datetime(2018, 1, 1, tzinfo=UTC), "profiling",
                     "granted")
    [second] = decide(store, "p1", "second", datetime(2019, 1, 1, tzinfo=UTC), "profiling",
                      "denied")
    own_db[LEDGER].delete_one({"_id": first})  # deleted, then the sweep was killed

    sweep(own_db, FIVE_YEARS, NOW, apply=True)

    assert store.state("p1").applied == [second]
