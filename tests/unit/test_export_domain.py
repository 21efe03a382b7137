"""Export domain without I/O: contracts, consent gating, rendering, batches and keys,
signatures, delivery retries (through a fake requests session)."""

import gzip
import hashlib
import hmac
from pathlib import Path

import orjson
import pytest
import requests

from services.export import rendering
from services.export.contracts import (
    Destination,
    InvalidContract,
    from_document,
    parse_contract,
    public_view,
    to_document,
)
from services.export.delivery import Deliverer, Parcel, RetryPolicy
from services.export.rendering import ConsentState

SECRET = "s" * 32


def contract_data(**changes):
    data = {
        "name": "Ad platform", "required_purposes": ["marketing", "profiling"],
        "format": "jsonl",
        "destination": {"kind": "https", "url": "https://partner.example/in",
                        "signing_secret": SECRET},
        "fields": [
            {"name": "em", "source": "identifiers.email", "treatment": "sha256",
             "platform": "meta", "platform_field": "em"},
            {"name": "fn", "source": "traits.first_name", "treatment": "sha256",
             "platform": "meta", "platform_field": "fn"},
            {"name": "pid", "source": "profile_id", "treatment": "hmac"},
            {"name": "orders", "source": "computed.purchase_count"},
        ],
        "pseudonym_key": "k" * 20,
    }
    data.update(changes)
    return data


def snapshot(profile_id="p1", email="Matti@Example.com", **extra):
    return {"profile_id": profile_id, "identifiers": {"email": [email]},
            "traits": {"first_name": "Matti", "hetu": "010101-123N"},
            "computed": {"purchase_count": 3}, "segments": ["vip"], **extra}


ALLOWED = {"marketing": ConsentState(True, "granted"), "profiling": ConsentState(True, "granted")}


def test_a_valid_contract_round_trips_through_its_document():
    contract = parse_contract("ads", contract_data())
    assert from_document(to_document(contract)) == contract


def test_every_contract_problem_is_reported_at_once():
    with pytest.raises(InvalidContract) as error:
        parse_contract("Bad Id!", contract_data(
            required_purposes=[], format="xml", mode="sometimes",
            destination={"kind": "https", "url": "http://plain.example", "signing_secret": "x"},
            fields=[{"name": "em", "source": "identifiers.email", "treatment": "sha256",
                     "platform": "meta", "platform_field": "email"}]))
    assert set(error.value.problems) >= {
        "partner_id", "required_purposes", "format", "mode", "destination.url",
        "destination.signing_secret", "fields.0.platform_field"}


def test_hmac_fields_need_a_pseudonym_key():
    with pytest.raises(InvalidContract, match="pseudonym_key"):
        parse_contract("ads", contract_data(pseudonym_key=None))


def test_directory_destinations_stay_inside_the_export_root():
    for path in ("/etc", "../up", "a/../../b"):
        with pytest.raises(InvalidContract, match="destination.path"):
            parse_contract("ads", contract_data(destination={"kind": "directory", "path": path}))


@pytest.mark.parametrize("url", [
    "https://", "https://exa mple.com/in", "https://partner.example:99999/in",
    "https://partner.example:0/in", "https://[::1/h", "https://[not-an-ip]/in",
    "https://partner.example/in\n", "https://bad_host.example/in", "https://-x.example/",
    "https://user:password@partner.example/in", "https://pärtner.example/in",
    "ftp://partner.example/in", "partner.example/in", 42, "https://" + "a" * 2048])
def test_a_destination_url_the_http_client_cannot_use_is_refused(url):
    with pytest.raises(InvalidContract) as error:
        parse_contract("ads", contract_data(destination={
            "kind": "https", "url": url, "signing_secret": SECRET}))
    assert set(error.value.problems) == {"destination.url"}


@pytest.mark.parametrize("url", [
    "https://partner.example/in", "https://Partner.Example:8443/in?list=a#x",
    "https://10.0.0.7/in", "https://[2001:db8::1]:8443/in", "https://xn--prtner-fua.example./in"])
def test_host_names_ip_addresses_and_ports_are_accepted(url):
    assert parse_contract("ads", contract_data(destination={
        "kind": "https", "url": url, "signing_secret": SECRET})).destination.url == url


@pytest.mark.parametrize("authorization", [
    " Bearer abcdefgh", "Bearer abcdefgh ", "Bearer abc\ndefgh", "Bearer\tabcdefgh",
    "Bearer abcdefgh€", "short"])
def test_an_authorization_the_http_client_cannot_send_is_refused(authorization):
    with pytest.raises(InvalidContract) as error:
        parse_contract("ads", contract_data(destination={
            "kind": "https", "url": "https://partner.example/in", "signing_secret": SECRET,
            "authorization": authorization}))
    assert set(error.value.problems) == {"destination.authorization"}


@pytest.mark.parametrize("region", ["UK", "fi", "XX", "EU", "FIN", 358, None])
def test_a_phone_region_the_phone_library_does_not_know_is_refused(region):
    with pytest.raises(InvalidContract) as error:
        parse_contract("ads", contract_data(phone_region=region))
    assert "the United Kingdom is GB" in error.value.problems["phone_region"]


def test_a_known_phone_region_is_the_default_for_numbers_without_a_country_code():
    contract = parse_contract("ads", contract_data(phone_region="GB", fields=[
        {"name": "ph", "source": "identifiers.phone", "treatment": "sha256",
         "platform": "meta", "platform_field": "ph"}]))
    row = rendering.render_row(contract, {**snapshot(), "identifiers": {
        "phone": ["020 7946 0958"]}})
    assert row.values["ph"] == [hashlib.sha256(b"442079460958").hexdigest()]


def test_the_public_view_hides_secrets():
    view = public_view(parse_contract("ads", contract_data()))
    text = orjson.dumps(view).decode()
    assert SECRET not in text and "k" * 20 not in text
    assert view["destination"]["signing_secret_set"] is True
    assert view["pseudonym_key_set"] is True


def test_a_profile_is_excluded_unless_every_required_purpose_is_allowed():
    contract = parse_contract("ads", contract_data())
    assert rendering.exclusion_reason(contract, ALLOWED) is None
    assert rendering.exclusion_reason(contract, {"marketing": ALLOWED["marketing"]}) == \
        "consent:profiling:missing"
    withdrawn = {**ALLOWED, "marketing": ConsentState(False, "withdrawn")}
    assert rendering.exclusion_reason(contract, withdrawn) == "consent:marketing:withdrawn"
    assert rendering.exclusion_reason(contract, ALLOWED, restricted=True) == "restricted"


def test_rows_carry_only_allowed_fields_treated_as_the_contract_says():
    contract = parse_contract("ads", contract_data())
    row = rendering.render_row(contract, snapshot())
    assert set(row.values) == {"em", "fn", "pid", "orders"}  # hetu is not on the allow-list
    assert row.values["em"] == [hashlib.sha256(b"matti@example.com").hexdigest()]
    assert row.values["fn"] == hashlib.sha256(b"matti").hexdigest()
    assert row.values["pid"] == hmac.new(b"k" * 20, b"p1", hashlib.sha256).hexdigest()
    assert row.values["orders"] == 3
    assert row.identifiers(contract) == {"em": row.values["em"], "pid": [row.values["pid"]]}


def test_an_invalid_value_is_left_out_and_named():
    contract = parse_contract("ads", contract_data())
    row = rendering.render_row(contract, snapshot(email="not an email"))
    assert "em" not in row.values and row.invalid_fields == ["em"]


def test_a_batch_counts_what_it_left_out_and_why():
    contract = parse_contract("ads", contract_data(segment="vip"))
    snapshots = [snapshot("p1"), snapshot("p2"), snapshot("p3"),
                 {**snapshot("p4"), "segments": []}, snapshot("p5")]
    consents = {"p1": ALLOWED, "p2": {"marketing": ConsentState(False, "withdrawn")},
                "p5": ALLOWED}
    batch = rendering.build_batch(contract, 0, snapshots, consents, restricted=["p5"])
    assert [row.profile_id for row in batch.rows] == ["p1"]
    assert batch.considered == 4  # p4 is outside the segment: skipped, not considered
    assert batch.excluded == {"consent:marketing:withdrawn": 1,
                              "consent:marketing:missing": 1, "restricted": 1}
    assert batch.last_profile_id == "p5"


def test_csv_bodies_have_a_header_and_join_lists_and_gzip_is_deterministic():
    contract = parse_contract("ads", contract_data(format="csv", gzip=True))
    rows = [{"em": ["a", "b"], "fn": "x", "orders": 2}]
    body = rendering.encode_rows(contract, rows)
    assert body == rendering.encode_rows(contract, rows)  # no gzip timestamp
    assert gzip.decompress(body).decode() == "em,fn,pid,orders\na|b,x,,2\n"


def test_batch_idempotency_keys_depend_only_on_run_and_number():
    assert rendering.batch_idempotency_key("run-1", 7) == "run-1:batch:000007"
    assert rendering.batch_idempotency_key("run-1", 7) != rendering.batch_idempotency_key(
        "run-2", 7)


def test_signatures_are_hmac_sha256_of_the_body():
    body = b'{"em":["x"]}\n'
    signature = rendering.sign(SECRET, body)
    assert signature == "sha256=" + hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
    assert rendering.signature_valid(SECRET, body, signature)
    assert not rendering.signature_valid(SECRET, body + b" ", signature)


def test_the_bench_hook_renders_the_asked_number_of_profiles():
    assert rendering.render_snapshots(1200) > 1200 * 64


class FakeResponse:
    def __init__(self, status, headers=None):
        self.status_code = status
        self.headers = headers or {}
        self.text = "ok" if status < 300 else "no"


class ScriptedSession(requests.Session):
    """Answers each POST with the next scripted status, or raises the scripted exception."""

    def __init__(self, script):
        super().__init__()
        self.script = list(script)
        self.calls = []

    def post(self, url, data=None, headers=None, timeout=None, **_):
        self.calls.append(dict(headers))
        step = self.script.pop(0)
        if isinstance(step, Exception):
            raise step
        return FakeResponse(step)


def deliverer(script, attempts=4):
    session = ScriptedSession(script)
    sleeps = []
    return Deliverer(RetryPolicy(max_attempts=attempts, base_seconds=1.0),
                     Path("/nonexistent"), session=session, sleep=sleeps.append), session, sleeps


PARCEL = Parcel(body=b"row\n", idempotency_key="run:batch:000001", kind="batch",
                content_type="text/csv", file_name="x.csv")
DESTINATION = parse_contract("ads", contract_data()).destination


def test_timeouts_and_5xx_are_retried_with_the_same_key_and_signature():
    delivery, session, sleeps = deliverer([requests.Timeout("slow"), 503, 200])
    outcome = delivery.deliver(DESTINATION, PARCEL)
    assert outcome.ok and outcome.attempts == 3
    assert {call["Idempotency-Key"] for call in session.calls} == {"run:batch:000001"}
    assert len({call["X-Muisti-Signature"] for call in session.calls}) == 1
    assert len(sleeps) == 2 and sleeps[0] <= 1.0 and sleeps[1] <= 2.0  # jittered, doubling


def test_a_4xx_is_a_permanent_failure_without_retries():
    delivery, session, _ = deliverer([400])
    outcome = delivery.deliver(DESTINATION, PARCEL)
    assert not outcome.ok and outcome.permanent and len(session.calls) == 1


def test_retries_stop_after_the_last_attempt():
    delivery, session, _ = deliverer([500, 500, 500, 500])
    outcome = delivery.deliver(DESTINATION, PARCEL)
    assert not outcome.ok and not outcome.permanent and len(session.calls) == 4


@pytest.mark.parametrize(("destination", "at_fault"), [
    ({"url": "https://"}, "destination.url"),
    ({"url": "https://[::1/h"}, "destination.url"),
    ({"url": "https://partner.example:99999/in"}, "destination.url"),
    ({"authorization": " Bearer leaked-secret"}, "destination.authorization")])
def test_a_request_that_cannot_be_made_fails_for_good_without_raising(destination, at_fault):
    # as a contract stored before the checks above would hold it
    stored = Destination(**{"kind": "https", "url": "https://partner.example/in",
                            "signing_secret": SECRET, **destination})
    outcome = Deliverer(RetryPolicy(), Path("/nonexistent")).deliver(stored, PARCEL)
    assert not outcome.ok and outcome.permanent and outcome.attempts == 0
    assert at_fault in outcome.error and "leaked-secret" not in outcome.error


def test_a_429_retry_after_is_honoured_within_the_cap():
    assert RetryPolicy(base_seconds=0.1, cap_seconds=30).delay(1, retry_after=7) == 7
    assert RetryPolicy(base_seconds=0.1, cap_seconds=30).delay(1, retry_after=999) == 30


def test_directory_destinations_are_written_atomically(tmp_path):
    delivery = Deliverer(RetryPolicy(), tmp_path)
    destination = parse_contract("ads", contract_data(
        destination={"kind": "directory", "path": "ads/out"})).destination
    outcome = delivery.deliver(destination, PARCEL)
    assert outcome.ok
    written = tmp_path / "ads" / "out" / "x.csv"
    assert written.read_bytes() == b"row\n"
    assert [p.name for p in written.parent.iterdir()] == ["x.csv"]  # no temporary left
