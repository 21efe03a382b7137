"""Kafka adapter of the consent ledger: consent follows identity.

Consumes cdp.identity.merges and cdp.events.resolved (group ``consent-identity``) and emits
cdp.consent.changes:

* **Profiles Merged** — the merged profile is frozen first (its later decisions are forwarded
  to the survivor), then the survivor takes, per purpose, the stricter of both states until
  the customer decides again; the survivor's resulting state for every purpose it holds is
  announced.
* **Profile Split** — the new profile inherits the original's refusals, never its grants (they
  may have been the other person's); the original keeps its state.
* **Identifier Released** — nothing changes: the profile keeps its consents, and a decision
  recorded on the bare identifier stays with the identifier (a recycled do-not-call number
  stays do-not-call until its new holder decides otherwise).
* **resolved events** — how a bare identifier (a do-not-call phone number) meets its profile.
  One query per poll asks which of the events' identifiers are bare-identifier subjects;
  almost always none is and nothing else happens, which keeps this consumer cheap next to
  the identity and profile workers on the same topic. When it does, the identifier is
  linked to the profile (services.consent.linking; the API links at once when the graph
  already knows the identifier's profile).

Also drains the outbox of API decisions whose announcement did not reach Kafka.
"""

from __future__ import annotations

from pymongo.database import Database

from services.common import topics
from services.common.bus import ConsumerLoop, InvalidMessage, Outgoing, Producer
from services.common.config import Settings
from services.common.envelope import Envelope, derived_message_id
from services.common.store import ProcessedLedger
from services.consent import ledger
from services.consent.consent_store import (
    Change,
    ConsentStore,
    UnannouncedChanges,
    change_messages,
    consent_changed,
    set_merged_into,
)
from services.consent.decisions import signed
from services.consent.linking import link_identifier
from services.consent.privacy_handlers import ConsentHolding
from services.consent.receipts import ReceiptSigner

SERVICE = "consent"
GROUP = "consent-identity"


def consents_consumers(settings: Settings, producer: Producer,
                       db: Database) -> list[ConsumerLoop]:
    store = ConsentStore(db)
    signer = ReceiptSigner.from_setting(settings.consent_receipt_key)
    ledger_ = ProcessedLedger(db, GROUP)
    ledger_.prepare()
    handler, batch_handler = make_handlers(store, signer)
    return [ConsumerLoop(settings=settings, service=SERVICE, group=GROUP,
                         topics=[topics.IDENTITY_MERGES, topics.EVENTS_RESOLVED],
                         handler=handler, batch_handler=batch_handler, producer=producer,
                         ledger=ledger_, relay=UnannouncedChanges(store))]


def make_handlers(store: ConsentStore, signer: ReceiptSigner):
    """The per-message handler and the batch handler, which asks the store once per poll
    which of the events' identifiers have a state of their own (almost always none)."""

    def handle_one(envelope: Envelope, with_state: set[str] | None) -> list[Outgoing]:
        if envelope.channel == "system" and envelope.type == "Profiles Merged":
            return _merge(store, signer, envelope)
        if envelope.channel == "system" and envelope.type == "Profile Split":
            return _split(store, signer, envelope)
        if envelope.channel == "system" and envelope.type == "Identifier Released":
            return []
        if envelope.profile_id is None:
            raise InvalidMessage("a resolved event needs a profile_id")
        messages = []
        for key in _identifier_keys(envelope):
            if with_state is None or key in with_state:
                messages += _link(store, signer, key, envelope.profile_id, envelope)
        return messages

    def handle(envelope: Envelope) -> list[Outgoing]:
        return handle_one(envelope, None)

    def handle_batch(envelopes: list[Envelope]) -> list[Outgoing]:
        # merges and splits in the batch change profiles' states, never an identifier's
        with_state = store.subjects_with_state(
            [key for envelope in envelopes for key in _identifier_keys(envelope)])
        return [message for envelope in envelopes
                for message in handle_one(envelope, with_state)]

    return handle, handle_batch


def _identifier_keys(envelope: Envelope) -> list[str]:
    return [f"{ledger.IDENTIFIER_PREFIX}{type_}:{value}"
            for type_, value in sorted(envelope.identifiers.items())]


def _merge(store: ConsentStore, signer: ReceiptSigner, envelope: Envelope) -> list[Outgoing]:
    survivor, merged = _payload(envelope, "survivor"), _payload(envelope, "merged")
    cause = derived_message_id(envelope.message_id, "consent-merge")
    change = store.change(cause)
    if change is None:
        # freeze first: a decision for the merged profile from now on goes to the survivor,
        # so the state read below is final
        store.update(merged, lambda s: set_merged_into(s, survivor))
        survivor, survivor_state = store.current_state(survivor)
        merged_state = store.state(merged)
        if survivor == merged or merged_state is None:
            return []
        entries = ledger.stricter_entries(
            ledger.profile_subject(survivor), survivor_state or ledger.SubjectState(survivor),
            merged_state, kind="merge", reason=ledger.MERGE, cause_id=cause,
            at=envelope.occurred_at)
        change = store.commit(Change(cause, signed(entries, signer), at=envelope.occurred_at,
                                     merge={"survivor": survivor, "merged": merged,
                                            "linked": merged_state.linked}),
                              announce_later=False)
    done = store.finish(change)
    survivor_state = next(s for s in reversed(done.states)
                          if s.key == change.merge["survivor"])
    subject = ledger.profile_subject(survivor_state.key)
    return [consent_changed(subject, purpose, record,
                            derived_message_id(cause, f"consent-merge:{purpose}"))
            for purpose, record in sorted(survivor_state.purposes.items())]


def _split(store: ConsentStore, signer: ReceiptSigner, envelope: Envelope) -> list[Outgoing]:
    new_profile = envelope.payload.get("new_profile_id")
    if not new_profile:
        return []
    cause = derived_message_id(envelope.message_id, "consent-split")
    change = store.change(cause)
    if change is None:
        _, original = store.current_state(_payload(envelope, "profile_id"))
        if original is None:
            return []
        entries = ledger.split_entries(ledger.profile_subject(new_profile), original,
                                       cause_id=cause, at=envelope.occurred_at)
        change = store.commit(Change(cause, signed(entries, signer), at=envelope.occurred_at),
                              announce_later=False)
    return change_messages(store.finish(change))


def _link(store: ConsentStore, signer: ReceiptSigner, identifier_key: str, profile_id: str,
          envelope: Envelope) -> list[Outgoing]:
    # the linking event itself may come again after a crash: it finishes and announces again
    _, messages = link_identifier(store, signer, identifier_key, profile_id,
                                  at=envelope.received_at, by=envelope.message_id)
    return messages


def _payload(envelope: Envelope, name: str) -> str:
    value = envelope.payload.get(name)
    if not isinstance(value, str) or not value:
        raise InvalidMessage(f"{envelope.type}: payload.{name} must be a profile id")
    return value


def _keys(profile_ids: list[str], identifiers) -> list[str]:
    """The consent subject keys of the profiles and identifiers."""
    return [*profile_ids, *(f"{ledger.IDENTIFIER_PREFIX}{i.type}:{i.value}"
                            for i in identifiers)]


class LedgerHolding(ConsentHolding):
    """The consent ledger's part of data-subject requests. Erasure deletes the subject's
    state, ledger entries and changes (the proof in them is sealed and shredded as well, by
    the privacy handler destroying the subject's data keys); an objection to direct marketing
    survives as the privacy handler's keyed do-not-contact digest."""

    def __init__(self, store: ConsentStore):
        self.store = store

    def _states(self, profile_ids: list[str], identifiers) -> list[ledger.SubjectState]:
        return [state for state in map(self.store.state, _keys(profile_ids, identifiers))
                if state is not None]

    def objected(self, profile_ids, identifiers) -> bool:
        return any(record.reason == ledger.OBJECTION and not record.allowed
                   for state in self._states(profile_ids, identifiers)
                   for record in state.purposes.values())

    def erase(self, profile_ids, identifiers) -> dict[str, int]:
        counts = {"consent_states_deleted": 0, "consent_entries_deleted": 0}
        unannounced = self.store.unannounced()
        for key in _keys(profile_ids, identifiers):
            # a subject without a state may still have its first change committed and not
            # finished, in the outbox: the store's erase finds it there
            state = self.store.state(key)
            entries = self.store.entries(state.applied) if state else []
            counts["consent_entries_deleted"] += self.store.erase(
                state or ledger.SubjectState(key), [e.id for e in entries],
                sorted({e.cause_id for e in entries}), unannounced)
            counts["consent_states_deleted"] += state is not None
        return counts

    def collect(self, profile_ids, identifiers) -> dict:
        return {"consents": [
            {"subject": state.key,
             "current": {p: {**vars(r), "decided_at": r.decided_at.isoformat()}
                         for p, r in state.purposes.items()},
             "history": [{"receipt_id": e.id, "purpose": e.purpose, "state": e.state,
                          "kind": e.kind, "reason": e.reason, "channel": e.channel,
                          "source": e.source, "collected_at": e.collected_at.isoformat(),
                          "notice_version": e.notice_version}
                         for e in self.store.entries(state.applied)]}
            for state in self._states(profile_ids, identifiers)]}
