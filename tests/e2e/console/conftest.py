"""The web console in a real browser: Debian's Chromium driven by Playwright,
against the whole stack of tests/e2e (every Procfile process; the gateway
serves the console build at /): the one session stack of tests/e2e/conftest.py,
which this directory inherits (a second copy would share its broker vhost
and take its mail).

``console_build`` runs the Makefile's rule for the build (``npm ci`` and
``npm run build`` when a source changed) or fails. Chromium is
``/usr/bin/chromium`` (``deploy/test-tools.sh`` installs it; Playwright's own
browser download is not used): missing, the tests skip, and with CI=true fail.

:class:`Console` wraps a page and checks what a person would not see: each
page visited gets an axe-core run (serious or critical violations fail), and a
Content-Security-Policy violation, an uncaught script error or a request to
another origin fails the test that caused it."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests.conftest import REPO, unavailable, wait_for

CHROMIUM = Path(os.environ.get("DARKROOM_TEST_CHROMIUM", "/usr/bin/chromium"))
AXE = REPO / "console" / "node_modules" / "axe-core" / "axe.min.js"
SCREENSHOTS = REPO / "docs" / "console"
DESKTOP = {"width": 1280, "height": 860}
PHONE = {"width": 390, "height": 844}
# What axe reports that fails a test.
FAILING_IMPACTS = ("serious", "critical")
COOKIE_KEY = "darkroom.cookie-preferences"  # console/src/pages/consents.tsx


@pytest.fixture(scope="session")
def console_build() -> Path:
    result = subprocess.run(["make", "--no-print-directory", "console/dist/index.html"], cwd=REPO,
                            capture_output=True, text=True, timeout=900)
    if result.returncode != 0:
        pytest.fail(f"the console build failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}",
                    pytrace=False)
    assert (REPO / "console" / "dist" / "index.html").is_file()
    assert AXE.is_file(), "axe-core is missing from console/node_modules (npm ci)"
    return REPO / "console" / "dist"


@pytest.fixture(scope="session")
def browser(console_build):
    if not CHROMIUM.exists():
        unavailable("Chromium", f"{CHROMIUM} is missing (deploy/test-tools.sh installs Debian's chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=str(CHROMIUM))
        yield launched
        launched.close()


class Console:
    """A browser tab on the console, with the checks every page gets."""

    def __init__(self, context, base_url: str):
        self.context = context
        self.base_url = base_url
        self.page = context.new_page()
        self.page.set_default_timeout(30_000)
        self.problems: list[str] = []
        self.checked: set[str] = set()
        self.allowed_origins: list[str] = []  # another origin a test sends the browser to
        self.page.on("console", self._console_message)
        self.page.on("pageerror", lambda error: self.problems.append(f"script error: {error}"))
        self.page.on("request", self._request)

    def _console_message(self, message):
        if "Content Security Policy" in message.text:
            self.problems.append(f"CSP violation: {message.text}")

    def _request(self, request):
        url = request.url
        allowed = [self.base_url, *self.allowed_origins]
        if not (any(url == o or url.startswith(o + "/") for o in allowed) or url.startswith("data:")):
            self.problems.append(f"a request to another origin: {url}")

    def sign_in(self, address: str, password: str):
        self.goto("/login")
        self.page.get_by_label("Email").fill(address)
        self.page.get_by_label("Password").fill(password)
        self.page.get_by_role("button", name="Sign in").click()
        self.heading("Generate")

    def goto(self, path: str):
        response = self.page.goto(self.base_url + path)
        assert response is not None and response.ok, f"GET {path}: {response and response.status}"
        return response

    def heading(self, text: str):
        """Waits for the page's h1 to read ``text``."""
        self.page.locator("h1", has_text=text).wait_for()

    def axe(self, name: str | None = None) -> list[dict]:
        """Runs axe-core on the page as it is; serious or critical violations fail.

        The script goes in through the DevTools protocol (``evaluate``), not a
        ``<script>`` element: the console's CSP refuses inline scripts, and a
        test must not loosen it to look."""
        if not self.page.evaluate("() => typeof window.axe === 'object'"):
            self.page.evaluate(AXE.read_text() + "\n;undefined")
        violations = self.page.evaluate(
            """async () => (await axe.run(document, {resultTypes: ['violations']})).violations
                 .map(v => ({id: v.id, impact: v.impact, help: v.help,
                             nodes: v.nodes.map(n => n.target.join(' ')).slice(0, 5)}))""")
        failing = [v for v in violations if v["impact"] in FAILING_IMPACTS]
        assert not failing, f"axe on {name or self.page.url}: {failing}"
        self.checked.add(name or self.page.url)
        return violations

    def screenshot(self, name: str):
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        self.page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)

    def visit(self, name: str, shot: bool = True):
        """The checks of a page that has rendered: axe, then a screenshot."""
        self.axe(name)
        if shot:
            self.screenshot(name)

    def assert_clean(self):
        assert not self.problems, "\n".join(self.problems)


@pytest.fixture
def console_at(browser):
    """``console_at(base_url, viewport=..., cookies_decided=True)`` → a
    :class:`Console` of the gateway at ``base_url`` in a fresh browser context (a
    new visitor who, unless ``cookies_decided`` is false, has answered the
    cookie panel); every one is checked when the test ends."""
    contexts, consoles = [], []

    def open_(base_url: str, viewport: dict | None = None, cookies_decided: bool = True) -> Console:
        context = browser.new_context(viewport=viewport or DESKTOP, accept_downloads=True)
        if cookies_decided:  # the cookie panel answered once already (test_privacy_choices asks it)
            context.add_init_script(f"localStorage.getItem('{COOKIE_KEY}') || "
                                    f"localStorage.setItem('{COOKIE_KEY}', '{{}}')")
        contexts.append(context)
        console = Console(context, base_url)
        consoles.append(console)
        return console

    yield open_
    try:
        for console in consoles:
            console.assert_clean()
    finally:
        for context in contexts:
            context.close()


@pytest.fixture
def open_console(console_at, stack):  # noqa: F811  (the stack imported above)
    """``open_console(viewport=..., cookies_decided=True)``: :func:`console_at` on the e2e stack."""
    def open_(viewport: dict | None = None, cookies_decided: bool = True) -> Console:
        return console_at(stack.base_url, viewport, cookies_decided)

    return open_


def eventually(predicate, timeout: float = 60, what: str = "condition"):
    return wait_for(predicate, timeout, 0.25, what)
