"""The choices a person makes and the records they can read: the cookie
preferences panel (asked before sign-in, remembered in the browser, then
stored with the account's consents), consents and refused regions, "where my
data went" after a job went to a vendor, and the Account page's API keys
(shown once, revoked) and sessions."""

from __future__ import annotations

import pyotp
import pytest

from tests.e2e.console.conftest import PHONE, eventually
from tests.e2e.stack import PASSWORD, refused_within, verified_login

pytestmark = pytest.mark.e2e


def consents(stack, token) -> dict:
    response = stack.call("GET", "/v1/privacy/consents", token=token)
    assert response.status_code == 200, response.text
    return response.json()


def test_cookie_choice_before_sign_in_consents_and_disclosures(stack, open_console):
    address, _, token = verified_login(stack)
    assert consents(stack, token)["analytics"] is False
    # a job that goes to a vendor (the fake OpenAI-compatible one, region us)
    job = stack.call("POST", "/v1/generations", token=token,
                     json={"type": "text-to-image", "prompt": "a lighthouse"}).json()
    eventually(lambda: stack.call("GET", f"/v1/generations/{job['id']}", token=token)
               .json()["status"] == "succeeded", 120, "the job")

    console = open_console(viewport=PHONE, cookies_decided=False)
    page = console.page
    console.goto("/")
    panel = page.get_by_role("dialog", name="Cookie preferences")
    panel.wait_for()
    assert panel.get_by_label("Necessary", exact=False).is_disabled()
    panel.get_by_label("Analytics", exact=False).check()
    console.visit("cookie-panel-phone")
    panel.get_by_role("button", name="Save my choices").click()
    assert panel.count() == 0
    stored = page.evaluate("JSON.parse(localStorage.getItem('darkroom.cookie-preferences'))")
    assert stored == {"preferences": False, "analytics": True}
    # the choice made before sign-in becomes the account's
    console.sign_in(address, PASSWORD)
    eventually(lambda: consents(stack, token)["analytics"] is True, 30, "analytics consent stored")
    assert consents(stack, token)["preferences"] is False
    # the panel, reopened from the footer, changes both categories with the account
    page.get_by_role("button", name="Cookie preferences").click()
    reopened = page.get_by_role("dialog", name="Cookie preferences")
    reopened.get_by_label("Preferences", exact=False).check()
    reopened.get_by_role("button", name="Save my choices").click()
    eventually(lambda: consents(stack, token)["preferences"] is True, 30, "preferences stored")
    page.get_by_role("button", name="Cookie preferences").click()
    page.get_by_role("dialog", name="Cookie preferences").get_by_role("button", name="Necessary only").click()
    eventually(lambda: (consents(stack, token)["analytics"], consents(stack, token)["preferences"])
               == (False, False), 30, "analytics and preferences withdrawn")
    stack.call("PUT", "/v1/privacy/consents", token=token, json={"preferences": True})

    # another browser that never answered the panel: signing in adopts the
    # account's stored choice, and the panel is not asked again
    fresh = open_console(cookies_decided=False)
    fresh.goto("/")
    fresh.page.get_by_role("dialog", name="Cookie preferences").wait_for()
    fresh.sign_in(address, PASSWORD)
    eventually(lambda: fresh.page.get_by_role("dialog", name="Cookie preferences").count() == 0,
               30, "the panel answered by the account's choice")
    assert fresh.page.evaluate(
        "JSON.parse(localStorage.getItem('darkroom.cookie-preferences'))") == {
        "preferences": True, "analytics": False}

    desktop = open_console()
    desktop.sign_in(address, PASSWORD)
    desk = desktop.page
    desk.get_by_role("navigation", name="Main").get_by_role("link", name="Privacy").click()
    desktop.heading("Privacy center")
    desk.get_by_label("News and offers by email").check()
    eventually(lambda: consents(stack, token)["marketing_email"] is True, 30, "marketing consent")
    desk.get_by_label("Regions where my data must not be processed").fill("cn, ZZ!")
    desk.get_by_role("button", name="Save regions").click()
    assert "invalid_request" in desk.get_by_role("alert").first.inner_text()
    desk.get_by_label("Regions where my data must not be processed").fill("cn, us")
    desk.get_by_role("button", name="Save regions").click()
    eventually(lambda: consents(stack, token)["refused_regions"] == ["cn", "us"], 30, "refused regions")
    disclosure = desk.get_by_test_id("disclosure").first
    disclosure.wait_for()
    assert "openai" in disclosure.inner_text() and "prompt" in disclosure.inner_text()
    desktop.visit("privacy-choices")


def test_account_api_keys_shown_once_revoked_and_sessions(stack, open_console):
    address, _, token = verified_login(stack)
    console = open_console()
    page = console.page
    console.sign_in(address, PASSWORD)
    page.get_by_role("navigation", name="Main").get_by_role("link", name="Account").click()
    console.heading("Account")
    page.get_by_label("Key name").fill("laptop")
    page.get_by_role("button", name="Create a key").click()
    key = page.get_by_test_id("new-key").inner_text()
    assert key.startswith("drk_")
    assert stack.call("GET", "/v1/me", api_key=key).json()["email"] == address
    # the list shows its prefix, never the key again
    page.get_by_role("button", name="Revoke laptop").wait_for()
    assert key not in page.locator("ul.list").all_inner_texts()[-1]
    # two sessions: the test's own (API) and the browser's, marked current
    sessions = page.get_by_test_id("session")
    eventually(lambda: sessions.count() >= 2, 30, "the sessions listed")
    assert page.get_by_test_id("current-session").count() == 1
    console.visit("account")
    page.get_by_role("button", name="Revoke laptop").click()
    eventually(lambda: page.get_by_role("button", name="Revoke laptop").count() == 0, 30, "revoked")
    refused_within(stack, 30, api_key=key)
    # ending the other session signs it out
    page.get_by_role("button", name="Sign out this session").first.click()
    refused_within(stack, 30, token=token)


def test_two_factor_sign_in_set_up_from_the_account_page(stack, open_console):
    address, _, _ = verified_login(stack)
    console = open_console()
    page = console.page
    console.sign_in(address, PASSWORD)
    console.goto("/account")
    console.heading("Account")
    page.get_by_role("button", name="Set up two-factor sign-in").click()
    secret = page.get_by_test_id("totp-secret").inner_text()
    page.get_by_label("Code from the app").fill("000000" if pyotp.TOTP(secret).now() != "000000" else "111111")
    page.get_by_role("button", name="Turn on").click()
    assert "invalid_totp" in page.get_by_role("alert").inner_text()
    used = pyotp.TOTP(secret).now()
    page.get_by_label("Code from the app").fill(used)
    page.get_by_role("button", name="Turn on").click()
    page.get_by_test_id("totp-on").wait_for()
    console.visit("account-totp", shot=False)
    # signing in now asks for the code
    fresh = open_console()
    fresh.goto("/login")
    fresh.page.get_by_label("Email").fill(address)
    fresh.page.get_by_label("Password").fill(PASSWORD)
    fresh.page.get_by_role("button", name="Sign in").click()
    assert "totp_required" in fresh.page.get_by_role("alert").inner_text()
    code = eventually(lambda: (c := pyotp.TOTP(secret).now()) != used and c, 40, "a fresh code")
    fresh.page.get_by_label("Authenticator code").fill(code)
    fresh.page.get_by_role("button", name="Sign in").click()
    fresh.heading("Generate")
