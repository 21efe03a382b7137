"""The agent dashboard in real headless Chromium (Debian's package, driven by Playwright)
against identity and profile processes on the real broker and store.

An agent signs in with their key, finds a customer by the number written the local way, sees
the profile with the hetu masked and the cross-channel timeline; a tweet the customer sends
meanwhile appears on the open page (server-sent events, no reload) flagged as a complaint; and
a call to the agent's extension opens the caller's profile by itself (screen pop).

The test saves its screenshot under pytest's tmp dir; docs/images/dashboard.png is a copy of it.
`make install` installs Chromium (apt-get install chromium) when /usr/bin/chromium is missing.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import requests
from playwright.sync_api import Page, expect, sync_playwright

from services.common import topics
from services.common.bus import Outgoing, Producer
from services.common.envelope import new_envelope
from tests.support.hetus import valid_hetu
from tests.support.processes import ServiceApi, ServiceWorker, free_port, wait_until

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
WAIT_MS = 30_000


@pytest.fixture(scope="module")
def stack(test_env):
    # no consent service runs here: the card must say so rather than fail the page
    profile_env = {**test_env, "CDP_CONSENT_URL": f"http://127.0.0.1:{free_port()}"}
    processes = [ServiceApi("identity", test_env).start(),
                 ServiceApi("profile", profile_env).start(),
                 ServiceWorker("services.identity", test_env, name="identity-worker").start(),
                 ServiceWorker("services.profile", test_env, name="profile-worker").start()]
    yield {"identity": processes[0].url, "profile": processes[1].url}
    for process in processes:
        process.stop()


@pytest.fixture(scope="module")
def browser():
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: run `make install` (as root it installs Debian's "
                    "chromium package)")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1366, "height": 768}, locale="en-GB")
    page = context.new_page()
    yield page
    context.close()


def local_mobile(unique: str, salt: int) -> tuple[str, str]:
    """A mobile number of this test run, in international and local form."""
    digits = f"{(int(unique, 16) + salt) % 10**7:07d}"
    return f"+358 44 {digits}", f"044 {digits[:3]} {digits[3:]}"


def post(url: str, path: str, body: dict, key: str) -> None:
    response = requests.post(url + path, json=body, auth=(key, ""), timeout=10)
    assert response.status_code == 200, response.text


def test_agent_finds_a_caller_sees_a_tweet_arrive_live_and_gets_the_next_caller_popped(
        stack, page: Page, api_keys, settings, unique, tmp_path):
    collector = api_keys["collector"]
    phone, local_phone = local_mobile(unique, 0)
    loyalty, handle, hetu = f"L-{unique}", f"ak_{unique}", valid_hetu(unique)
    post(stack["identity"], "/v1/batch", {"batch": [
        {"type": "page", "anonymousId": f"c-{unique}", "name": "Running shoes",
         "messageId": f"v-{unique}", "properties": {"url": "https://shop.example.fi/shoes"}},
        {"type": "identify", "userId": loyalty, "anonymousId": f"c-{unique}",
         "messageId": f"i-{unique}",
         "traits": {"firstName": "Aino", "lastName": "Korhonen", "email": f"aino.{unique}@ex.fi",
                    "phone": phone, "twitter": f"@{handle}", "language": "fi",
                    "address": {"city": "Tampere", "postalCode": "33100"}}},
        {"type": "track", "userId": loyalty, "event": "Order Completed",
         "messageId": f"o-{unique}",
         "properties": {"order_id": "12345", "total": 89.9, "currency": "EUR"}},
    ]}, collector)
    producer = Producer(settings, "tests")
    verified = new_envelope("Customer Verified", "phone",
                            identifiers={"user_id": loyalty, "hetu": hetu})
    producer.send([Outgoing(topics.EVENTS_PHONE, f"user_id:{loyalty}", verified)])
    post(stack["identity"], "/v1/calls", {"call_id": f"a-{unique}", "event": "offered",
                                          "caller_number": local_phone, "queue": "orders"},
         collector)
    wait_until(lambda: _profile_has(stack, api_keys, phone, calls=1, hetu=True), 60,
               interval=0.5, what="the customer's profile complete")

    # keyboard only: the key field has focus, Enter signs in, focus moves to the search term
    # (the phone number is the default search)
    page.goto(stack["profile"] + "/dashboard")
    expect(page.get_by_label("API key")).to_be_focused()
    page.keyboard.type(api_keys["agent"])
    page.keyboard.press("Enter")
    expect(page.get_by_label("Search term")).to_be_focused(timeout=WAIT_MS)
    expect(page.get_by_label("Search by")).to_have_value("phone")
    page.keyboard.type(local_phone)
    page.keyboard.press("Enter")

    expect(page.get_by_role("heading", name="Aino Korhonen")).to_be_visible(timeout=WAIT_MS)
    card = page.locator("#profile")
    expect(card).to_contain_text(hetu[:6] + "*****")
    expect(card).not_to_contain_text(hetu)
    timeline = page.locator("#timeline")
    for entry in ("Call Started", "Order Completed", "Identify", "Page Viewed"):
        expect(timeline).to_contain_text(entry, timeout=WAIT_MS)
    expect(card).to_contain_text("Consents unavailable")
    expect(page.locator("#live-status")).to_have_text("Live updates on", timeout=WAIT_MS)

    page.evaluate("window.sameDocument = true")
    tweet = new_envelope("Social Message Received", "social",
                         identifiers={"twitter_handle": handle}, source="x",
                         payload={"text": "@brand my order 12345 never arrived",
                                  "complaint": True, "platform": "x"})
    producer.send([Outgoing(topics.EVENTS_SOCIAL, f"twitter_handle:{handle}", tweet)])
    arrived = timeline.locator("li.entry", has_text="my order 12345 never arrived")
    expect(arrived).to_be_visible(timeout=WAIT_MS)
    expect(arrived).to_contain_text("Complaint")
    expect(arrived).to_have_class(re.compile(r"\bfresh\b"))
    assert page.evaluate("window.sameDocument") is True, "the page was reloaded"
    page.screenshot(path=str(tmp_path / "dashboard.png"))

    other_phone, other_local = local_mobile(unique, 1)
    post(stack["identity"], "/v1/batch", {"batch": [
        {"type": "identify", "userId": f"E-{unique}", "messageId": f"e-{unique}",
         "traits": {"firstName": "Eero", "lastName": "Virtanen", "phone": other_phone}}]},
         collector)
    extension = str(int(unique, 16) % 9000 + 1000)
    page.get_by_label("Extension").fill(extension)
    page.get_by_role("button", name="Follow").click()
    expect(page.locator("#pop-status")).to_contain_text(extension)
    expect(page.locator("#live-status")).to_have_text("Live updates on", timeout=WAIT_MS)
    wait_until(lambda: _profile_has(stack, api_keys, other_phone), 60, interval=0.5,
               what="the next caller's profile")
    post(stack["identity"], "/v1/calls", {"call_id": f"b-{unique}", "event": "offered",
                                          "caller_number": other_local, "queue": "orders",
                                          "extension": extension}, collector)
    expect(page.get_by_role("heading", name="Eero Virtanen")).to_be_visible(timeout=WAIT_MS)
    expect(page.locator("#profile-name")).to_be_focused()
    assert page.evaluate("window.sameDocument") is True
    producer.close()

    # name search, where the profile API offers it (the page finds out by itself)
    page.get_by_label("Search by").select_option("name")
    page.get_by_label("Search term").fill("Aino Korh")
    page.get_by_label("Search term").press("Enter")
    page.get_by_role("button", name=re.compile("Aino Korhonen")).first.press("Enter")
    expect(page.get_by_role("heading", name="Aino Korhonen")).to_be_visible(timeout=WAIT_MS)

    page.get_by_role("button", name="Suomeksi").click()
    expect(page.get_by_role("heading", name="Aikajana")).to_be_visible()
    expect(page.locator("html")).to_have_attribute("lang", "fi")
    for entry in ("Puhelu alkoi", "Tilaus", "Tunnistautuminen", "Sivukäynti", "Someviesti",
                  "Jono: orders"):
        expect(timeline).to_contain_text(entry, timeout=WAIT_MS)


def _profile_has(stack, api_keys, phone: str, calls: int = 0, hetu: bool = False) -> bool:
    response = requests.get(f"{stack['profile']}/v1/profiles",
                            params={"type": "phone", "value": phone}, timeout=10,
                            headers={"X-API-Key": api_keys["agent"]})
    if response.status_code != 200:
        return False
    profile = response.json()
    return (profile["computed"].get("calls", 0) >= calls
            and (not hetu or bool(profile["identifiers"].get("hetu"))))
