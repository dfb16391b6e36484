"""The operators' pages in a real browser (issue 19), on the e2e stack and its
real /v1/admin API: an administrator (granted with ``darkroom-ops users
grant-admin``, signed in with the password and a TOTP code computed from the
otpauth URI the grant printed) replays a job that failed at the fake video
vendor and sees it succeed, the owner charged once; cancels a job waiting for
the run slot, and is shown the API's refusal to cancel a running one; every
operator page with axe and a screenshot (docs/console.md), one on a phone; a
dead letter peeked and replayed from the page (its handler fails it again); a
user disabled and enabled again after a confirmation, the API's refusal to
disable oneself shown with its code; and a person who is not an administrator
told so."""

from __future__ import annotations

import json
import time
import uuid

import pyotp
import pytest

from services.common.messaging import dlq_name
from tests.conftest import wait_for
from tests.e2e.console.conftest import PHONE, eventually
from tests.e2e.stack import PASSWORD, refused_within, verified_login
from tests.e2e.test_admin import NOTIFICATIONS_QUEUE, _dead_letter, _take
from tests.e2e.test_generation import (
    FINAL,
    SIGNUP_GRANT,
    failed_by_the_vendor,
    finished,
    job,
    ledger_kinds,
    ops,
    settled,
    submit,
    upload_png,
)

pytestmark = pytest.mark.e2e


class Admin:
    """An administrator: the address, the TOTP secret and the codes already used
    (auth refuses a code's step twice, so each sign-in waits for a fresh one)."""

    def __init__(self, email: str, secret: str):
        self.email, self.totp, self.used = email, pyotp.TOTP(secret), set()

    def code(self) -> str:
        code = eventually(lambda: (c := self.totp.now()) not in self.used and c, 40, "a fresh code")
        self.used.add(code)
        return code


@pytest.fixture
def admin(stack) -> Admin:
    address, _, _ = verified_login(stack)
    granted = ops(stack, "users", "grant-admin", address, "--json")
    assert granted.returncode == 0, granted.stderr + granted.stdout
    uri = json.loads(granted.stdout)["otpauth_uri"]  # enrolled by the grant, shown once
    return Admin(address, pyotp.parse_uri(uri).secret)


@pytest.fixture
def owner(stack) -> dict:
    address, registered, token = verified_login(stack)
    wait_for(lambda: settled(stack, token)["available"] == SIGNUP_GRANT, 20, 0.2, "signup grant")
    return {"email": address, "id": registered["user"]["id"], "token": token}


def sign_in_with_totp(console, admin: Admin):
    """The console's sign-in: the password, the API's ``totp_required``, the code."""
    page = console.page
    console.goto("/login")
    page.get_by_label("Email").fill(admin.email)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    assert "totp_required" in page.get_by_role("alert").inner_text()
    page.get_by_label("Authenticator code").fill(admin.code())
    page.get_by_role("button", name="Sign in").click()
    console.heading("Generate")


def test_an_admin_replays_a_failed_job(stack, open_console, admin, owner):
    _, failed = failed_by_the_vendor(stack, owner["token"])
    assert failed["status"] == "failed" and failed["error"]["code"], failed
    assert settled(stack, owner["token"])["available"] == SIGNUP_GRANT  # released
    console = open_console()
    page = console.page
    sign_in_with_totp(console, admin)
    page.get_by_role("navigation", name="Main").get_by_role("link", name="Operators").click()
    console.heading("Failed jobs")
    item = page.locator(f"[data-testid=admin-job][data-job-id='{failed['id']}']")
    error = item.get_by_test_id("job-error").inner_text()
    assert failed["error"]["code"] in error and failed["error"]["message"] in error
    assert owner["id"] in item.inner_text()  # whose job it is
    console.visit("admin-jobs")

    item.get_by_role("button", name=f"Replay job {failed['id']}").focus()  # by keyboard
    page.keyboard.press("Enter")
    item.get_by_role("status").filter(has_text="Replayed: attempt 2").wait_for()
    # the button is gone with the failed status: the focus is on the outcome
    assert page.evaluate("() => document.activeElement.textContent").startswith("Replayed")
    # the owner's job runs again and succeeds, charged once
    done = wait_for(lambda: (j := job(stack, owner["token"], failed["id"]))["attempt"] == 2
                    and j["status"] in FINAL and j, 60, 0.2, "the replay")
    assert done["status"] == "succeeded", done
    assert settled(stack, owner["token"])["available"] == SIGNUP_GRANT - 10
    kinds = ledger_kinds(stack, owner["token"])
    assert (kinds.count("hold"), kinds.count("release"), kinds.count("capture")) == (2, 1, 1)
    # and the operator sees it among the succeeded jobs, no longer failed
    page.get_by_label("Status").select_option("succeeded")
    page.get_by_role("button", name="Show").click()
    page.wait_for_url("**/admin/jobs?status=succeeded")
    replayed = page.locator(f"[data-testid=admin-job][data-job-id='{failed['id']}']")
    assert "attempt 2" in replayed.inner_text() and "succeeded" in replayed.inner_text()
    assert replayed.get_by_role("button", name="Replay").count() == 0
    page.get_by_label("Status").select_option("failed")
    page.get_by_role("button", name="Show").click()
    page.wait_for_url("**/admin/jobs")
    page.get_by_role("button", name="Refresh").click()
    eventually(lambda: page.locator(f"[data-job-id='{failed['id']}']").count() == 0, 20,
               "the job gone from the failed ones")


def test_an_admin_cancels_a_waiting_job_and_is_refused_a_running_one(stack, open_console, admin,
                                                                     owner):
    console = open_console()
    page = console.page
    sign_in_with_totp(console, admin)
    token = owner["token"]
    body = {"type": "image-to-video", "source_image_id": upload_png(stack, token),
            "duration_s": 2, "model": "video"}
    stack.video.outcome = "never"  # the first job holds the only run slot until told
    try:
        first = submit(stack, token, body)
        wait_for(lambda: job(stack, token, first["id"])["status"] == "running", 20, 0.1, "running")
        second = submit(stack, token, body)
        wait_for(lambda: job(stack, token, second["id"])["status"] == "reserved", 20, 0.1,
                 "the second job waiting with its hold")
        console.goto("/admin/jobs?status=reserved")
        console.heading("Failed jobs")
        waiting = page.locator(f"[data-testid=admin-job][data-job-id='{second['id']}']")
        waiting.get_by_role("button", name=f"Cancel job {second['id']}").click()
        assert "Cancelled: now cancelled" in waiting.get_by_role("status").inner_text()
        assert job(stack, token, second["id"])["status"] == "cancelled"
        # a job that has started cannot be: the API's refusal shown on the job
        console.goto("/admin/jobs?status=running")
        console.heading("Failed jobs")
        running = page.locator(f"[data-testid=admin-job][data-job-id='{first['id']}']")
        running.get_by_role("button", name=f"Cancel job {first['id']}").click()
        assert "not_cancellable" in running.get_by_role("alert").inner_text()
        console.visit("admin-jobs-refused", shot=False)
    finally:
        stack.video.outcome = "succeeded"
    assert finished(stack, token, first["id"])["status"] == "succeeded"
    assert settled(stack, token)["available"] == SIGNUP_GRANT - 10  # the second's hold released


def test_every_operator_page_and_a_user_disabled_then_enabled(stack, open_console, admin, owner):
    # something on each page: an export asked (privacy), an incident long past its deadline
    asked = stack.call("POST", "/v1/privacy/requests", token=owner["token"], json={"type": "export"})
    assert asked.status_code == 202, asked.text
    summary = f"e2e console incident {time.time_ns()}"
    opened = ops(stack, "breach", "open", "--summary", summary, "--detected-at", "4d",
                 "--categories", "account", "--json")
    assert opened.returncode == 0, opened.stderr + opened.stdout
    console = open_console()
    page = console.page
    sign_in_with_totp(console, admin)

    # dead letters: one that notifications gave up on, peeked, replayed from the page
    amqp_uri, marker = stack.env["AMQP_URI"], f"console-{uuid.uuid4().hex}"
    _dead_letter(amqp_uri, marker)
    try:
        console.goto("/admin/dead-letters")
        console.heading("Dead letters")
        queue = page.get_by_test_id("dead-letter-queue").filter(has_text=dlq_name(NOTIFICATIONS_QUEUE))
        letter = queue.get_by_test_id("dead-letter").filter(has_text=marker)
        assert "privacy.consent_changed" in letter.inner_text()
        assert "ValidationError: boom" in letter.inner_text() and "0 replay(s)" in letter.inner_text()
        assert page.get_by_test_id("unavailable").count() == 0  # every service answered
        console.visit("admin-dead-letters")
        queue.get_by_role("button", name=f"Replay {dlq_name(NOTIFICATIONS_QUEUE)} of notifications").click()
        assert "sent back to their queue" in queue.get_by_role("status").inner_text()
        # its handler fails it again (the payload breaks the contract): back, its replay counted
        def back_with_its_replay() -> bool:
            page.get_by_role("button", name="Refresh").click()
            page.wait_for_timeout(500)
            shown = page.get_by_test_id("dead-letter").filter(has_text=marker).all_inner_texts()
            return bool(shown) and "1 replay(s)" in shown[0]

        eventually(back_with_its_replay, 30, "the replayed letter dead-lettered again")
    finally:
        assert _take(amqp_uri, marker) == 1

    console.goto("/admin/privacy-requests?status=all")
    console.heading("Privacy requests")
    mine = page.get_by_test_id("privacy-request").filter(has_text=asked.json()["id"])
    assert "export" in mine.inner_text() and "due" in mine.inner_text()
    console.visit("admin-privacy-requests")

    console.goto("/admin/breaches")
    console.heading("Breach incidents")
    incident = page.get_by_test_id("breach").filter(has_text=summary)
    assert "overdue" in incident.inner_text() and "report by" in incident.inner_text()
    # overdue ones come first
    flags = [("overdue" in t) for t in page.get_by_test_id("breach").all_inner_texts()]
    assert flags == sorted(flags, reverse=True), flags
    console.visit("admin-breaches")

    # users: find the owner, disable (after a confirmation), the owner's session refused
    console.goto("/admin/users")
    console.heading("Users")
    page.get_by_label("Email (part or whole)").fill(owner["email"].split("@")[0])
    page.get_by_role("button", name="Find").click()
    page.wait_for_url("**/admin/users?email=*")
    found = page.get_by_test_id("admin-user")
    eventually(lambda: found.count() == 1 and owner["email"] in found.inner_text(), 20,
               "the owner alone, found by part of the address")
    user = page.locator(f"[data-testid=admin-user][data-email='{owner['email']}']")
    focused = "() => document.activeElement.getAttribute('aria-label') || document.activeElement.textContent"
    user.get_by_role("button", name=f"Disable {owner['email']}").focus()  # by keyboard
    page.keyboard.press("Enter")
    user.get_by_role("group", name=f"Confirm: disable {owner['email']}").wait_for()
    # the focus goes to the question (moved once it has rendered)
    eventually(lambda: page.evaluate(focused) == "Yes, disable", 10, "the focus on the question")
    console.visit("admin-users")
    page.keyboard.press("Enter")
    user.get_by_role("status").filter(has_text="Disabled:").wait_for()
    assert "disabled" in user.inner_text()
    eventually(lambda: page.evaluate(focused) == f"Enable {owner['email']}", 10,
               "the focus back on the user's button")
    refused_within(stack, 30, token=owner["token"])
    user.get_by_role("button", name=f"Enable {owner['email']}").click()
    user.get_by_role("button", name="Yes, enable").click()
    user.get_by_role("status").filter(has_text="Enabled").wait_for()
    again = stack.call("POST", "/v1/auth/login", json={"email": owner["email"], "password": PASSWORD})
    assert again.status_code == 200, again.text
    # the API's refusal shown with its code: an administrator cannot disable themselves
    page.get_by_label("Email (part or whole)").fill(admin.email)
    page.get_by_role("button", name="Find").click()
    me = page.locator(f"[data-testid=admin-user][data-email='{admin.email}']")
    me.get_by_role("button", name=f"Disable {admin.email}").click()
    me.get_by_role("button", name="Yes, disable").click()
    assert "cannot_disable_self" in me.get_by_role("alert").inner_text()

    # a phone: the operators' entry of the menu by keyboard, the privacy requests, no
    # horizontal scroll
    phone = open_console(viewport=PHONE)
    sign_in_with_totp(phone, admin)
    phone.page.get_by_role("button", name="Menu").focus()
    phone.page.keyboard.press("Enter")
    phone.page.get_by_role("link", name="Operators").focus()
    phone.page.keyboard.press("Enter")
    phone.heading("Failed jobs")
    phone.page.get_by_role("link", name="Privacy requests").focus()
    phone.page.keyboard.press("Enter")
    phone.heading("Privacy requests")
    phone.page.get_by_role("button", name="All").click()
    phone.page.get_by_test_id("privacy-request").filter(has_text=asked.json()["id"]).wait_for()
    assert phone.page.evaluate("() => document.documentElement.scrollWidth <= window.innerWidth")
    phone.visit("admin-privacy-requests-phone")


def test_someone_not_an_administrator_is_told_so(stack, open_console):
    address, _, token = verified_login(stack)
    refused = stack.call("GET", "/v1/admin/jobs", token=token)
    assert (refused.status_code, refused.json()["error"]["code"]) == (403, "admin_required")
    console = open_console()
    page = console.page
    console.sign_in(address, PASSWORD)
    assert page.get_by_role("link", name="Operators").count() == 0
    for path in ("/admin", "/admin/jobs", "/admin/users", "/admin/breaches"):
        console.goto(path)
        console.heading("Operators only")
        assert address in page.get_by_test_id("operators-only").inner_text()
    console.visit("admin-refused")
    # signed out, the operators' pages ask to sign in first
    anonymous = open_console()
    anonymous.goto("/admin/dead-letters")
    anonymous.heading("Sign in to continue")
