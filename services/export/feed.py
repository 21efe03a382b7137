"""What the export worker does with each Kafka message: keep its read model, propagate
deletions, answer data-subject requests.

* ``cdp.profile.changes`` (Profile Changed): ``payload.profile`` (the snapshot) replaces the
  read-model row and queues the change for each streaming partner whose segment holds the
  profile (services.export.streaming); ``merged_away`` removes it (the survivor carries the
  data on) and remembers the survivor, so that partners holding the merged profile hear of the
  survivor's withdrawals and erasure (and at once of a refusal the survivor already has);
  ``erased`` removes it with its consent states, discards the unsent batches in hand that hold
  it and queues a deletion notice to every partner holding the profile (or one merged into
  it), and a snapshot of it arriving later (a change made while it was being erased) is not
  stored.
* ``cdp.consent.changes`` (Consent Changed): the profile's state for the purpose; a purpose
  no longer allowed cancels the profile's changes waiting for a streaming partner that
  requires it and queues a deletion notice to each such partner holding the profile; a
  purpose newly allowed queues the profile for the streaming partners requiring it and marks
  it changed, so the next incremental run sends it.
  Bare-identifier subjects (no profile_id) concern no export and are skipped.
* ``cdp.privacy.requests``: erasure (as ``erased``, and for a subject known only by
  identifiers, every partner that received one of them in its own treatment), access (which
  partners received the subject's data and when), restriction (no exports while it holds;
  lifting it marks the profiles changed, for the next incremental run);
  each answered with one ``Privacy Request Acknowledged`` on ``cdp.privacy.acks``.

Every effect is idempotent: rows are replaced, notices have ids derived from the message.
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any

from services.common import privacy_requests, topics
from services.common.bus import InvalidMessage, Outgoing
from services.common.consent_changes import ConsentChange, parse_consent_change
from services.common.envelope import Envelope, derived_message_id, new_envelope
from services.export import rendering
from services.export.contracts import PartnerContract
from services.export.export_store import ConsentDecision, ExportStore, now, stream_id

log = logging.getLogger(__name__)

SERVICE = "export"


def handle_profile_change(store: ExportStore, envelope: Envelope) -> list[Outgoing]:
    return handle_profile_changes(store, [envelope])


def handle_profile_changes(store: ExportStore, envelopes: list[Envelope]) -> list[Outgoing]:
    """Profile Changed messages in order; the snapshots of consecutive ones are stored
    together (a few round trips for a poll's worth, not a few per message)."""
    storable: list[Envelope] = []
    for envelope in envelopes:
        if envelope.type != "Profile Changed":
            continue
        profile_id = envelope.profile_id
        if not profile_id:
            raise InvalidMessage("a Profile Changed message needs a profile_id")
        kind, snapshot = envelope.payload.get("kind"), envelope.payload.get("profile")
        if kind == "erased" or kind == "merged_away" or (
                isinstance(snapshot, dict) and snapshot.get("merged_into")):
            _store_snapshots(store, storable)
            storable = []
            if kind == "erased":
                erase(store, [profile_id], cause=envelope.message_id)
            else:
                _merge_away(store, envelope, profile_id,
                            envelope.payload.get("merged_into")
                            or (snapshot or {}).get("merged_into"))
        elif snapshot is not None:  # announced without its snapshot: nothing to project
            _check_snapshot(snapshot, profile_id)
            storable.append(envelope)
    _store_snapshots(store, storable)
    return []


def _merge_away(store: ExportStore, envelope: Envelope, merged_id: str,
                survivor_id: str | None) -> None:
    """The merged profile's row goes (the survivor carries its data on), but partners may
    hold it: they must hear of the survivor's withdrawals and erasure, so the merge is
    remembered, and a refusal of the survivor's already recorded (consent changes and merges
    travel on different topics) is notified now."""
    store.delete_profiles([merged_id])
    if not survivor_id:
        return
    store.note_merged(merged_id, survivor_id)
    for delivery in store.deliveries_of(store.with_merged([merged_id])):
        contract = store.partner(delivery["partner_id"], include_deleted=True)
        if contract is None or not delivery.get("awaiting_notice"):
            continue
        survivor = store.consents([survivor_id], contract.required_purposes).get(survivor_id, {})
        refused = [(purpose, state) for purpose, state in sorted(survivor.items())
                   if not state.allowed]
        if refused:
            purpose, state = refused[0]
            store.queue_notice(_notice_id(envelope, delivery), delivery,
                               f"consent:{purpose}:{state.state}")


def _notice_id(envelope: Envelope, delivery: dict[str, Any]) -> str:
    """A deletion notice's id, derived from the message that causes it."""
    return derived_message_id(envelope.message_id, f"export-deletion-{delivery['partner_id']}-"
                                                   f"{delivery['profile_id']}")


def _store_snapshots(store: ExportStore, envelopes: list[Envelope]) -> None:
    if not envelopes:
        return
    # a change made while its profile was being erased may come after the erasure
    erased = store.erased_among(e.profile_id for e in envelopes)
    envelopes = [e for e in envelopes if e.profile_id not in erased]
    if not envelopes:
        return
    store.upsert_profiles([e.payload["profile"] for e in envelopes], changed_at=now())
    # an erasure (another export worker's) may have come between the check and the write
    late = store.erased_among(e.profile_id for e in envelopes)
    if late:
        store.forget_identifiers(sorted(late), ())
        store.delete_profiles(sorted(late))
        store.forget_profiles(sorted(late))
        envelopes = [e for e in envelopes if e.profile_id not in late]
    partners = store.streaming_partners()
    for envelope in envelopes:
        for contract in partners:
            if rendering.in_segment(contract, envelope.payload["profile"]):
                _queue_for_stream(store, envelope, contract.partner_id, envelope.profile_id)


def _queue_for_stream(store: ExportStore, envelope: Envelope, partner_id: str,
                      profile_id: str) -> None:
    change_id = derived_message_id(envelope.message_id, f"export-stream-{partner_id}")
    store.queue_stream_change(change_id, partner_id, profile_id, envelope.message_id)


def _check_snapshot(snapshot: Any, profile_id: str) -> None:
    if not isinstance(snapshot, dict):
        raise InvalidMessage("payload.profile must be an object or null")
    if snapshot.get("profile_id") != profile_id:
        raise InvalidMessage("payload.profile.profile_id differs from the envelope's profile_id")
    for section in ("identifiers", "traits", "computed"):
        if not isinstance(snapshot.get(section) or {}, dict):
            raise InvalidMessage(f"payload.profile.{section} must be an object")
    identifiers = snapshot.get("identifiers") or {}
    if not all(isinstance(values, list) for values in identifiers.values()):
        raise InvalidMessage("payload.profile.identifiers maps each type to a list")
    if not isinstance(snapshot.get("segments") or [], list):
        raise InvalidMessage("payload.profile.segments must be a list")


def handle_consent_change(store: ExportStore, envelope: Envelope) -> list[Outgoing]:
    return handle_consent_changes(store, [envelope])


def handle_consent_changes(store: ExportStore, envelopes: list[Envelope]) -> list[Outgoing]:
    """Consent Changed messages in order: their states stored together (a few round trips
    for a poll's worth), then each change's effect on the partners, in order."""
    parsed = [(envelope, parse_consent_change(envelope)) for envelope in envelopes
              if envelope.type == "Consent Changed"]
    # a bare identifier's state concerns no partner: what it means for a profile is announced
    # for the profile once the identifier is linked (reason identifier_linked)
    decided = [(envelope, _decision(change)) for envelope, change in parsed if change.profile_id]
    if not decided:
        return []
    changes = store.set_consents([decision for _, decision in decided])
    streaming: list[PartnerContract] | None = None  # read once, when a change needs them
    for (envelope, decision), changed in zip(decided, changes, strict=True):
        if changed and decision.allowed:
            if streaming is None:
                streaming = store.streaming_partners()
            _stream_newly_allowed(store, envelope, decision, streaming)
        elif changed:
            _withdraw(store, envelope, decision)
    return []


def _decision(change: ConsentChange) -> ConsentDecision:
    return ConsentDecision(profile_id=change.profile_id, purpose=change.purpose,
                           allowed=change.allowed, state=change.state or "",
                           decided_at=change.collected_at)


def _stream_newly_allowed(store: ExportStore, envelope: Envelope, decision: ConsentDecision,
                          streaming: list[PartnerContract]) -> None:
    """A profile that just became sendable goes to the streaming partners now, not at its
    next change."""
    requiring = [contract for contract in streaming
                 if decision.purpose in contract.required_purposes]
    snapshots = store.profiles([decision.profile_id]) if requiring else []
    for contract in requiring:
        if snapshots and rendering.in_segment(contract, snapshots[0]):
            _queue_for_stream(store, envelope, contract.partner_id, decision.profile_id)


def _withdraw(store: ExportStore, envelope: Envelope, decision: ConsentDecision) -> None:
    """A purpose no longer allowed: the profile's changes waiting for a partner requiring it
    are cancelled, and a partner holding the profile, or one merged into it, gets a deletion
    notice."""
    cause = f"consent:{decision.purpose}:{decision.state}"
    profile_ids = store.with_merged([decision.profile_id])
    for contract in store.partners_requiring(decision.purpose):
        store.cancel_stream_changes(profile_ids, cause, contract.partner_id)
        for profile_id in profile_ids:
            delivery = store.delivery(contract.partner_id, profile_id)
            if delivery is not None and delivery.get("awaiting_notice"):
                store.queue_notice(_notice_id(envelope, delivery), delivery, cause)


def erase(store: ExportStore, profile_ids: list[str], cause: str,
          identifiers: tuple[tuple[str, str], ...] = ()) -> dict[str, Any]:
    """Delete the read model's rows for ``profile_ids`` and queue a deletion notice to each
    partner that still holds one of them, or one of ``identifiers`` (type, normalised value)
    as the partner received it. Returns the counts."""
    queued = 0
    # the profiles named are erased for good; those merged into them, or found by identifier
    # in the read model (which may be behind a split), only lose their rows
    store.mark_erased(profile_ids)
    profile_ids = sorted({*store.with_merged(profile_ids),
                          *store.profiles_holding(identifiers)})
    # before the rows go: the index entries are found through what the rows hold
    store.forget_identifiers(profile_ids, identifiers)
    deliveries = {d["_id"]: d for d in store.deliveries_of(profile_ids)}
    delivered: list[tuple[str, str, list]] = []
    if identifiers:
        for contract in store.all_partners():
            treated = rendering.treated_identifiers(contract, identifiers)
            for field_name, values in treated.items():
                delivered.append((contract.partner_id, field_name, values))
                for delivery in store.deliveries_holding(contract.partner_id, field_name,
                                                         values):
                    deliveries.setdefault(delivery["_id"], delivery)
    # told already (after a withdrawal) and sent nothing since: no notice owed
    owed = [delivery for delivery in deliveries.values() if delivery.get("awaiting_notice")]
    # noted before the notices are queued: a handling after a crash finds no delivery
    # awaiting a notice, yet its ack must name every partner this erasure notified
    partners = store.note_erasure_partners(cause, (d["partner_id"] for d in owed))
    for delivery in owed:
        notice_id = derived_message_id(
            cause, f"export-erasure-{delivery['partner_id']}-{delivery['profile_id']}")
        if store.queue_notice(notice_id, delivery, "erasure"):
            queued += 1
    for partner_id, field_name, values in delivered:
        store.forget_delivered(partner_id, field_name, values)
    store.cancel_stream_changes(profile_ids, "erasure")
    batches = store.discard_unsent_batches_holding(profile_ids)
    profiles = store.delete_profiles(profile_ids)
    consents = store.delete_consents(profile_ids)
    store.set_restricted(profile_ids, False)
    store.forget_profiles(profile_ids)
    return {"read_model_profiles_deleted": profiles, "consent_states_deleted": consents,
            "unsent_batches_discarded": batches, "deletion_notices_queued": queued,
            "partners_notified": partners}


def handle_privacy_request(store: ExportStore, envelope: Envelope) -> list[Outgoing]:
    try:
        request = privacy_requests.parse_request(envelope.payload)
    except privacy_requests.InvalidRequest as error:
        raise InvalidMessage(str(error)) from None
    kind, profile_ids, data = request.kind, list(request.profile_ids), None
    if kind == "erasure":
        # the request, not its message: the dpo's retry of it is another message
        summary = erase(store, profile_ids, cause=request.request_id,
                        identifiers=request.identifiers)
    elif kind == "access":
        data = {"partners": partners_of(store, profile_ids)}
        summary = {"partners": len(data["partners"])}
    elif kind in ("restriction", "restriction_lifted"):
        store.set_restricted(profile_ids, kind == "restriction")
        summary = {"profiles_restricted" if kind == "restriction"
                   else "profiles_released": len(profile_ids)}
    else:
        # the read model follows cdp.profile.changes, which carries the rectified values
        summary = {"note": "rectified values arrive with the profile's next change"}
    message = new_envelope("Privacy Request Acknowledged", "system",
                           message_id=derived_message_id(envelope.message_id,
                                                         f"privacy-ack-{SERVICE}"),
                           payload=privacy_requests.ack_payload(request, SERVICE, summary,
                                                                data))
    return [Outgoing(topics.PRIVACY_ACKS, request.request_id, message)]


def partners_of(store: ExportStore, profile_ids: list[str]) -> list[dict[str, Any]]:
    """Which partners received the subject's data, when, by a run or a stream, and whether
    they were told to delete it: what an access request and GET /v1/exports/disclosures
    report."""
    deliveries = store.deliveries_of(profile_ids)
    names = store.partner_names({d["partner_id"] for d in deliveries})
    return [{"partner_id": d["partner_id"], "partner_name": names.get(d["partner_id"]),
             "profile_id": d["profile_id"], "first_sent_at": _iso(d.get("first_sent_at")),
             "last_sent_at": _iso(d.get("last_sent_at")),
             "via": "stream" if d.get("last_run_id") == stream_id(d["partner_id"]) else "run",
             "fields": sorted(name for name, values in (d.get("identifiers") or {}).items()
                              if values),
             "deletion_notice_at": _iso(d.get("last_notice_at"))}
            for d in sorted(deliveries, key=lambda d: (d["partner_id"], d["profile_id"]))]


def _iso(moment: datetime | None) -> str | None:
    return moment.isoformat() if moment is not None else None
