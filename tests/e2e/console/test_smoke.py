"""The console is served, locked down and usable before anything else:
served by the gateway at / with its CSP and cache headers, deep links land on
the app, API paths keep their JSON errors, the layout works on a phone and
by keyboard, and an API error shows its code and message."""

from __future__ import annotations

import re

import pytest
import requests

from tests.e2e.console.conftest import PHONE

pytestmark = pytest.mark.e2e


def test_the_gateway_serves_the_console_with_its_policy(stack, console_build):
    page = requests.get(stack.base_url + "/", timeout=30)
    assert page.status_code == 200 and page.headers["Content-Type"].startswith("text/html")
    csp = page.headers["Content-Security-Policy"]
    for directive in ("default-src 'self'", "script-src 'self'", "style-src 'self'",
                      "connect-src 'self'", "frame-ancestors 'none'", "base-uri 'none'",
                      "form-action 'self'"):
        assert directive in csp, csp
    assert "unsafe-inline" not in csp and "unsafe-eval" not in csp
    assert page.headers["Cache-Control"] == "no-cache"
    assert "<script>" not in page.text  # only <script type="module" src=...>: no inline script
    script = re.search(r'src="(/assets/[^"]+\.js)"', page.text).group(1)
    asset = requests.get(stack.base_url + script, timeout=30)
    assert asset.status_code == 200 and "immutable" in asset.headers["Cache-Control"]
    # the mails' links and any console address get the app; the API keeps its JSON 404
    for path in ("/reset-password?token=abc", "/checkout/success?session_id=x", "/billing",
                 "/privacy/requests/00000000-0000-0000-0000-000000000000/cancel?token=t"):
        deep = requests.get(stack.base_url + path, timeout=30)
        assert deep.status_code == 200 and deep.text == page.text, path
    for path in ("/v1/nothing-here", "/healthz/nothing", "/assets/missing.js"):
        missing = requests.get(stack.base_url + path, timeout=30)
        assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found", path


def test_phone_layout_keyboard_navigation_and_an_api_error(open_console):
    console = open_console(viewport=PHONE)
    page = console.page
    console.goto("/")
    console.heading("Darkroom")
    console.visit("home-phone")
    # the menu opens from the keyboard and its links are reachable with Tab
    menu = page.get_by_role("button", name="Menu")
    assert menu.get_attribute("aria-expanded") == "false"
    menu.focus()
    page.keyboard.press("Enter")
    assert menu.get_attribute("aria-expanded") == "true"
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.textContent") == "Sign in"
    page.keyboard.press("Enter")
    console.heading("Sign in")
    assert page.url.endswith("/login")
    # no horizontal scrolling on a phone
    assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
    # a wrong password: the API's code and message, not a blank page
    page.get_by_label("Email").fill("nobody@example.com")
    page.get_by_label("Password").fill("not the password at all")
    page.get_by_role("button", name="Sign in").click()
    alert = page.get_by_role("alert")
    alert.wait_for()
    assert "invalid_credentials" in alert.inner_text()
    console.visit("login-error-phone", shot=False)
    # an unknown console address: the app's own page
    console.goto("/no/such/page")
    console.heading("Page not found")
    console.visit("not-found", shot=False)
