"""The customer story of DESIGN.md end to end, every service a separate process on the real
broker and store: a customer registers on the web, buys in a store, tweets a complaint and
phones the contact centre; the agent sees one profile; exports follow the consents; an
objection stops all direct marketing; an erasure leaves no trace in any collection and keeps
the customer's handle from coming back.

The steps build on each other and run in the order written, sharing one ``Customer``."""

from __future__ import annotations

import json
import random
import secrets
import string
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import orjson
import pytest
import requests
from kafka import KafkaConsumer, TopicPartition
from kafka.partitioner.default import murmur2

from services.common import topics
from services.common.bus import ensure_topics
from services.export import hashing
from services.export.rendering import signature_valid
from services.profile.profile_store import unpack
from services.social import signatures
from tests.support.kafka import read_all
from tests.support.processes import ServiceApi, ServiceWorker, free_port, wait_until

FIXTURES = Path(__file__).parents[1] / "fixtures" / "social"
X_SECRET = "x-secret-" + secrets.token_hex(16)
META_SECRET = "meta-secret-" + secrets.token_hex(16)
SIGNING_SECRET = "partner-signing-secret-" + secrets.token_hex(8)
# a TC string of IAB Tech Lab's test vectors (tests/unit/test_tcf.py): the web CMP's proof
TC_STRING = "COtybn4PA_zT4KjACBENAPCIAEBAAECAAIAAAAAAAAAA"
ANSWERING = ["consent", "export", "identity", "profile", "social"]
PATIENCE = 90  # seconds: ten processes share two cores


def _letters(count: int) -> str:
    return "".join(random.choices(string.ascii_lowercase, k=count))


def _hetu() -> str:
    """A valid, fresh Finnish personal identity code (20th century, odd: male)."""
    birth = f"{random.randint(1, 28):02d}{random.randint(1, 12):02d}{random.randint(50, 99):02d}"
    individual = f"{random.randrange(3, 899, 2):03d}"
    check = "0123456789ABCDEFHJKLMNPRSTUVWXY"[int(birth + individual) % 31]
    return f"{birth}-{individual}{check}"


@dataclass
class Customer:
    """Everything the story says about the customer, fresh for each run."""

    token: str = field(default_factory=lambda: secrets.token_hex(5))
    first_name: str = field(default_factory=lambda: "Aino" + _letters(6))
    last_name: str = field(default_factory=lambda: "Korhonen" + _letters(6))
    digits: str = field(default_factory=lambda: f"{random.randrange(10**6, 10**7)}")
    hetu: str = field(default_factory=_hetu)
    handle: str = field(default_factory=lambda: "Aino_" + secrets.token_hex(4))
    twitter_id: str = field(default_factory=lambda: str(random.randrange(10**15, 10**16)))
    cookie: str = field(default_factory=lambda: "anon-" + secrets.token_hex(8))
    profile_id: str | None = None  # as the identity service resolves the registration
    complaint_text: str = "@MuistiBrand tilaukseni ei ole vieläkään saapunut, todella huonoa " \
                          "palvelua!"
    partners: dict[str, str] = field(default_factory=dict)  # required purpose → partner id

    @property
    def email(self) -> str:  # mixed case on purpose: hashing normalises it
        return f"{self.first_name.capitalize()}.{self.token}@Esimerkki.fi"

    @property
    def loyalty(self) -> str:
        return f"LOY{self.token.upper()}"

    @property
    def phone_given(self) -> str:  # as typed into the registration form
        return f"+358 40 {self.digits[:3]} {self.digits[3:]}"

    @property
    def phone_local(self) -> str:  # as the caller-id shows it
        return f"040 {self.digits[:3]} {self.digits[3:]}"

    @property
    def phone_e164(self) -> str:
        return f"+35840{self.digits}"

    @property
    def campaign(self) -> str:
        return f"spring-signup-{self.token}"

    @property
    def segment(self) -> str:
        return f"story-{self.token}"

    def traces(self) -> list[str]:
        """The raw personal data an erasure must leave nowhere."""
        return [self.email.lower(), self.phone_e164, f"40{self.digits}", self.phone_given,
                self.loyalty.lower(), self.handle.lower(), self.twitter_id, self.cookie,
                self.first_name.lower(), self.last_name.lower(), self.hetu.lower()]


class Partner:
    """A partner's receiving end (one HTTP server, a path per partner): records every signed
    batch and deletion notice, applies each idempotency key once."""

    def __init__(self):
        self.received: list[dict] = []
        self._lock = threading.Lock()
        partner = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                valid = signature_valid(SIGNING_SECRET, body,
                                        self.headers.get("X-Muisti-Signature"))
                with partner._lock:
                    if valid and not any(r["key"] == self.headers.get("Idempotency-Key")
                                         for r in partner.received):
                        partner.received.append({
                            "path": self.path, "kind": self.headers.get("X-Muisti-Kind"),
                            "key": self.headers.get("Idempotency-Key"), "body": body})
                self.send_response(200 if valid else 401)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(b'{"received": true}')

        self.server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def of(self, partner_id: str, kind: str) -> list[dict]:
        with self._lock:
            return [r for r in self.received
                    if r["path"] == f"/{partner_id}" and r["kind"] == kind]

    def rows(self, partner_id: str) -> list[dict]:
        return [orjson.loads(line) for r in self.of(partner_id, "batch")
                for line in r["body"].splitlines() if line.strip()]

    def notices(self, partner_id: str) -> list[dict]:
        return [orjson.loads(r["body"]) for r in self.of(partner_id, "deletion")]

    def close(self):
        self.server.shutdown()


@pytest.fixture(scope="module")
def customer() -> Customer:
    return Customer()


@pytest.fixture(scope="module")
def partner():
    receiver = Partner()
    yield receiver
    receiver.close()


@pytest.fixture(scope="module")
def stack(test_env, settings, tmp_path_factory):
    """Identity first (consent expands subjects through it), then consent (profile and
    social ask it), then the rest and the five workers."""
    ensure_topics(settings)
    env = {**test_env, "CDP_SOCIAL_X_CONSUMER_SECRET": X_SECRET,
           "CDP_SOCIAL_META_APP_SECRET": META_SECRET, "CDP_EXPORT_ALLOW_HTTP": "true",
           "CDP_EXPORT_RETRY_BASE_SECONDS": "0.1", "CDP_EXPORT_LEASE_SECONDS": "5",
           "CDP_EXPORT_DIRECTORY_ROOT": str(tmp_path_factory.mktemp("story-exports"))}
    started: list = []
    try:
        identity = ServiceApi("identity", env).start()
        started.append(identity)
        env["CDP_IDENTITY_URL"] = identity.url
        consent = ServiceApi("consent", env).start()
        started.append(consent)
        env["CDP_CONSENT_URL"] = consent.url
        others = [ServiceApi(name, env) for name in ("profile", "social", "export")]
        started.extend(others)
        with ThreadPoolExecutor(len(others)) as pool:
            list(pool.map(lambda api: api.start(), others))
        for service in ("identity", "profile", "consent", "social", "export"):
            started.append(ServiceWorker(f"services.{service}", env,
                                         name=f"{service}-worker").start())
        yield {api.name.removesuffix("-api"): api.url for api in (identity, consent, *others)}
    finally:
        for process in reversed(started):
            process.stop()


def bearer(api_keys, role: str, **extra) -> dict:
    return {"Authorization": f"Bearer {api_keys[role]}", **extra}


def post_segment(stack, api_keys, kind: str, message: dict) -> None:
    response = requests.post(f"{stack['identity']}/v1/{kind}", json=message, timeout=10,
                             auth=(api_keys["collector"], ""))
    assert response.status_code == 200, response.text
    assert response.json()["accepted"] == 1


def tweet(stack, customer_handle: str, author_id: str, text: str) -> tuple[requests.Response,
                                                                              str]:
    """Deliver a mention from X's Account Activity API, signed as X signs it; returns the
    answer and the message id the social service gives the tweet."""
    delivery = json.loads((FIXTURES / "x_tweet_mention.json").read_text())
    status = delivery["tweet_create_events"][0]
    tweet_id = str(random.randrange(10**18, 10**19))
    now = datetime.now(UTC)
    status.update(id=int(tweet_id), id_str=tweet_id, text=text, lang="fi",
                  created_at=now.strftime("%a %b %d %H:%M:%S +0000 %Y"),
                  timestamp_ms=str(int(now.timestamp() * 1000)))
    status["user"].update(id=int(author_id), id_str=author_id, screen_name=customer_handle,
                          name="Asiakas")
    status["entities"]["urls"] = []
    body = json.dumps(delivery).encode()
    response = requests.post(f"{stack['social']}/v1/social/x/webhook", data=body, timeout=10,
                             headers={"Content-Type": "application/json",
                                      "x-twitter-webhooks-signature":
                                          signatures.x_signature(X_SECRET, body)})
    return response, f"social:x:{tweet_id}"


def lookup(stack, api_keys, role: str, type_: str, value: str) -> requests.Response:
    return requests.get(f"{stack['profile']}/v1/profiles", timeout=10,
                        params={"type": type_, "value": value},
                        headers=bearer(api_keys, role, **{"X-Purpose": "customer_service"}))


def check(stack, api_keys, profile_id: str, purpose: str) -> dict:
    response = requests.get(f"{stack['consent']}/v1/consents/{profile_id}/check",
                            params={"purpose": purpose}, headers=bearer(api_keys, "collector"),
                            timeout=10)
    assert response.status_code == 200, response.text
    return response.json()


# --- 1. registration on the web ------------------------------------------------------------

def test_web_registration_joins_the_browsing_cookie_and_records_the_cmp_consents(
        stack, api_keys, customer):
    response = requests.post(f"{stack['profile']}/v1/segments", timeout=10,
                             headers=bearer(api_keys, "supervisor"),
                             json={"id": customer.segment, "name": "Spring sign-ups",
                                   "rule": {"field": "traits.signup_campaign", "op": "eq",
                                            "value": customer.campaign}})
    assert response.status_code == 201, response.text

    for number, page in enumerate(("kengat", "kengat/juoksukengat-x1")):
        post_segment(stack, api_keys, "page", {
            "anonymousId": customer.cookie, "name": page,
            "messageId": f"view{number}-{customer.token}",
            "properties": {"url": f"https://kauppa.example.fi/{page}"}})
    post_segment(stack, api_keys, "identify", {
        "userId": customer.loyalty, "anonymousId": customer.cookie,
        "messageId": f"register-{customer.token}",
        "traits": {"email": customer.email, "phone": customer.phone_given,
                   "firstName": customer.first_name, "lastName": customer.last_name,
                   "twitter": f"@{customer.handle}", "hetu": customer.hetu,
                   "signup_campaign": customer.campaign}})

    def resolved(type_: str, value: str):
        answer = requests.get(f"{stack['identity']}/v1/identity/resolve", timeout=10,
                              params={"type": type_, "value": value},
                              headers=bearer(api_keys, "agent"))
        return answer.json()["profile_id"] if answer.status_code == 200 else None

    customer.profile_id = wait_until(lambda: resolved("user_id", customer.loyalty), PATIENCE,
                                     interval=0.5, what="the registration in the graph")
    assert resolved("anonymous_id", customer.cookie) == customer.profile_id

    for purpose in ("marketing_email", "profiling"):
        decision = requests.post(f"{stack['consent']}/v1/consents", timeout=10,
                                 headers=bearer(api_keys, "collector"), json={
                                     "profile_id": customer.profile_id, "purpose": purpose,
                                     "state": "granted", "source": "web-cmp", "channel": "web",
                                     "decision_id": f"{purpose}-{customer.token}",
                                     "proof": {"tc_string": TC_STRING, "ip": "192.0.2.44",
                                               "user_agent": "Mozilla/5.0 (story)"}})
        assert decision.status_code == 201, decision.text
        assert decision.json()["receipts"]
        assert check(stack, api_keys, customer.profile_id, purpose)["allowed"] is True


# --- 2. a purchase in a store --------------------------------------------------------------

def test_store_purchase_is_accepted_with_the_loyalty_number(stack, api_keys, customer):
    post_segment(stack, api_keys, "track", {
        "userId": customer.loyalty, "event": "Order Completed",
        "messageId": f"order-{customer.token}",
        "context": {"location": {"city": "Tampere"}},
        "properties": {"order_id": f"T{customer.token}", "total": 129.8, "currency": "EUR",
                       "store": "Tampere Koskikeskus",
                       "products": [{"product_id": "x1", "sku": "RUN-X1-42",
                                     "name": "Juoksukenkä X1", "category": "kengat",
                                     "price": 119.9, "quantity": 1},
                                    {"product_id": "s2", "sku": "SOCK-2", "name": "Sukat",
                                     "category": "asusteet", "price": 9.9, "quantity": 1}]}})


# --- 3. a complaint on X -------------------------------------------------------------------

def test_complaint_tweet_from_the_linked_handle_is_taken_in_by_the_x_webhook(
        stack, customer):
    response, _ = tweet(stack, customer.handle, customer.twitter_id, customer.complaint_text)
    assert response.status_code == 200, response.text
    assert response.json()["produced"] == 1


# --- 4. a call from the mobile -------------------------------------------------------------

def test_call_from_the_mobile_written_the_local_way_is_accepted(stack, api_keys, customer):
    response = requests.post(f"{stack['identity']}/v1/calls", timeout=10,
                             auth=(api_keys["collector"], ""),
                             json={"call_id": f"call-{customer.token}", "event": "offered",
                                   "caller_number": customer.phone_local, "queue": "orders"})
    assert response.status_code == 200, response.text


# --- 5. the agent's screen -----------------------------------------------------------------

def test_agent_lookup_by_the_callers_number_shows_one_masked_profile_of_every_channel(
        stack, api_keys, customer):
    local_number = customer.phone_local.replace(" ", "")

    last_seen = {}

    def whole_story():
        response = lookup(stack, api_keys, "agent", "phone", local_number)
        last_seen.update(status=response.status_code, body=response.json())
        if response.status_code != 200:
            return None
        computed = last_seen["body"]["computed"]
        return last_seen["body"] if (computed.get("calls") == 1 and computed.get(
            "purchase_count") == 1 and computed.get("open_complaints") == 1) else None

    try:
        profile = wait_until(whole_story, PATIENCE, interval=0.5,
                             what="the whole story in one profile")
    except AssertionError as timeout:
        raise AssertionError(f"{timeout}; last lookup: {last_seen}") from None
    assert profile["profile_id"] == customer.profile_id
    assert profile["identifiers"]["user_id"] == [customer.loyalty]
    assert profile["identifiers"]["email"] == [customer.email.lower()]
    assert profile["identifiers"]["phone"] == [customer.phone_e164]
    assert profile["identifiers"]["twitter_handle"] == [customer.handle.lower()]
    assert profile["traits"]["first_name"]["value"] == customer.first_name

    kinds = [entry["type"] for entry in profile["timeline"]]
    assert kinds.count("Page Viewed") == 2, kinds
    assert {"Identify", "Order Completed", "Call Started"} <= set(kinds), kinds
    assert {entry["channel"] for entry in profile["timeline"]} == {"web", "social", "phone"}

    computed = profile["computed"]
    assert computed["purchase_total"] == 129.8
    [complaint] = computed["complaints"]
    assert (complaint["channel"], complaint["text"]) == ("social", customer.complaint_text)
    assert computed["rfm_score"] and computed["rfm_recency"] == 5
    assert computed["rfm_segment"] != "prospect"

    # the hetu the customer gave is masked for the agent, whole for a supervisor
    assert profile["traits"]["hetu"]["value"] == customer.hetu[:6] + "*****"
    assert customer.hetu not in json.dumps(profile)
    supervisor = lookup(stack, api_keys, "supervisor", "phone", local_number).json()
    assert supervisor["traits"]["hetu"]["value"] == customer.hetu

    consents = requests.get(f"{stack['consent']}/v1/consents/{customer.profile_id}",
                            headers=bearer(api_keys, "agent"), timeout=10)
    assert consents.status_code == 200, consents.text
    states = {c["purpose"]: c for c in consents.json()["consents"]}
    assert states["marketing_email"]["allowed"] and states["profiling"]["allowed"]
    assert states["partner_sharing"]["allowed"] is False
    history = consents.json()["history"]
    assert {e["purpose"] for e in history} == {"marketing_email", "profiling"}
    assert all(e["proof"]["tcf"]["cmp_id"] and e["proof_sealed"] for e in history)


# --- 6. exports follow the consents --------------------------------------------------------

def put_partner(stack, api_keys, partner, partner_id: str, purpose: str, segment: str) -> None:
    response = requests.put(
        f"{stack['export']}/v1/partners/{partner_id}", headers=bearer(api_keys, "admin"),
        timeout=10, json={
            "name": f"Partner needing {purpose}", "required_purposes": [purpose],
            "format": "jsonl", "segment": segment,
            "pseudonym_key": "pseudonym-key-" + secrets.token_hex(8),
            "destination": {"kind": "https", "url": f"{partner.url}/{partner_id}",
                            "signing_secret": SIGNING_SECRET},
            "fields": [{"name": "em", "source": "identifiers.email", "treatment": "sha256",
                        "platform": "meta", "platform_field": "em"},
                       {"name": "ph", "source": "identifiers.phone", "treatment": "sha256",
                        "platform": "meta", "platform_field": "ph"},
                       {"name": "pid", "source": "profile_id", "treatment": "hmac"}]})
    assert response.status_code == 200, response.text


def run_export(stack, api_keys, partner_id: str) -> dict:
    started = requests.post(f"{stack['export']}/v1/exports/{partner_id}/runs", json={},
                            headers=bearer(api_keys, "dpo"), timeout=10)
    assert started.status_code == 202, started.text
    url = f"{stack['export']}/v1/exports/{partner_id}/runs/{started.json()['run_id']}"

    def finished():
        run = requests.get(url, headers=bearer(api_keys, "dpo"), timeout=10).json()
        return run if run["status"] in ("succeeded", "failed") else None

    return wait_until(finished, PATIENCE, interval=0.5, what=f"the {partner_id} run")


def test_exports_leave_out_the_customer_without_consent_and_hash_them_for_the_consented(
        stack, api_keys, db, partner, customer):
    profile_id = customer.profile_id
    wait_until(lambda: db.export_profiles.find_one(
        {"_id": profile_id, "segments": customer.segment}), PATIENCE, interval=0.5,
        what="the profile in the export read model")
    wait_until(lambda: db.export_consents.count_documents(
        {"profile_id": profile_id, "allowed": True}) == 2, PATIENCE, interval=0.5,
        what="both grants in the export read model")
    customer.partners.update({purpose: f"{purpose.replace('_', '-')}-{customer.token}"
                              for purpose in ("partner_sharing", "marketing_email",
                                              "profiling")})
    for purpose, partner_id in customer.partners.items():
        put_partner(stack, api_keys, partner, partner_id, purpose, customer.segment)

    sharing = run_export(stack, api_keys, customer.partners["partner_sharing"])
    assert sharing["status"] == "succeeded", sharing
    assert sharing["progress"]["considered"] == 1
    assert sharing["progress"]["exported"] == 0
    assert sharing["progress"]["excluded"] == {"consent:partner_sharing:missing": 1}
    assert partner.of(customer.partners["partner_sharing"], "batch") == []

    expected = {"em": [hashing.normalise_and_hash("meta", "em", customer.email)[1]],
                "ph": [hashing.normalise_and_hash("meta", "ph", customer.phone_e164)[1]]}
    assert expected["em"][0] == hashing.sha256_hex(customer.email.lower())
    assert expected["ph"][0] == hashing.sha256_hex(customer.phone_e164.removeprefix("+"))
    for purpose in ("marketing_email", "profiling"):
        partner_id = customer.partners[purpose]
        run = run_export(stack, api_keys, partner_id)
        assert run["status"] == "succeeded", run
        assert run["progress"]["exported"] == 1 and run["progress"]["excluded"] == {}
        [row] = partner.rows(partner_id)
        assert {k: row[k] for k in ("em", "ph")} == expected
        assert set(row) == {"em", "ph", "pid"} and profile_id not in json.dumps(row)


# --- 7. objection to direct marketing ------------------------------------------------------

def test_objection_denies_every_direct_marketing_purpose_at_once(stack, api_keys, partner,
                                                                 customer):
    catalogue = requests.get(f"{stack['consent']}/v1/purposes", timeout=10,
                             headers=bearer(api_keys, "agent")).json()
    marketing = [p["name"] for p in catalogue["purposes"] if p["direct_marketing"]]
    assert {"marketing_email", "marketing_sms", "marketing_phone", "marketing_post"} <= set(
        marketing)

    objection = requests.post(f"{stack['consent']}/v1/objections", timeout=10,
                              headers=bearer(api_keys, "agent"), json={
                                  "profile_id": customer.profile_id, "channel": "phone",
                                  "source": "contact-centre"})
    assert objection.status_code == 201, objection.text
    answers = {p: check(stack, api_keys, customer.profile_id, p) for p in marketing}
    assert all(a["allowed"] is False and a["state"] == "denied" for a in answers.values()), \
        answers
    assert check(stack, api_keys, customer.profile_id, "profiling")["allowed"] is True

    # the partner holding the customer's email for marketing is told to delete it
    mail = customer.partners["marketing_email"]
    [notice] = wait_until(lambda: partner.notices(mail), PATIENCE, interval=0.5,
                          what="the marketing partner's deletion notice")
    assert notice["reason"] == "consent:marketing_email:denied"
    assert notice["identifiers"]["em"] == [hashing.sha256_hex(customer.email.lower())]


# --- 8. erasure ----------------------------------------------------------------------------

def test_erasure_is_acknowledged_by_every_service_and_leaves_no_trace(
        stack, api_keys, db, partner, customer):
    before = traces_in(db, customer.traces())
    assert {"profiles", "identity_links"} <= {place.split("/")[0] for place in before}, before

    filed = requests.post(f"{stack['consent']}/v1/privacy/requests", timeout=30,
                          headers=bearer(api_keys, "dpo"), json={
                              "kind": "erasure", "subject": {"profile_id": customer.profile_id},
                              "reason": "the customer asked on the phone"})
    assert filed.status_code == 202, filed.text
    url = f"{stack['consent']}/v1/privacy/requests/{filed.json()['request_id']}"

    def forgotten():
        status = requests.get(url, headers=bearer(api_keys, "dpo"), timeout=10).json()
        return status if status["state"] == "completed" and status["proof"].get(
            "personal_data_forgotten") else None

    status = wait_until(forgotten, PATIENCE, interval=0.5, what="the erasure to complete")
    assert sorted(a["service"] for a in status["acknowledged"]) == ANSWERING
    assert all(a["status"] == "done" for a in status["acknowledged"]), status["acknowledged"]
    assert status["missing"] == []

    left = traces_in(db, customer.traces())
    assert not left, "personal data left after the erasure:\n" + "\n".join(left)

    # the partner still holding the customer's data got an erasure notice
    insights = customer.partners["profiling"]
    [notice] = wait_until(lambda: partner.notices(insights), PATIENCE, interval=0.5,
                          what="the erasure notice to the profiling partner")
    assert notice["reason"] == "erasure"
    assert notice["identifiers"]["em"] == [hashing.sha256_hex(customer.email.lower())]
    assert lookup(stack, api_keys, "agent", "phone", customer.phone_e164).status_code == 404


def traces_in(db, traces: list[str]) -> list[str]:
    """``collection/_id: [traces]`` for every document of every collection that holds one of
    ``traces`` anywhere (the document serialised as JSON, case ignored; a profile unpacked
    from its stored form)."""
    found = []
    for name in sorted(db.list_collection_names()):
        for doc in db[name].find({}):
            text = json.dumps(unpack(doc), default=str, ensure_ascii=False).lower()
            hits = [trace for trace in traces if trace in text]
            if hits:
                found.append(f"{name}/{doc.get('_id')}: {hits}")
    return found


def test_a_new_tweet_from_the_erased_handle_never_reaches_a_profile(stack, settings, customer):
    suppressed_response, suppressed_id = tweet(
        stack, customer.handle, customer.twitter_id,
        "@MuistiBrand vieläkään ei kuulu mitään, surkeaa!")
    assert suppressed_response.status_code == 200, suppressed_response.text

    # a control tweet keyed to the same partition: once it is resolved, the identity worker
    # has passed the suppressed one
    partitions = _partitions(settings, topics.EVENTS_SOCIAL)
    wanted = _partition(f"twitter_id:{customer.twitter_id}", partitions)
    control_id = next(candidate for candidate in (str(random.randrange(10**15, 10**16))
                                                  for _ in range(10_000))
                      if _partition(f"twitter_id:{candidate}", partitions) == wanted)
    control_response, control_message = tweet(stack, "Ctl_" + secrets.token_hex(4), control_id,
                                              "@MuistiBrand paketti on hukassa, huono homma")
    assert control_response.status_code == 200, control_response.text

    def resolved_ids():
        ids = {m["message_id"] for m in read_all(settings, topics.EVENTS_RESOLVED, idle_ms=300)}
        return ids if control_message in ids else None

    resolved = wait_until(resolved_ids, PATIENCE, interval=1, what="the control tweet resolved")
    assert suppressed_id not in resolved
    # both went to the social topic in that order on one partition, so the identity worker
    # read the suppressed tweet before the control one and dropped it
    assert _message_ids(settings, topics.EVENTS_SOCIAL, wanted)[-2:] == [suppressed_id,
                                                                         control_message]


def _partitions(settings, topic: str) -> int:
    consumer = KafkaConsumer(bootstrap_servers=settings.kafka_bootstrap.split(","))
    try:
        return len(consumer.partitions_for_topic(topic))
    finally:
        consumer.close()


def _message_ids(settings, topic: str, partition: int) -> list[str]:
    """The message ids on one partition of ``topic``, in order."""
    consumer = KafkaConsumer(bootstrap_servers=settings.kafka_bootstrap.split(","),
                             enable_auto_commit=False)
    try:
        where = TopicPartition(topic, partition)
        consumer.assign([where])
        consumer.seek_to_beginning(where)
        end = consumer.end_offsets([where])[where]
        ids: list[str] = []
        deadline = time.monotonic() + PATIENCE
        while consumer.position(where) < end and time.monotonic() < deadline:
            for records in consumer.poll(timeout_ms=500).values():
                # the fault tests' malformed messages share these topics: skip them
                ids.extend(message["message_id"] for message in map(_json_object, records)
                           if "message_id" in message)
        return ids
    finally:
        consumer.close()


def _json_object(record) -> dict:
    try:
        message = orjson.loads(record.value)
    except orjson.JSONDecodeError:
        return {}
    return message if isinstance(message, dict) else {}


def _partition(key: str, partitions: int) -> int:
    """kafka-python's default partitioner (the one services.common.bus.Producer uses)."""
    return (murmur2(key.encode()) & 0x7FFFFFFF) % partitions
