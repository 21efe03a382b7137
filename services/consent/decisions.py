"""Turning a recorded decision, an objection or an identity change into a consent change
(its ledger entries, signed), and the special-category rule. Plain Python: the API and the
worker call these with states they read from the store.

TC strings: a decision may carry the web CMP's TC string as proof. It is decoded (an invalid
string is refused) and its summary kept with the entry. When the decision names no purpose,
the TC string decides the catalogue purposes that map TCF purposes (``tcf_purposes`` in
purposes.toml): granted when the string consents to every mapped TCF purpose, else denied.
Default mapping: analytics ← TCF 1, 8, 9; personalisation ← 1, 5, 6; profiling ← 1, 3, 4;
direct marketing and partner sharing are outside TCF and never decided by a TC string.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import datetime

from services.consent import ledger, tcf
from services.consent.catalogue import Catalogue
from services.consent.consent_store import Change
from services.consent.ledger import Entry, Subject, SubjectState
from services.consent.receipts import ReceiptSigner

TCF_REASON = "tcf_string"


class DecisionRefused(ValueError):
    """The decision cannot be recorded; ``field`` names the offending input."""

    def __init__(self, field_name: str, reason: str):
        super().__init__(reason)
        self.field = field_name
        self.reason = reason


@dataclass(frozen=True)
class DecisionRequest:
    subject: Subject
    channel: str
    source: str
    collected_at: datetime
    purpose: str | None = None
    state: str | None = None
    notice_version: str | None = None
    proof: dict = field(default_factory=dict)
    actor: str | None = None


def decisions_for(catalogue: Catalogue, request: DecisionRequest) -> tuple[dict[str, str], str,
                                                                          dict]:
    """The purposes a decision decides (purpose → state), its reason and its proof (with the
    TC string's summary). Raises DecisionRefused."""
    proof = {k: v for k, v in request.proof.items() if v not in (None, "")}
    decoded = None
    if proof.get("tc_string"):
        try:
            decoded = tcf.decode(proof["tc_string"])
        except tcf.InvalidTCString as exc:
            raise DecisionRefused("proof.tc_string", exc.reason) from None
        proof["tcf"] = tcf_summary(decoded)
    if request.purpose is not None:
        if catalogue.purpose(request.purpose) is None:
            raise DecisionRefused("purpose", f"unknown purpose {request.purpose!r}; known: "
                                  f"{', '.join(catalogue.purposes)}")
        if request.state is None:
            raise DecisionRefused("state", "a decision on a purpose needs its state")
        return {request.purpose: request.state}, ledger.EXPLICIT, proof
    if decoded is None:
        raise DecisionRefused("purpose", "name a purpose, or give proof.tc_string to decide "
                              "the purposes mapped from TCF")
    return catalogue.purposes_from_tcf(set(decoded.purpose_consents)), TCF_REASON, proof


def tcf_summary(decoded: tcf.TCString) -> dict:
    data = decoded.to_dict()
    keep = ("cmp_id", "cmp_version", "created", "last_updated", "tcf_policy_version",
            "vendor_list_version", "consent_language", "publisher_country_code",
            "purpose_consents", "purpose_legitimate_interests", "special_feature_optins",
            "purpose_one_treatment")
    return {key: data[key] for key in keep}


def notice_version(catalogue: Catalogue, requested: str | None) -> str:
    if requested is None:
        return catalogue.current_notice
    if requested not in catalogue.notices:
        raise DecisionRefused("notice_version", f"unknown privacy-notice version {requested!r}; "
                              f"known: {', '.join(catalogue.notices)}")
    return requested


def decision_change(catalogue: Catalogue, request: DecisionRequest, *, cause_id: str,
                    subject_state: SubjectState | None, signer: ReceiptSigner, now: datetime,
                    objection: bool = False) -> Change:
    """The change recording ``request`` (or, with ``objection``, an objection to direct
    marketing), with signed receipts. A bare identifier's decision also applies to the
    profiles it is known to belong to. Raises DecisionRefused."""
    version = notice_version(catalogue, request.notice_version)
    if objection:
        decisions, reason = ledger.objection_decisions(catalogue), ledger.OBJECTION
        proof = {k: v for k, v in request.proof.items() if v not in (None, "")}
    else:
        decisions, reason, proof = decisions_for(catalogue, request)
    collected_at = request.collected_at
    if reason == TCF_REASON:
        # the string records a choice made when the CMP last updated it, and the collector
        # forwards the same cookie on every visit: posted again later, it must not outrank
        # a decision made in between (a day-rounded last_updated loses a same-day tie)
        collected_at = min(collected_at, datetime.fromisoformat(proof["tcf"]["last_updated"]))
    entries = ledger.decision_entries(
        request.subject, decisions, kind="objection" if objection else "decision",
        reason=reason, channel=request.channel, source=request.source,
        collected_at=collected_at, recorded_at=now, cause_id=cause_id,
        notice_version=version, proof=proof, actor=request.actor)
    if request.subject.is_identifier and subject_state is not None:
        entries += [ledger.propagated(entry, profile)
                    for profile in subject_state.linked for entry in list(entries)]
    return Change(id=cause_id, entries=signed(entries, signer), at=now)


def signed(entries: list[Entry], signer: ReceiptSigner) -> list[Entry]:
    return [replace(entry, receipt=signer.sign(entry)) for entry in entries]


def same_request(change: Change, subject: Subject, decisions: dict[str, str] | None) -> bool:
    """Whether a stored change records the same subject and decisions (an idempotent retry)
    rather than a different request reusing the decision id."""
    own = {e.purpose: e.state for e in change.entries if e.subject.key == subject.key}
    return bool(own) and (decisions is None or own == decisions)


@dataclass(frozen=True)
class TraitAnswer:
    trait: str
    allowed: bool
    category: str | None
    purpose: str | None
    reason: str


def special_category_answers(catalogue: Catalogue, state: SubjectState | None,
                             traits: list[str]) -> list[TraitAnswer]:
    """For each trait name: may the platform store it? A trait classified in a special
    category needs an explicit grant of that category's purpose; any other trait is not this
    rule's business (allowed, reason ``not_special_category``)."""
    answers = []
    for trait in traits:
        category = catalogue.category_of_trait(trait)
        if category is None:
            answers.append(TraitAnswer(trait, True, None, None, "not_special_category"))
            continue
        answer = ledger.check(catalogue, state, category.purpose)
        reason = "explicit_consent" if answer.allowed else (
            "no_explicit_consent" if answer.state == "default" else answer.reason)
        answers.append(TraitAnswer(trait, answer.allowed, category.name, category.purpose,
                                   reason))
    return answers


PROFILE_UNRESOLVED = "profile_unresolved"


def identifier_check(catalogue: Catalogue, identifier_state: SubjectState | None,
                     profile_state: SubjectState | None, purpose: str, *,
                     profile_known: bool = True,
                     do_not_contact_since: datetime | None = None) -> ledger.CheckAnswer:
    """A bare identifier's answer, considering the profile the identifier resolves to
    (``profile_state``): the latest decision of either wins — a customer's decision on their
    profile after a do-not-call entry for the number decides again, a later objection on the
    number denies again — and a purpose neither decided takes the catalogue default. With
    ``profile_known`` False (the identity graph could not be asked) the answer is never
    "allowed": the profile may have refused. ``do_not_contact_since``: when the identifier's
    owner, having objected to direct marketing, was erased; the objection outlives the
    erasure, as a denial of every direct-marketing purpose from then on."""
    spec = catalogue.purpose(purpose)
    if spec is None:
        return ledger.check(catalogue, None, purpose)
    records = [state.purposes[purpose] for state in (identifier_state, profile_state)
               if state is not None and purpose in state.purposes]
    if do_not_contact_since is not None and spec.direct_marketing:
        records.append(ledger.Record("denied", ledger.OBJECTION, do_not_contact_since,
                                     "do-not-contact", "erasure"))
    if records:
        latest = max(records, key=lambda record: record.order())
        answer = ledger.CheckAnswer(purpose, latest.allowed, latest.state, latest.reason,
                                    latest.decided_at)
    else:
        answer = ledger.check(catalogue, None, purpose)
    if answer.allowed and not profile_known:
        return replace(answer, allowed=False, reason=PROFILE_UNRESOLVED)
    return answer
