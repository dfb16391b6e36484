"""The Account page's changes, in Chromium through the shared e2e stack: a
new email address (refusals shown with their codes: a wrong password, an
address another account has; then the code from the mail to the new address,
entered on the verification page, and the page shows the new address), then
two-factor sign-in set up from the setup link's otpauth URI (what an
authenticator app reads from its QR code), and the next sign-in, with the new
address, asks for its code."""

from __future__ import annotations

import pyotp
import pytest

from tests.e2e.console.conftest import eventually
from tests.e2e.console.test_policy_and_video import accept_current_policy
from tests.e2e.stack import PASSWORD, code_from, new_email, verified_login

pytestmark = pytest.mark.e2e


def test_an_email_change_then_two_factor_from_the_account_page(stack, open_console):
    address, registered, token = verified_login(stack)
    accept_current_policy(stack, token)
    taken, _, _ = verified_login(stack)
    console = open_console()
    page = console.page
    console.sign_in(address, PASSWORD)
    console.goto("/account")
    console.heading("Account")
    panel = page.get_by_role("region", name="Change your email")
    send = panel.get_by_role("button", name="Send a code to the new address")

    # refusals, each with the API's code
    panel.get_by_label("New email").fill(new_email())
    panel.get_by_label("Current password").fill("not the password at all")
    send.click()
    panel.get_by_role("alert").filter(has_text="invalid_credentials").wait_for()
    panel.get_by_label("New email").fill(taken)
    panel.get_by_label("Current password").fill(PASSWORD)
    send.click()
    panel.get_by_role("alert").filter(has_text="email_taken").wait_for()

    # the code goes to the new address; entered on the verification page
    changed = new_email()
    panel.get_by_label("New email").fill(changed)
    panel.get_by_label("Current password").fill(PASSWORD)
    send.click()
    notice = panel.get_by_role("status").filter(has_text="A code went to the new address")
    notice.wait_for()
    assert panel.get_by_role("alert").count() == 0
    console.visit("account-email-sent", shot=False)
    notice.get_by_role("link", name="verification page").click()
    console.heading("Verify your email")
    assert page.get_by_label("Email").input_value() == changed
    page.get_by_label("Code").fill(code_from(stack.wait_for_mail(changed)))
    page.get_by_role("button", name="Verify").click()
    console.heading("Account")
    page.get_by_role("status").filter(has_text=f"you sign in with {changed}").wait_for()
    profile = page.get_by_role("region", name="Profile")
    assert f"{changed} (verified)" in profile.inner_text()
    session = page.evaluate("localStorage.getItem('darkroom.session')")
    assert stack.call("GET", "/v1/me", token=session).json()["email"] == changed
    console.visit("account-email-changed")

    # two-factor sign-in, from the setup link's otpauth URI
    page.get_by_role("button", name="Set up two-factor sign-in").click()
    uri = page.get_by_role("link", name="the setup link").get_attribute("href")
    assert uri.startswith("otpauth://totp/")
    totp = pyotp.parse_uri(uri)
    assert totp.secret == page.get_by_test_id("totp-secret").inner_text()
    page.get_by_label("Code from the app").fill(totp.now())
    page.get_by_role("button", name="Turn on").click()
    page.get_by_test_id("totp-on").wait_for()
    eventually(lambda: profile.locator("dd").nth(3).inner_text() == "on", 30,
               "the profile saying two-factor is on")
    used = totp.now()

    # signed out: the old address no longer signs in; the new one asks for a code
    page.get_by_role("button", name="Sign out", exact=True).click()
    console.heading("Sign in")
    page.get_by_label("Email").fill(address)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in", exact=True).click()
    page.get_by_role("alert").filter(has_text="invalid_credentials").wait_for()
    page.get_by_label("Email").fill(changed)
    page.get_by_role("button", name="Sign in", exact=True).click()
    page.get_by_role("alert").filter(has_text="totp_required").wait_for()
    code = eventually(lambda: (c := totp.now()) != used and c, 40, "a fresh code")
    page.get_by_label("Authenticator code").fill(code)
    page.get_by_role("button", name="Sign in", exact=True).click()
    console.heading("Generate")
    token = page.evaluate("localStorage.getItem('darkroom.session')")
    me = stack.call("GET", "/v1/me", token=token).json()
    assert (me["id"], me["email"], me["totp_enabled"]) == (registered["user"]["id"], changed, True)
