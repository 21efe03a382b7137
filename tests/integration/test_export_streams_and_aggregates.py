"""The export service's streaming, aggregate and erasure paths on the real broker and store,
against the fake partner of tests/support/export_partner.py; partner secrets checked in the
raw store document."""

from __future__ import annotations

import csv
import hashlib
import io

import orjson
import pytest
import requests

from services.common import topics
from services.common.envelope import new_envelope
from tests.support.export_partner import (
    SECRET,
    FakePartner,
    SoleExportWorker,
    auth,
    consent_changed,
    finished_run,
    profile_changed,
    publish,
    wait_for_read_model,
)
from tests.support.kafka import produce, read_all
from tests.support.processes import ServiceApi, wait_until

ENDPOINT_TOKEN = "Bearer endpoint-credential-0123456789"
PSEUDONYM_KEY = "pseudonym-key-0123456789"


@pytest.fixture(scope="module")
def export_env(test_env, tmp_path_factory):
    return {**test_env, "CDP_EXPORT_ALLOW_HTTP": "true", "CDP_EXPORT_LEASE_SECONDS": "3",
            "CDP_EXPORT_RETRY_BASE_SECONDS": "0.1", "CDP_EXPORT_BATCH_SIZE": "2",
            "CDP_EXPORT_STREAM_BATCH_SIZE": "2", "CDP_EXPORT_MIN_CELL_SIZE": "3",
            "CDP_EXPORT_DIRECTORY_ROOT": str(tmp_path_factory.mktemp("exports"))}


@pytest.fixture(scope="module")
def export_api(export_env):
    api = ServiceApi("export", export_env).start()
    yield api
    api.stop()


@pytest.fixture(scope="module")
def workers(export_env):
    sole = SoleExportWorker(export_env)
    yield sole
    sole.stop_all()


def put_contract(api, api_keys, partner_id: str, url: str, **contract) -> dict:
    body = {"name": "Partner", "required_purposes": ["marketing"], "format": "jsonl",
            "pseudonym_key": PSEUDONYM_KEY,
            "destination": {"kind": "https", "url": url, "signing_secret": SECRET,
                            "authorization": ENDPOINT_TOKEN},
            "fields": [{"name": "em", "source": "identifiers.email", "treatment": "sha256",
                        "platform": "meta", "platform_field": "em"},
                       {"name": "pid", "source": "profile_id"}], **contract}
    response = requests.put(f"{api.url}/v1/partners/{partner_id}", headers=auth(api_keys),
                            json=body, timeout=10)
    assert response.status_code == 200, response.text
    return response.json()


def sent_pids(partner: FakePartner) -> list[str]:
    return [orjson.loads(line)["pid"] for body in partner.bodies("batch")
            for line in body.splitlines()]


def stream_of(api, api_keys, partner_id: str) -> dict:
    response = requests.get(f"{api.url}/v1/exports/{partner_id}/stream",
                            headers=auth(api_keys, "dpo"), timeout=10)
    assert response.status_code == 200, response.text
    return response.json()


def stream_recording(api, api_keys, partner_id: str, considered: int, exported: int) -> dict:
    """The stream once its record counts what it considered and sent (it is written right
    after the partner's acknowledgement, so a moment after the partner has the rows)."""
    def recorded():
        stream = stream_of(api, api_keys, partner_id)
        counted = (stream["progress"]["considered"], stream["progress"]["exported"])
        return stream if counted == (considered, exported) else None

    return wait_until(recorded, 30, interval=0.2, what="the stream's record")


def consent_state(db, profile_id: str) -> str | None:
    doc = db.export_consents.find_one({"_id": f"{profile_id}|marketing"})
    return doc and doc["state"]


def test_a_streaming_partner_gets_each_change_and_nothing_more_once_consent_is_withdrawn(
        export_api, workers, settings, db, api_keys, unique):
    workers()
    partner = FakePartner(fail_first=1)
    segment, partner_id = f"seg-{unique}", f"stream-{unique}"
    p1, p2, p3, outsider = (f"{unique}-p{i}" for i in range(1, 5))
    put_contract(export_api, api_keys, partner_id, partner.url, mode="streaming",
                 segment=segment)
    publish(settings, topics.CONSENT_CHANGES, [consent_changed(p, "granted")
                                               for p in (p1, p2, outsider)])
    wait_until(lambda: db.export_consents.count_documents(
        {"profile_id": {"$in": [p1, p2, outsider]}}) == 3, 60, what="the grants")
    # p3 never consented; the outsider is not in the partner's segment
    publish(settings, topics.PROFILE_CHANGES,
            [profile_changed(p, f"S.{p}@Example.com", segment) for p in (p1, p2, p3)]
            + [profile_changed(outsider, f"S.{outsider}@Example.com", f"other-{unique}")])
    wait_until(lambda: sorted(sent_pids(partner)) == [p1, p2], 60, what="p1 and p2 streamed")
    wait_until(lambda: stream_of(export_api, api_keys, partner_id)["changes"].get("pending")
               is None and stream_of(export_api, api_keys, partner_id)["progress"]["excluded"],
               30, what="p3's change settled")

    publish(settings, topics.CONSENT_CHANGES, [consent_changed(p1, "withdrawn")])
    wait_until(lambda: consent_state(db, p1) == "withdrawn", 30, what="p1's withdrawal")
    wait_until(lambda: partner.keys("deletion"), 30, what="p1's deletion notice")
    publish(settings, topics.PROFILE_CHANGES,
            [profile_changed(p, f"S.{p}@Example.com", segment, city="Oulu") for p in (p1, p2)])
    wait_until(lambda: sent_pids(partner).count(p2) == 2, 60, what="p2's second change")
    # the partner has the batch; the stream records it right after the acknowledgement
    stream = stream_recording(export_api, api_keys, partner_id, considered=5, exported=3)

    assert sent_pids(partner).count(p1) == 1  # nothing of p1 after the withdrawal
    assert p3 not in sent_pids(partner) and outsider not in sent_pids(partner)
    [notice] = [orjson.loads(body) for body in partner.bodies("deletion")]
    assert notice["reason"] == "consent:marketing:withdrawn"
    assert notice["identifiers"]["em"] == [
        hashlib.sha256(f"s.{p1}@example.com".encode()).hexdigest()]
    batches = [r for r in partner.requests if r["headers"].get("X-Muisti-Kind") == "batch"]
    assert batches[0]["key"] == batches[1]["key"]  # the 503 was retried under the same key
    assert all(r["headers"]["Authorization"] == ENDPOINT_TOKEN for r in batches)
    assert all(r["key"].startswith(f"stream:{partner_id}:batch:") for r in batches)
    assert stream["progress"]["excluded"] == {"consent:marketing:missing": 1,
                                              "consent:marketing:withdrawn": 1}
    assert stream["changes"] == {"sent": 3, "not_sent": 2}  # p3; p1 after the withdrawal
    assert stream["partner_receipt"]["status"] == 200
    # a partner key does not read another partner's stream
    other = requests.get(f"{export_api.url}/v1/exports/{partner_id}/stream",
                         headers=auth(api_keys, "partner"), timeout=10)
    assert other.status_code == 404
    requests.delete(f"{export_api.url}/v1/partners/{partner_id}", headers=auth(api_keys),
                    timeout=10)
    partner.close()


def test_a_stream_worker_killed_mid_batch_resumes_without_a_change_sent_twice(
        export_api, workers, settings, db, api_keys, unique):
    worker = workers()
    partner = FakePartner(hold_batch="0")
    segment, partner_id = f"seg-{unique}", f"crash-{unique}"
    ids = [f"{unique}-p{i}" for i in range(1, 6)]
    put_contract(export_api, api_keys, partner_id, partner.url, mode="streaming",
                 segment=segment)
    publish(settings, topics.CONSENT_CHANGES, [consent_changed(p, "granted") for p in ids])
    wait_until(lambda: db.export_consents.count_documents(
        {"profile_id": {"$in": ids}}) == len(ids), 60, what="the grants")
    publish(settings, topics.PROFILE_CHANGES,
            [profile_changed(p, f"c.{p}@example.com", segment) for p in ids])
    assert partner.holding.wait(60), "the first stream batch never reached the partner"
    worker.kill()  # the partner applied batch 0; the worker never saw the acknowledgement
    partner.release.set()
    workers()  # replays the topics: the same changes must not be queued again
    wait_until(lambda: sorted(sent_pids(partner)) == sorted(ids), 60,
               what="every profile streamed")
    stream = stream_recording(export_api, api_keys, partner_id, considered=len(ids),
                              exported=len(ids))

    first = f"stream:{partner_id}:batch:000000"
    assert partner.keys("batch").count(first) == 2  # re-sent after the crash, same key
    assert len(sent_pids(partner)) == len(ids)  # the receiver applied each change once
    assert stream["claims"] >= 2
    assert stream["changes"] == {"sent": len(ids)}
    requests.delete(f"{export_api.url}/v1/partners/{partner_id}", headers=auth(api_keys),
                    timeout=10)
    partner.close()


def test_aggregates_send_cells_of_k_profiles_and_suppress_smaller_ones(
        export_api, workers, settings, db, api_keys, unique):
    workers()
    partner = FakePartner()
    segment, partner_id = f"seg-{unique}", f"stats-{unique}"
    oulu = [f"{unique}-o{i}" for i in range(4)]  # k = 4: exactly k
    turku = [f"{unique}-t{i}" for i in range(3)]  # one below k
    unconsented = f"{unique}-o-none"  # would make Oulu 5 if counted
    people = [profile_changed(p, f"{p}@example.com", segment, city="Oulu") for p in oulu]
    people += [profile_changed(p, f"{p}@example.com", segment, city="Turku") for p in turku]
    people += [profile_changed(unconsented, "x@example.com", segment, city="Oulu")]
    publish(settings, topics.PROFILE_CHANGES, people)
    publish(settings, topics.CONSENT_CHANGES, [consent_changed(p, "granted")
                                               for p in oulu + turku])
    wait_for_read_model(db, oulu + turku + [unconsented], oulu + turku)
    view = put_contract(export_api, api_keys, partner_id, partner.url, mode="aggregate",
                        segment=segment, format="csv", fields=[],
                        aggregate={"dimensions": [{"name": "city", "source": "traits.city"}],
                                   "measures": [{"name": "purchases",
                                                 "source": "computed.purchase_count"}],
                                   "k": 4})
    assert view["aggregate"]["k"] == 4

    started = requests.post(f"{export_api.url}/v1/exports/{partner_id}/runs",
                            headers=auth(api_keys, "dpo"), json={}, timeout=10)
    assert started.status_code == 202 and started.json()["mode"] == "aggregate"
    run = finished_run(export_api, api_keys, partner_id, started.json()["run_id"])

    assert run["status"] == "succeeded", run
    [body] = partner.bodies("batch")
    rows = list(csv.DictReader(io.StringIO(body.decode())))
    assert rows == [{"city": "Oulu", "count": "4", "purchases_sum": "4",
                     "purchases_avg": "1.0"}]
    # the run's record counts cells, never profiles: no total to subtract from
    assert run["progress"]["considered"] == 2 and run["progress"]["exported"] == 1
    assert run["progress"]["excluded"] == {"cell_below_k": 1}
    assert run["audit"]["partner_receipt"]["status"] == 200
    assert run["audit"]["content_sha256"] == hashlib.sha256(
        hashlib.sha256(body).hexdigest().encode()).hexdigest()
    overridden = requests.post(f"{export_api.url}/v1/exports/{partner_id}/runs",
                               headers=auth(api_keys, "dpo"), json={"mode": "full"}, timeout=10)
    assert overridden.status_code == 422
    partner.close()


def test_partner_secrets_are_sealed_in_the_store_and_never_returned(
        export_api, db, api_keys, unique):
    partner_id = f"sealed-{unique}"
    view = put_contract(export_api, api_keys, partner_id, "http://127.0.0.1:9/none")
    shown = requests.get(f"{export_api.url}/v1/partners/{partner_id}",
                         headers=auth(api_keys, "dpo"), timeout=10).json()
    raw = db.export_partners.find_one({"_id": partner_id})

    secrets = (SECRET, PSEUDONYM_KEY, ENDPOINT_TOKEN)
    for text in (orjson.dumps(view).decode(), orjson.dumps(shown).decode(), str(raw)):
        assert not any(secret in text for secret in secrets)
    for sealed in (raw["destination"]["signing_secret"], raw["destination"]["authorization"],
                   raw["pseudonym_key"]):
        assert sealed["sealed"] == 1 and set(sealed) == {"sealed", "nonce", "ciphertext"}
    assert shown["destination"]["signing_secret_set"] is True
    assert shown["destination"]["authorization_set"] is True


@pytest.mark.parametrize(("change", "problem"), [
    ({"destination": {"kind": "https", "url": "https://[::1/h", "signing_secret": SECRET}},
     "destination.url"),
    ({"destination": {"kind": "https", "url": "https://partner.example:99999/in",
                      "signing_secret": SECRET}}, "destination.url"),
    ({"destination": {"kind": "https", "url": "https://partner.example/in",
                      "signing_secret": SECRET, "authorization": " " + ENDPOINT_TOKEN}},
     "destination.authorization"),
    ({"phone_region": "UK"}, "phone_region")])
def test_a_contract_the_export_could_not_use_gets_a_422_naming_what_is_wrong(
        export_api, api_keys, unique, change, problem):
    body = {"name": "Partner", "required_purposes": ["marketing"],
            "destination": {"kind": "https", "url": "https://partner.example/in",
                            "signing_secret": SECRET},
            "fields": [{"name": "pid", "source": "profile_id"}], **change}
    response = requests.put(f"{export_api.url}/v1/partners/unusable-{unique}",
                            headers=auth(api_keys), json=body, timeout=10)
    assert response.status_code == 422, response.text
    assert response.headers["Content-Type"].startswith("application/problem+json")
    assert set(response.json()["errors"]) == {problem}


def test_an_erasure_by_identifiers_alone_reaches_the_partners_that_received_them(
        export_api, workers, settings, db, api_keys, unique):
    workers()
    partner = FakePartner()
    segment, partner_id = f"seg-{unique}", f"erase-{unique}"
    ids = [f"{unique}-p1", f"{unique}-p2"]
    emails = {p: f"erase.{p}@example.com" for p in ids}  # normalised, as profiles hold them
    publish(settings, topics.PROFILE_CHANGES,
            [profile_changed(p, emails[p], segment) for p in ids])
    publish(settings, topics.CONSENT_CHANGES, [consent_changed(p, "granted") for p in ids])
    wait_for_read_model(db, ids, ids)
    put_contract(export_api, api_keys, partner_id, partner.url, segment=segment)
    started = requests.post(f"{export_api.url}/v1/exports/{partner_id}/runs",
                            headers=auth(api_keys), json={}, timeout=10)
    assert finished_run(export_api, api_keys, partner_id,
                        started.json()["run_id"])["status"] == "succeeded"

    # p1 is merged away (gone from the read model: found only in what the partner holds);
    # p2 is still in the read model
    publish(settings, topics.PROFILE_CHANGES, [new_envelope("Profile Changed", "system", payload={
        "kind": "merged_away", "cause_message_id": "m", "event_type": "Identify",
        "channel": "web", "profile": None, "merged_into": f"{unique}-survivor"},
    ).resolved_to(ids[0])])
    wait_until(lambda: db.export_profiles.find_one({"_id": ids[0]}) is None, 30,
               what="p1 merged away")
    # the request names no profile: only the identifiers the subject was known by
    request_id = f"req-{unique}"
    produce(settings, topics.PRIVACY_REQUESTS, [new_envelope(
        "Erasure Requested", "system", payload={
            "request_id": request_id, "kind": "erasure", "profile_ids": [],
            "identifiers": [{"type": "email", "value": emails[p].lower()} for p in ids],
            "requested_by": "test"})], key=lambda i, v: request_id)
    wait_until(lambda: len(partner.keys("deletion")) >= 2, 60, what="two deletion notices")

    notices = sorted((orjson.loads(body) for body in partner.bodies("deletion")),
                     key=lambda notice: notice["identifiers"]["pid"])
    assert [notice["reason"] for notice in notices] == ["erasure", "erasure"]
    assert [notice["identifiers"] for notice in notices] == [
        {"em": [hashlib.sha256(emails[p].lower().encode()).hexdigest()], "pid": [p]}
        for p in ids]

    def ack():
        acks = [m for m in read_all(settings, topics.PRIVACY_ACKS)
                if m["payload"].get("request_id") == request_id
                and m["payload"].get("service") == "export"]
        return acks[0] if acks else None

    erased = wait_until(ack, 30, interval=0.5, what="the export service's erasure ack")
    assert erased["payload"]["summary"]["deletion_notices_queued"] == 2
    assert erased["payload"]["summary"]["partners_notified"] == [partner_id]
    assert erased["payload"]["summary"]["read_model_profiles_deleted"] == 1  # p2
    assert db.export_profiles.find_one({"_id": ids[1]}) is None
    # the index erasures are found through names neither the erased profile nor any of the
    # subject's identifiers any more (p1's identifier entry, stale since the merge, included)
    named = [ids[1], *emails.values(),
             *(hashlib.sha256(email.encode()).hexdigest() for email in emails.values())]
    assert [doc["_id"] for doc in db.export_subject_index.find({})
            if any(value in str(doc) for value in named)] == []
    partner.close()
