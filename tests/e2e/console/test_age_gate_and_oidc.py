"""With a minimum age (13) and an OpenID provider (oidc-provider-mock, a
real provider process: tests/oidc_provider.py): the sign-up page asks for the
date of birth when the API says so and shows a refusal, and "Continue with
corp" signs a new person in through the provider, the age asked on the way.

Its own small stack (auth and the gateway, as tests/e2e/test_oidc.py): the
shared one runs without an age gate. The browser's visit to the provider's
sign-in page is played by the test, which signs in there as the person."""

from __future__ import annotations

import uuid

import pytest
import requests

from tests.conftest import base_env, free_port, processes
from tests.e2e.stack import PASSWORD, new_email
from tests.oidc_provider import OidcProvider

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def provider(process_log_dir):
    with OidcProvider(process_log_dir, name="oidc-console") as running:
        yield running


@pytest.fixture(scope="module")
def gated(make_vhost, make_database, process_log_dir, provider, console_build):
    amqp_uri, _ = make_vhost("console-age")
    port, auth_port = free_port(), free_port()
    base = f"http://127.0.0.1:{port}"
    env = base_env(
        AMQP_URI=amqp_uri, AUTH_DATABASE_URL=make_database("auth_console_age"),
        AUTH_METRICS_PORT=auth_port, GATEWAY_PORT=port, PUBLIC_BASE_URL=base,
        GATEWAY_READY_SERVICES="[auth]",
        RATELIMIT_AUTH="10000 per minute", RATELIMIT_DEFAULT="10000 per minute",
        AUTH_OIDC_PROVIDERS="corp", AUTH_OIDC_CORP_ISSUER=provider.issuer,
        AUTH_OIDC_CORP_CLIENT_ID="darkroom-console", AUTH_OIDC_CORP_CLIENT_SECRET="console-secret",
        AUTH_MINIMUM_AGE=13)
    start, stop_all = processes(process_log_dir)
    try:
        start("auth", env).wait_ready(f"http://127.0.0.1:{auth_port}/readyz")
        start("gateway", env).wait_ready(f"{base}/readyz")
        yield base
    finally:
        stop_all()


def test_sign_up_asks_the_age_and_refuses_a_child(gated, console_at):
    console = console_at(gated)
    page = console.page
    console.goto("/signup")
    console.heading("Create an account")
    page.get_by_label("Email").fill(new_email())
    page.get_by_label("Password", exact=True).fill(PASSWORD)
    page.get_by_label("I have read and accept the privacy policy").check()
    page.get_by_role("button", name="Create account").click()
    # (the privacy service is not part of this stack: the policy's 503 shows too)
    page.get_by_role("alert").filter(has_text="age_required").wait_for()
    page.get_by_label("Date of birth").fill("2019-03-03")
    page.get_by_role("button", name="Create account").click()
    page.get_by_role("alert").filter(has_text="under_minimum_age").wait_for()
    console.visit("signup-age-gate", shot=False)
    page.get_by_label("Date of birth").fill("2001-03-03")
    page.get_by_role("button", name="Create account").click()
    console.heading("Verify your email")


def test_continue_with_the_provider_signs_a_new_person_in(gated, provider, console_at):
    subject = f"sub-{uuid.uuid4().hex[:10]}"
    email = f"{subject}@example.com"
    provider.set_user(subject, email=email, email_verified=True, name="Console")
    console = console_at(gated)
    page = console.page

    def provider_round_trip(route):
        """The gateway sends the browser to the provider, where the person signs
        in, and the provider sends it back to the gateway's callback. (Playwright
        intercepts no redirected request, so the test follows the gateway's
        redirect and answers with where the provider sends the browser back.)"""
        start = requests.get(route.request.url, allow_redirects=False, timeout=30)
        assert start.status_code == 302 and start.headers["Location"].startswith(provider.issuer)
        route.fulfill(status=302, headers={"Location": provider.authorize(start.headers["Location"],
                                                                          subject)})

    page.route("**/v1/auth/oidc/corp/start?*", provider_round_trip)
    console.goto("/login")
    console.heading("Sign in")
    page.get_by_role("link", name="Continue with corp").click()
    console.heading("Signing in")
    page.get_by_label("Date of birth").fill("1990-05-06")
    console.visit("oidc-age", shot=False)
    page.get_by_role("button", name="Continue").click()
    console.heading("Generate")
    token = page.evaluate("localStorage.getItem('darkroom.session')")
    me = requests.get(gated + "/v1/me", headers={"Authorization": f"Bearer {token}"}, timeout=30)
    assert me.json()["email"] == email
    # the Account page lists the identity; the account's only way in stays
    console.goto("/account")
    console.heading("Account")
    identity = page.get_by_test_id("identity")
    identity.wait_for()
    assert "corp" in identity.inner_text() and email in identity.inner_text()
    page.get_by_role("button", name="Unlink corp").click()
    page.get_by_role("alert").filter(has_text="last_sign_in_method").wait_for()
    assert page.get_by_test_id("identity").count() == 1
    console.visit("account-identities", shot=False)
    # the provider's refusal comes back as an error code the page explains
    console.goto("/oidc/callback?error=oidc_denied")
    page.get_by_role("alert").filter(has_text="oidc_denied").wait_for()
