"""What one erasure costs each service, with a store holding many other profiles' data.

`python -m bench.erasure_costs [--profiles N] [--subjects M]` against the instance
CDP_KAFKA_BOOTSTRAP / CDP_MONGO_URI point at (a fresh database each run; no service process
and no Kafka message is involved: the handlers are called in-process).

Each subject is made through the services' own write paths: shop traffic through the identity
graph's handler, the resolved events through the profile projection, its profile changes and
a consent change through the export feed and the profile's consent states, an export delivery
to a partner, profile reads in the access log, a segment membership, the consent service's
data keys. Filler: four such template subjects are copied (ids and identifier values
replaced) until the store holds ``--profiles`` subjects' data, so a query that scans a
collection costs what it would cost there. Then each measured subject's erasure goes as in
production: the identity API's subject lookup (the consent API asks it before the fan-out),
every service's privacy handler with the fan-out message, the export feed with the profile's
"erased" change, and the consent service's ack handler with the five acks. pymongo command
monitoring counts each step's commands and their time by command and collection.
"""

from __future__ import annotations

import argparse
import base64
import dataclasses
import hashlib
import os
import secrets
import statistics
import time
import uuid
from datetime import UTC, datetime
from typing import Any

from pymongo import monitoring

from bench import pipeline
from bench.pipeline import step
from bench.worker_costs import CommandCounter, envelopes
from services.common import store
from services.common.bus import ensure_topics
from services.common.config import Settings
from services.common.envelope import Envelope, new_envelope
from services.common.shredding import identifier_key_id, profile_key_id
from services.consent import privacy_handlers
from services.consent.consent_store import ConsentStore
from services.consent.consents_worker import LedgerHolding
from services.consent.privacy import Identifier, PrivacyRequest
from services.consent.privacy_flow import build_flow, digest_key, request_message, subject_keys
from services.consent.receipts import ReceiptSigner
from services.export import worker as export_worker
from services.export.contracts import parse_contract
from services.export.export_store import ExportStore
from services.export.sealing import SecretBox
from services.identity import privacy as identity_privacy
from services.identity import worker as identity_worker
from services.identity.graph_store import MongoGraph
from services.identity.privacy_store import GraphEraser, SuppressionList
from services.profile import access_log
from services.profile import worker as profile_worker
from services.profile.segments_store import SegmentStore
from services.social import worker as social_worker
from tests.support.platform_stack import PlatformStack

SERVICES = ("identity", "profile", "consent", "social", "export")
PARTNER = "bench-ads"
SEGMENT = "bench-buyers"
# the platform's own bookkeeping: neither a subject's data nor scanned by an erasure
NOT_COPIED = {"processed_messages", "identity_locks", "privacy_request_locks",
              "profile_segments", "export_partners", "profile_jobs"}


class Subjects:
    """Makes subjects through the services' write paths."""

    def __init__(self, settings: Settings, db):
        self.db = db
        self.graph = identity_worker.build_consumers(settings, _NoProducer(), db)[0].handler
        profile_loops = profile_worker.build_consumers(settings, _NoProducer(), db)
        self.projection, self.profile_consents = (profile_loops[0].handler,
                                                  profile_loops[1].handler)
        self.context = profile_worker.Context.build(settings, db)
        self.export = ExportStore(db, SecretBox.from_settings(settings))
        self.export_feed = export_worker.make_handler(self.export)
        self.keys = subject_keys(settings, db)
        self.digest_key = digest_key(settings)
        self.export.save_partner(parse_contract(PARTNER, {
            "name": "Bench ads", "required_purposes": ["marketing_email"], "format": "csv",
            "destination": {"kind": "directory", "path": "bench"},
            "fields": [{"name": "ph", "source": "identifiers.phone", "treatment": "sha256",
                        "platform": "meta", "platform_field": "ph"},
                       {"name": "external_id", "source": "identifiers.user_id",
                        "treatment": "sha256", "platform": "meta",
                        "platform_field": "external_id"}]}))
        SegmentStore(db).create(SEGMENT, {"name": "Buyers", "rule": {
            "field": "identifiers.user_id", "op": "exists", "value": True}}, "bench",
                                datetime.now(UTC))

    def make(self, run: str) -> dict[str, Any]:
        """One customer's shop traffic and everything that follows from it; returns the
        subject's profile id and identifiers."""
        web, _ = envelopes(run, 1)
        profile_id, identifiers = None, {}
        phone = f"+35840{secrets.randbelow(10**7):07d}"
        for envelope in web:
            if "phone" in envelope.identifiers:  # shop traffic numbers customers from 0
                traits = {**envelope.payload["traits"], "phone": phone}
                envelope = dataclasses.replace(
                    envelope, identifiers={**envelope.identifiers, "phone": phone},
                    payload={**envelope.payload, "traits": traits})
            for out in self.graph(envelope) or []:
                if out.topic != "cdp.events.resolved":
                    continue
                resolved = out.value
                profile_id = resolved.profile_id
                identifiers |= resolved.identifiers
                self._feed_export(self.projection(resolved))
        consent = new_envelope(
            "Consent Changed", "system", message_id=f"consent-{run}",
            payload={"purpose": "marketing_email", "state": "granted", "allowed": True,
                     "reason": "bench", "receipt_id": f"r-{run}", "notice_version": None,
                     "source": "bench", "collected_at": datetime.now(UTC).isoformat()},
        ).resolved_to(profile_id)
        self.profile_consents(consent)
        self.export_feed(consent)
        self.export.record_deliveries(PARTNER, f"run-{run}", {profile_id: {
            "ph": [_sha256(identifiers["phone"])],
            "external_id": [_sha256(identifiers["user_id"])]}})
        profile_worker.store_accesses(self.context, [access_log.entry_message(
            profile_id=profile_id, key_id="agent", roles=["agent"], purpose="customer_service",
            endpoint="profile", at=datetime.now(UTC)).value for _ in range(3)])
        self.context.segments.add_member(SEGMENT, profile_id, datetime.now(UTC))
        self.keys.key(profile_key_id(profile_id), create=True)
        for type_, value in identifiers.items():
            self.keys.key(identifier_key_id(self.digest_key, type_, value), create=True)
        return {"profile_id": profile_id, "identifiers": identifiers, "run": run}

    def _feed_export(self, outgoing) -> None:
        for out in outgoing or []:
            if out.topic == "cdp.profile.changes":
                self.export_feed(out.value)


class _NoProducer:
    """The workers' builders want a producer; the handlers here are called directly."""

    def send(self, messages, timeout=None) -> None:
        pass


def _sha256(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


def _replace(value: Any, pairs: list[tuple[str, str]]) -> Any:
    if isinstance(value, str):
        for old, new in pairs:
            if old in value:
                value = value.replace(old, new)
        return value
    if isinstance(value, dict):
        return {_replace(k, pairs): _replace(v, pairs) for k, v in value.items()}
    if isinstance(value, list):
        return [_replace(v, pairs) for v in value]
    return value


def fill(db, templates: list[dict[str, Any]], profiles: int) -> dict[str, int]:
    """Copy the templates' documents until ``profiles`` subjects' worth are stored; returns
    the documents per collection afterwards."""
    copies = max(profiles // len(templates) - 1, 0)
    names = [name for name in sorted(db.list_collection_names()) if name not in NOT_COPIED]
    for number, template in enumerate(templates):
        tokens = [template["profile_id"], template["run"], *template["identifiers"].values(),
                  *(_sha256(v) for v in template["identifiers"].values())]
        owned = {name: [doc for doc in db[name].find({})
                        if any(token in repr(doc) for token in tokens)] for name in names}
        # ids made of none of the subject's values (random ones) are renamed per copy too,
        # with whatever lists them
        own_ids = [doc["_id"] for docs in owned.values() for doc in docs
                   if isinstance(doc["_id"], str) and not any(t in doc["_id"] for t in tokens)]
        for name, docs in owned.items():
            copied = []
            for n in range(copies):
                pairs = _pairs(template, number, n, own_ids)
                # an _id that is not a string (an ObjectId) is given anew
                copied.extend(_replace(doc if isinstance(doc["_id"], str) else
                                       {k: v for k, v in doc.items() if k != "_id"}, pairs)
                              for doc in docs)
                if len(copied) >= 2000:
                    db[name].insert_many(copied, ordered=False)
                    copied = []
            if copied:
                db[name].insert_many(copied, ordered=False)
    return {name: db[name].estimated_document_count() for name in db.list_collection_names()}


def _pairs(template: dict[str, Any], number: int, copy: int,
           own_ids: list[str]) -> list[tuple[str, str]]:
    """What to replace in a template's documents to make its ``copy``-th copy."""
    tag = f"f{copy:06d}{template['run'][-4:]}"
    pairs = [(own_id, f"{own_id}{tag}") for own_id in own_ids]
    for value in template["identifiers"].values():
        new = f"+3584{number}{copy:07d}" if value.startswith("+") else f"{value}{tag}"
        pairs += [(_sha256(value), _sha256(new)), (value, new)]
    return [(template["profile_id"], f"{template['profile_id']}{tag}"), *pairs,
            (template["run"], f"{template['run']}{tag}")]


def measure(settings: Settings, db, counter: CommandCounter, subject: dict) -> dict:
    """One subject's erasure, step by step: {step: {ms, commands, top}}."""
    report: dict[str, dict] = {}

    def timed(name: str, call):
        counter.counts.clear()
        counter.micros.clear()
        counter.active = True
        started = time.perf_counter()
        try:
            return call()
        finally:
            elapsed = (time.perf_counter() - started) * 1000
            counter.active = False
            report[name] = {"ms": round(elapsed, 1), "commands": sum(counter.counts.values()),
                            "top": {f"{c}:{coll}": (n, round(counter.micros[(c, coll)] / 1000, 1))
                                    for (c, coll), n in counter.counts.most_common(12)}}

    graph = MongoGraph(db)
    flow = build_flow(settings, db)
    now = datetime.now(UTC)
    request = PrivacyRequest.new(
        kind="erasure", profile_id=subject["profile_id"], identifier=None, fields=None,
        reason="bench", requested_by="bench", expected=SERVICES, deadline_days=30, now=now,
        digest=flow.digest)
    flow.repository.add(request)
    lookup = identity_privacy.PrivacyRequest(request.request_id, "erasure",
                                             (subject["profile_id"],), ())
    found = timed("identity_subject_lookup", lambda: identity_privacy.expand_subject(
        graph, lookup, graph.merged_into))
    flow.repository.update(request.request_id, lambda r: r.expand_subject(
        sorted(found.profile_ids), [Identifier(i.type, i.value) for i in found.identifiers],
        now, flow.digest, by="identity") or True)
    message: Envelope = request_message(flow.repository.get(request.request_id)).value
    handlers = _privacy_handlers(settings, db)
    acks: list[Envelope] = []
    erased_changes: list[Envelope] = []
    for service in SERVICES:
        outgoing = timed(service, lambda service=service: list(handlers[service](message) or []))
        acks += [o.value for o in outgoing if o.topic == "cdp.privacy.acks"]
        erased_changes += [o.value for o in outgoing if o.topic == "cdp.profile.changes"]
    export_feed = export_worker.make_handler(ExportStore(db, SecretBox.from_settings(settings)))
    timed("export_profile_erased", lambda: [export_feed(c) for c in erased_changes])
    ack_handler = privacy_handlers.make_ack_handler(
        flow.repository, ReceiptSigner.from_setting(settings.consent_receipt_key))
    timed("consent_acks", lambda: [ack_handler(a) for a in acks])
    state = flow.repository.get(request.request_id).state
    assert state == "completed", f"the erasure ended {state}"
    left = leftovers(db, subject)
    assert not left, f"the erasure left the subject's data in {left}"
    return report


# what stays by design, naming the profile id only: the erasure tombstone, the request's
# proof, the identity log (that a merge happened), the record of what each partner was sent
# and told to delete (its identifiers cleared), the deletion notices themselves
KEPT = {"profile_erasures", "privacy_requests", "identity_log", "processed_messages",
        "export_deliveries", "export_notices"}


def leftovers(db, subject: dict[str, Any]) -> dict[str, int]:
    """Documents still naming the subject's profile id or one of its identifiers (a full
    scan of every collection, outside the measured steps)."""
    tokens = [subject["profile_id"], *subject["identifiers"].values()]
    found = {name: sum(any(t in repr(doc) for t in tokens) for doc in db[name].find({}))
             for name in db.list_collection_names() if name not in KEPT}
    return {name: count for name, count in found.items() if count}


def _privacy_handlers(settings: Settings, db) -> dict:
    key = digest_key(settings)
    return {
        "identity": identity_worker.make_privacy_handler(
            MongoGraph(db), GraphEraser(db), SuppressionList(db, key)),
        "profile": profile_worker.make_privacy_handler(profile_worker.Context.build(settings,
                                                                                    db)),
        "consent": privacy_handlers.make_request_handler(
            subject_keys(settings, db), privacy_handlers.DoNotContactList(db, key),
            [LedgerHolding(ConsentStore(db))], key, db),
        "social": social_worker.handle_privacy_request,
        "export": export_worker.make_handler(ExportStore(db, SecretBox.from_settings(settings))),
    }


def summarise(reports: list[dict]) -> dict:
    """Median ms and commands per step, and the costliest commands of the last subject."""
    steps = list(reports[0])
    summary = {name: {"ms_p50": statistics.median(r[name]["ms"] for r in reports),
                      "commands": reports[-1][name]["commands"],
                      "top": reports[-1][name]["top"]} for name in steps}
    summary["handlers_total_ms_p50"] = statistics.median(
        sum(r[name]["ms"] for name in steps) for r in reports)
    return summary


def run(env: dict[str, str], profiles: int, subjects: int, end_to_end: int = 0) -> dict:
    """The store filled, then ``subjects`` erasures step by step in-process and, when
    ``end_to_end``, that many more through every service's API and worker (processes)."""
    settings = Settings.from_env(env)
    counter = CommandCounter()
    monitoring.register(counter)
    db = store.database(store.connect(settings), settings)
    maker = Subjects(settings, db)
    step(f"four template subjects, copied to {profiles:,} subjects' data")
    templates = [maker.make(f"tpl{uuid.uuid4().hex[:6]}") for _ in range(4)]
    started = time.perf_counter()
    sizes = fill(db, templates, profiles)
    step(f"  filled in {time.perf_counter() - started:.0f}s: "
         + ", ".join(f"{name} {count:,}" for name, count in sorted(sizes.items())
                     if count > 100))
    measured = [maker.make(f"sub{uuid.uuid4().hex[:6]}") for _ in range(subjects)]
    reports = []
    for subject in measured:
        reports.append(measure(settings, db, counter, subject))
        step(f"  {subject['profile_id']}: " + ", ".join(
            f"{name} {r['ms']:.0f} ms" for name, r in reports[-1].items()))
    report = {"profiles": profiles, "collections": sizes, "steps": summarise(reports)}
    if end_to_end:
        report["end_to_end"] = through_services(env, settings, maker, end_to_end)
    return report


def through_services(env: dict[str, str], settings: Settings, maker: Subjects,
                     count: int) -> dict:
    """Erasures filed with the consent API until every service acknowledged, with every
    service's API and worker running on the filled store (bench/pipeline.py ``erasures``).
    The workers' consumer groups are new: on an instance whose topics are not empty they
    replay them first, so run this on a fresh one."""
    ensure_topics(settings)
    subjects = [maker.make(f"e2e{uuid.uuid4().hex[:6]}") for _ in range(count)]
    dpo = f"bench-dpo-{uuid.uuid4().hex}"
    stack = PlatformStack({**env, "CDP_BOOTSTRAP_API_KEYS": f"dpo:{dpo}",
                           "CDP_SERVICE_API_KEY": dpo}).start()
    try:
        time.sleep(5)  # let the workers join their groups
        step(f"  {count} erasures through the services")
        return pipeline.erasures(stack.url("consent"), dpo,
                                 [subject["profile_id"] for subject in subjects], count)
    finally:
        stack.stop()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.erasure_costs", description=__doc__)
    parser.add_argument("--profiles", type=int, default=20_000)
    parser.add_argument("--subjects", type=int, default=3)
    parser.add_argument("--end-to-end", type=int, default=0, metavar="N",
                        help="then N erasures through the running services (fresh instance)")
    args = parser.parse_args()
    env = {**os.environ, "CDP_MONGO_DB": f"muisti_erasure_{uuid.uuid4().hex[:6]}",
           "CDP_PRIVACY_DIGEST_KEY": secrets.token_hex(16), "CDP_LOG_LEVEL": "WARNING",
           "CDP_MASTER_KEY": base64.b64encode(secrets.token_bytes(32)).decode()}
    report = run(env, args.profiles, args.subjects, args.end_to_end)
    print()
    for name, figures in report["steps"].items():
        if isinstance(figures, dict):
            print(f"  {name:26} {figures['ms_p50']:9.1f} ms  {figures['commands']:4} commands")
            for command, (count, ms) in figures["top"].items():
                print(f"      {command:44} {count:4}  {ms:9.1f} ms")
        else:
            print(f"  {name:26} {figures:9.1f} ms")
    if "end_to_end" in report:
        print(f"  end to end: {report['end_to_end']}")


if __name__ == "__main__":
    main()
