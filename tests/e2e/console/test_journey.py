"""A person's whole first journey through the console, in Chromium, through
the real stack: sign up (the policy shown and accepted) → verify with the
code from the mail file → sign in → generate with live progress and see the
result → the gallery (filter, upload, delete, download, make public) → the
public page opened logged out → export and download the archive → ask for
erasure, cancel it from the mailed link, ask again → the account is gone.
Every page visited gets axe; the main ones are screenshotted into docs/console/."""

from __future__ import annotations

import io
import subprocess
import sys
import uuid
import zipfile
from pathlib import Path

import pytest
from PIL import Image

from tests.conftest import REPO
from tests.e2e.console.conftest import PHONE, eventually
from tests.e2e.stack import PASSWORD, body_text, code_from, new_email

pytestmark = pytest.mark.e2e

OPS = str(Path(sys.executable).parent / "darkroom-ops")


def publish_policy(stack, version: str, summary: str):
    result = subprocess.run([OPS, "privacy", "publish-policy", "--version", version, "--material",
                             "--summary", summary],
                            env={**stack.env, "OPS_RPC_TIMEOUT_SECONDS": "30"}, cwd=REPO,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr


def png(color: str, size=(96, 64)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, "PNG")
    return buf.getvalue()


def test_sign_up_generate_share_export_and_erase(stack, open_console, tmp_path):
    version = f"2026-console-{uuid.uuid4().hex[:6]}"
    publish_policy(stack, version, "We keep your images for 30 days and never sell your data.")
    address = new_email()
    console = open_console()
    page = console.page

    # ---- sign up: the policy is shown and must be accepted
    console.goto("/signup")
    console.heading("Create an account")
    assert version in page.locator(".policy-text").inner_text()
    page.get_by_label("Email").fill(address)
    page.get_by_label("Password", exact=True).fill(PASSWORD)
    page.get_by_label("Display name (optional)").fill("Ada")
    console.visit("signup")
    page.get_by_role("button", name="Create account").click()
    # the browser refuses the form without the policy accepted
    assert page.url.endswith("/signup")
    page.get_by_label("I have read and accept the privacy policy").check()
    page.get_by_role("button", name="Create account").click()
    console.heading("Verify your email")

    # ---- verify with the code from the mail file
    assert page.get_by_label("Email").input_value() == address
    page.get_by_label("Code").fill(code_from(stack.wait_for_mail(address)))
    console.visit("verify", shot=False)
    page.get_by_role("button", name="Verify").click()
    console.heading("Sign in")

    # ---- sign in: the policy accepted at sign-up is recorded with the first session
    page.get_by_label("Password").fill(PASSWORD)
    console.visit("login")
    page.get_by_role("button", name="Sign in").click()
    console.heading("Generate")
    token = page.evaluate("localStorage.getItem('darkroom.session')")
    me = stack.call("GET", "/v1/me", token=token).json()
    assert (me["email"], me["policy"]["accepted"], me["policy"]["acceptance_required"]) == (
        address, version, False)
    assert page.get_by_role("region", name="Privacy policy update").count() == 0
    eventually(lambda: stack.call("GET", "/v1/billing/balance", token=token).json()["available"] > 0,
               what="the signup grant")

    # ---- generate: models listed, a dry-run price, live progress to the result
    models = page.get_by_label("Model")
    eventually(lambda: "local" in models.inner_text(), 30, "the models from /v1/models")
    page.get_by_label("Prompt").fill("a red fox in the snow, drawn by the console")
    page.get_by_role("button", name="Show the price").click()
    assert int(page.get_by_test_id("price").inner_text()) > 0
    page.get_by_role("button", name="Generate", exact=True).click()
    status = page.get_by_test_id("job-status")
    status.wait_for()
    seen = {status.inner_text()}
    eventually(lambda: seen.add(status.inner_text()) or "succeeded" in seen, 120,
               "the job to succeed on the page")
    assert seen - {"succeeded"}, "the page showed no state before the end"  # it followed the job
    result = page.locator(".results img").first
    result.wait_for()
    eventually(lambda: result.evaluate("img => img.complete && img.naturalWidth > 0"), 30,
               "the output image to load")
    assert page.get_by_role("link", name="Download output 1").get_attribute("download") is not None
    console.visit("generate")

    # ---- a source image uploaded from the page lands in the gallery's uploads
    page.get_by_label("Job type").select_option("image-to-image")
    source = tmp_path / "source.png"
    source.write_bytes(png("teal"))
    page.get_by_label("Source image (PNG, JPEG or WebP)").set_input_files(str(source))
    page.get_by_alt_text("The uploaded source image").wait_for()

    # ---- gallery: filters, delete, download, make public
    page.get_by_role("navigation", name="Main").get_by_role("link", name="Gallery").click()
    console.heading("Gallery")
    cards = page.locator("li.card")
    eventually(lambda: cards.count() == 2, 30, "the output and the upload in the gallery")
    page.get_by_role("button", name="Uploads").click()
    eventually(lambda: cards.count() == 1 and "upload" in cards.first.inner_text(), 30, "uploads only")
    page.once("dialog", lambda dialog: dialog.accept())
    cards.first.get_by_role("button", name="Delete").click()
    page.get_by_text("Nothing here yet.").wait_for()
    page.get_by_role("button", name="Outputs").click()
    eventually(lambda: cards.count() == 1 and "output" in cards.first.inner_text(), 30, "outputs only")
    card = cards.first
    with page.expect_download() as download:
        card.get_by_role("link", name="Download").click()
    data = Path(download.value.path()).read_bytes()
    assert Image.open(io.BytesIO(data)).format == "PNG"
    card.get_by_role("button", name="Make public").click()
    eventually(lambda: card.get_by_test_id("visibility").inner_text() == "public", 30, "public")
    public_path = card.get_by_test_id("public-link").get_attribute("href")
    assert public_path.startswith("/public/")
    eventually(lambda: card.locator("img").evaluate("img => img.complete && img.naturalWidth > 0"), 30,
               "the gallery's image to load")
    console.visit("gallery")

    # ---- the public address, opened by someone signed out (on a phone)
    visitor = open_console(viewport=PHONE)
    visitor.goto(public_path)
    visitor.heading("Shared image")
    shared = visitor.page.get_by_test_id("public-image")
    eventually(lambda: shared.evaluate("img => img.complete && img.naturalWidth > 0"), 30,
               "the public image to load")
    assert visitor.page.evaluate("localStorage.getItem('darkroom.session')") is None
    visitor.visit("public-image-phone")

    # ---- privacy center: an export, requested and downloaded
    page.get_by_role("navigation", name="Main").get_by_role("link", name="Privacy").click()
    console.heading("Privacy center")
    page.get_by_role("button", name="Request an export").click()
    export_row = page.locator("li.request[data-request-type=export]")
    eventually(lambda: export_row.get_attribute("data-request-status") == "completed", 120,
               "the export to complete on the page")
    with page.expect_download() as download:
        export_row.get_by_role("button", name="Download the archive").click()
    with zipfile.ZipFile(download.value.path()) as archive:
        names = archive.namelist()
    assert {"auth.json", "storage.json", "README.md"} <= set(names), names
    assert any(name.startswith("media/outputs/") for name in names), names
    console.visit("privacy")
    # the export-ready mail's link opens that request's page, with the download
    mail = eventually(lambda: next((m for m in stack.mails_to(address)
                                    if "/privacy/requests/" in body_text(m)
                                    and "/cancel?token=" not in body_text(m)), None), 60,
                      "the export-ready mail")
    link = next(word for word in body_text(mail).split() if "/privacy/requests/" in word)
    assert link.startswith(stack.base_url + "/privacy/requests/")
    console.goto(link[len(stack.base_url):])
    console.heading("Your privacy request")
    mailed_row = page.locator("li.request[data-request-type=export]")
    assert mailed_row.get_attribute("data-request-status") == "completed"
    with page.expect_download() as download:
        mailed_row.get_by_role("button", name="Download the archive").click()
    with zipfile.ZipFile(download.value.path()) as archive:
        assert "auth.json" in archive.namelist()
    console.visit("privacy-request", shot=False)
    page.get_by_role("link", name="All your requests, in the privacy center").click()
    console.heading("Privacy center")

    # ---- erasure: re-authentication, then cancelled from the mailed link
    page.get_by_label("Password").fill("not my password at all")
    page.get_by_role("button", name="Delete my account").click()
    assert "reauthentication_required" in page.get_by_role("alert").inner_text()
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Delete my account").click()
    erasure_row = page.locator("li.request[data-request-type=erasure]")
    eventually(lambda: erasure_row.get_attribute("data-request-status") == "pending", 30, "pending")
    mail = eventually(lambda: next((m for m in stack.mails_to(address)
                                    if "/cancel?token=" in body_text(m)), None), 60,
                      "the erasure mail with its cancel link")
    link = next(word for word in body_text(mail).split() if "/cancel?token=" in word)
    assert link.startswith(stack.base_url + "/privacy/requests/")
    mailed = open_console()
    mailed.page.goto(link)
    mailed.heading("Cancel the erasure of your account")
    mailed.visit("erasure-cancel")
    mailed.page.get_by_role("button", name="Keep my account").click()
    mailed.page.get_by_text("The erasure is cancelled.").wait_for()
    eventually(lambda: erasure_row.get_attribute("data-request-status") == "cancelled", 30,
               "the cancel to show in the privacy center")

    # ---- asked again, it runs after its grace period: the account is gone
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Delete my account").click()
    eventually(lambda: page.locator("li.request[data-request-type=erasure][data-request-status=pending]")
               .count() == 1, 30, "a new pending erasure")
    # the page notices on its own: the session is revoked when the erasure starts
    console.heading("Sign in to continue")
    eventually(lambda: stack.call("POST", "/v1/auth/login",
                                  json={"email": address, "password": PASSWORD}).status_code == 401,
               120, "the account to be gone")
    console.goto("/login")
    page.get_by_label("Email").fill(address)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    assert "invalid_credentials" in page.get_by_role("alert").inner_text()
