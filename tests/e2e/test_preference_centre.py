"""The customer preference centre in real headless Chromium against identity, profile and
consent processes on the real broker and store.

A customer signs in with a code read from the outbox, sees their profile, switches analytics on
and off (the consent ledger and the profile service's purpose-bound reads follow), downloads
the access export, objects to direct marketing, and asks to be erased, confirms with a second
code and watches the erasure complete across the services. Every page is screenshotted in
Finnish, Swedish and English under pytest's tmp dir; docs/images/preferences-*.png are copies.
"""

from __future__ import annotations

import json
import re

import pytest
import requests
from playwright.sync_api import Page, expect

from services.consent.catalogue import load_catalogue
from tests.support.browser import chromium
from tests.support.preference_stack import add_customer, preference_stack, read_code
from tests.support.processes import wait_until

WAIT_MS = 30_000
LANGUAGES = {"fi": "Suomeksi", "sv": "På svenska", "en": "In English"}


@pytest.fixture(scope="module")
def stack(test_env, tmp_path_factory):
    with preference_stack(test_env, tmp_path_factory.mktemp("outbox")) as running:
        yield running


@pytest.fixture
def page():
    with chromium() as browser:
        context = browser.new_context(viewport={"width": 1280, "height": 900}, locale="en-GB",
                                      extra_http_headers={"Accept-Language": "en-GB,en"},
                                      accept_downloads=True)
        yield context.new_page()
        context.close()


def screenshots(page: Page, name: str, folder) -> None:
    """The page in each language (the switch), back in English afterwards."""
    for language, label in (*LANGUAGES.items(), ("en", "In English")):
        page.get_by_role("link", name=label).click()
        expect(page.locator("html")).to_have_attribute("lang", language)
        page.screenshot(path=str(folder / f"preferences-{name}-{language}.png"), full_page=True)


def dpo_get(stack, api_keys, path: str, **headers) -> requests.Response:
    return requests.get(stack["consent" if path.startswith("/v1/consents") else "profile"]
                        + path, timeout=10,
                        headers={"Authorization": f"Bearer {api_keys['dpo']}", **headers})


def test_customer_signs_in_decides_downloads_objects_and_is_erased(
        stack, page: Page, api_keys, unique, tmp_path):
    customer = add_customer(stack, api_keys, unique)
    profile_id = customer["profile_id"]
    analytics = load_catalogue().purposes["analytics"].texts["en"]["title"]

    page.goto(stack["consent"] + "/preferences")
    expect(page.get_by_role("heading", name="Sign in")).to_be_visible()
    screenshots(page, "sign-in", tmp_path)
    page.get_by_label("Email address or phone number").fill(customer["email"])
    page.get_by_role("button", name="Send code").click()
    expect(page.get_by_role("heading", name="Enter your code")).to_be_visible()
    screenshots(page, "code", tmp_path)
    page.get_by_label("One-time code").fill(read_code(stack["outbox"], customer["email"]))
    page.get_by_label("One-time code").press("Enter")

    held = page.locator("#held")
    expect(held).to_contain_text("Korhonen", timeout=WAIT_MS)
    expect(held).to_contain_text(customer["email"])
    expect(page.locator("#timeline")).to_contain_text("Order Completed")

    switch = page.get_by_role("switch", name=analytics)
    expect(switch).to_have_attribute("aria-checked", "false")
    switch.click()
    expect(page.get_by_role("switch", name=analytics)).to_have_attribute("aria-checked", "true")
    wait_until(lambda: "withheld" not in dpo_get(stack, api_keys, f"/v1/profiles/{profile_id}",
                                                 **{"X-Purpose": "analytics"}).json(),
               30, interval=0.3, what="the profile service sees analytics allowed")
    page.get_by_role("switch", name=analytics).click()
    expect(page.get_by_role("switch", name=analytics)).to_have_attribute("aria-checked", "false")
    expect(page.get_by_role("status")).to_contain_text("Receipt")
    history = dpo_get(stack, api_keys, f"/v1/consents/{profile_id}").json()["history"]
    assert [(e["purpose"], e["state"], e["source"]) for e in history[-2:]] == [
        ("analytics", "granted", "preference_centre"), ("analytics", "denied",
                                                        "preference_centre")]
    wait_until(lambda: "withheld" in dpo_get(stack, api_keys, f"/v1/profiles/{profile_id}",
                                             **{"X-Purpose": "analytics"}).json(),
               30, interval=0.3, what="the profile service sees analytics refused")

    page.get_by_role("button", name="Collect my data").click()
    download_link = page.get_by_role("link", name="Download the file")
    # the request's own page first: reloading while its POST still navigates detaches the page
    expect(page.get_by_text("Your data is being collected").or_(download_link)).to_be_visible()

    def export_ready() -> bool:
        page.reload()
        return download_link.count() == 1

    wait_until(export_ready, 60, interval=1, what="the access export collected")
    screenshots(page, "account", tmp_path)
    with page.expect_download() as download:
        download_link.click()
    export = json.loads(open(download.value.path()).read())
    assert profile_id in json.dumps(export)
    assert {"identity", "profile", "consent"} <= set(json.dumps(export).split('"')), export.keys()

    page.get_by_role("button", name="Object to all direct marketing").click()
    expect(page.get_by_role("status")).to_contain_text("objected to all direct marketing")
    for purpose in load_catalogue().direct_marketing:
        check = dpo_get(stack, api_keys, f"/v1/consents/{profile_id}/check?purpose={purpose}")
        assert check.json()["allowed"] is False, purpose

    page.get_by_role("button", name="Ask to be erased").click()
    expect(page.get_by_role("heading", name="Confirm erasure")).to_be_visible()
    screenshots(page, "erasure", tmp_path)
    page.locator("#erase-code").fill(read_code(stack["outbox"], customer["email"]))
    page.get_by_role("button", name="Confirm erasure").click()
    status = page.locator("#erasure-status")
    expect(status).to_contain_text("Erasure request")

    def erased() -> bool:
        page.reload()
        return bool(re.search(r": completed$", status.inner_text().strip()))

    wait_until(erased, 90, interval=1, what="the erasure completed across the services")
    # the page read the profile before the erasure's status: the completion may fall between
    page.reload()
    expect(held).to_contain_text("We hold no profile about you.")
    screenshots(page, "erased", tmp_path)
    assert dpo_get(stack, api_keys, f"/v1/profiles/{profile_id}").status_code == 404
