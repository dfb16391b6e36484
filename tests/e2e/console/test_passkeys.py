"""Passkeys in the console, in Chromium: one is added on the Account page and
signs the person in from the sign-in page with no password, and still does
once the account is an administrator's (whose password alone now asks for a
TOTP code: a passkey with user verification is two factors); removed, it
signs in no more and the page shows the API's ``invalid_passkey``.

The authenticator is Chromium's virtual one (the DevTools protocol's WebAuthn
domain: a CTAP2 platform authenticator with resident keys and user
verification), so the console's own navigator.credentials code and its
base64url conversions are what is tested, against the auth service's real
checks. Chromium refuses an IP address as a relying party id, and the shared
e2e stack runs at http://127.0.0.1:PORT (its RP id is ``127.0.0.1``, which
tests/e2e/test_passkeys.py's software authenticator uses), so this module
runs its own small stack (auth, notifications for the verification mail, the
gateway) whose ``PUBLIC_BASE_URL`` is http://localhost:PORT: the RP id is
``localhost`` and the origin http://localhost:PORT, from the defaults of
``AUTH_WEBAUTHN_*`` (services/auth/settings.py)."""

from __future__ import annotations

import subprocess

import pytest

from tests.conftest import REPO, base_env, free_port, processes
from tests.e2e.console.test_journey import OPS
from tests.e2e.stack import PASSWORD, Stack, verified_login

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def localhost_stack(make_vhost, make_database, process_log_dir, tmp_path_factory, console_build):
    amqp_uri, _ = make_vhost("console-passkeys")
    mail_dir = tmp_path_factory.mktemp("passkey-mail")
    port, auth_port, mail_port = free_port(), free_port(), free_port()
    base = f"http://localhost:{port}"
    env = base_env(
        AMQP_URI=amqp_uri, AUTH_DATABASE_URL=make_database("auth_console_passkeys"),
        NOTIFICATIONS_DATABASE_URL=make_database("notifications_console_passkeys"),
        AUTH_METRICS_PORT=auth_port, NOTIFICATIONS_METRICS_PORT=mail_port,
        MAIL_URL=f"file://{mail_dir}", GATEWAY_PORT=port, PUBLIC_BASE_URL=base,
        GATEWAY_READY_SERVICES="[auth, notifications]",
        RATELIMIT_AUTH="10000 per minute", RATELIMIT_DEFAULT="10000 per minute")
    start, stop_all = processes(process_log_dir)
    try:
        running = {"auth": start("auth", env), "notifications": start("notifications", env)}
        running["auth"].wait_ready(f"http://127.0.0.1:{auth_port}/readyz")
        running["notifications"].wait_ready(f"http://127.0.0.1:{mail_port}/readyz")
        running["gateway"] = start("gateway", env)
        running["gateway"].wait_ready(f"http://127.0.0.1:{port}/readyz")
        yield Stack(base, mail_dir, running, objects_dir=None, env=env)
    finally:
        stop_all()


def virtual_authenticator(console) -> tuple[object, str]:
    """Chromium's virtual platform authenticator on the console's tab:
    (the CDP session, its authenticator id)."""
    cdp = console.context.new_cdp_session(console.page)
    cdp.send("WebAuthn.enable", {"enableUI": False})
    made = cdp.send("WebAuthn.addVirtualAuthenticator", {"options": {
        "protocol": "ctap2", "transport": "internal", "hasResidentKey": True,
        "hasUserVerification": True, "isUserVerified": True,
        "automaticPresenceSimulation": True}})
    return cdp, made["authenticatorId"]


def test_a_passkey_added_on_the_account_page_signs_in_without_a_password(localhost_stack,
                                                                         console_at):
    stack = localhost_stack
    address, registered, _ = verified_login(stack)
    console = console_at(stack.base_url)
    page = console.page
    cdp, authenticator = virtual_authenticator(console)

    console.sign_in(address, PASSWORD)
    console.goto("/account")
    console.heading("Account")
    panel = page.get_by_role("region", name="Passkeys")
    panel.get_by_text("None yet.").wait_for()
    panel.get_by_label("Name of the passkey (optional)").fill("Laptop")
    panel.get_by_role("button", name="Add a passkey").click()
    panel.get_by_role("status").filter(has_text="Passkey added").wait_for()
    listed = page.get_by_test_id("passkey")
    listed.wait_for()
    assert listed.count() == 1 and "Laptop" in listed.inner_text()
    # what the browser made: a resident credential bound to the RP id "localhost"
    held = cdp.send("WebAuthn.getCredentials", {"authenticatorId": authenticator})["credentials"]
    assert [(c["rpId"], c["isResidentCredential"]) for c in held] == [("localhost", True)]
    console.visit("account-passkeys")

    # the API holds it for this account (and only it)
    token = page.evaluate("localStorage.getItem('darkroom.session')")
    mine = stack.call("GET", "/v1/me/passkeys", token=token).json()["items"]
    assert [p["name"] for p in mine] == ["Laptop"] and mine[0]["last_used_at"] is None

    # signed out, the passkey alone signs in: no email, no password typed
    page.get_by_role("button", name="Sign out", exact=True).click()
    console.heading("Sign in")
    page.get_by_role("button", name="Use a passkey").click()
    console.heading("Generate")
    passkey_token = page.evaluate("localStorage.getItem('darkroom.session')")
    assert passkey_token and passkey_token != token
    me = stack.call("GET", "/v1/me", token=passkey_token)
    assert me.status_code == 200 and me.json()["id"] == registered["user"]["id"]
    assert held[0]["signCount"] < cdp.send("WebAuthn.getCredentials", {
        "authenticatorId": authenticator})["credentials"][0]["signCount"]

    # made an administrator (TOTP enrolled at once): the password alone is not
    # enough any more, the passkey (user verification: two factors) still is
    granted = subprocess.run([OPS, "users", "grant-admin", address], cwd=REPO,
                             env={**stack.env, "OPS_RPC_TIMEOUT_SECONDS": "30"},
                             capture_output=True, text=True, timeout=120)
    assert granted.returncode == 0, granted.stderr
    page.get_by_role("button", name="Sign out", exact=True).click()
    console.heading("Sign in")
    page.get_by_label("Email").fill(address)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in", exact=True).click()
    page.get_by_role("alert").filter(has_text="totp_required").wait_for()
    page.get_by_role("button", name="Use a passkey").click()
    console.heading("Generate")
    admin_token = page.evaluate("localStorage.getItem('darkroom.session')")
    assert stack.call("GET", "/v1/me", token=admin_token).json()["is_admin"] is True

    # removed on the Account page, it signs in no more: the API's refusal shown with its code
    console.goto("/account")
    console.heading("Account")
    listed.wait_for()
    assert "last used" in listed.inner_text() and "last used —" not in listed.inner_text()
    page.get_by_role("button", name="Remove passkey Laptop").click()
    panel.get_by_text("None yet.").wait_for()
    assert stack.call("GET", "/v1/me/passkeys", token=admin_token).json()["items"] == []
    page.get_by_role("button", name="Sign out", exact=True).click()
    console.heading("Sign in")
    page.get_by_role("button", name="Use a passkey").click()
    page.get_by_role("alert").filter(has_text="invalid_passkey").wait_for()
    assert page.evaluate("localStorage.getItem('darkroom.session')") is None
    console.visit("login-passkey-refused", shot=False)
