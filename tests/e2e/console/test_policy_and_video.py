"""Two things a signed-in person meets on the way, in Chromium through the
shared e2e stack:

- a new material privacy policy version, published by an operator
  (``darkroom-ops privacy publish-policy``, the privacy service's
  ``publish_policy`` RPC), is asked for in a banner on every page; accepted
  there, it is gone, and the API has the acceptance;
- an image-to-video job from a source uploaded on the page, on the stack's
  fake async task vendor (its tasks made slow here: ``stack.video.polls_to_finish``)
  shows its progress while it runs; a second one waits in the queue behind it
  (the stack runs one job at a time), is cancelled from the page (the API
  cancels a job until it starts running) and its held credits are released;
  the first ends with its video, and the Credits page shows only it paid for."""

from __future__ import annotations

import uuid

import pytest
from PIL import Image

from tests.e2e.console.conftest import eventually
from tests.e2e.console.test_journey import publish_policy
from tests.e2e.stack import PASSWORD, verified_login

pytestmark = pytest.mark.e2e

BANNER = "Privacy policy update"  # the banner's region label (console/src/app.tsx)


def me(stack, token) -> dict:
    answer = stack.call("GET", "/v1/me", token=token)
    assert answer.status_code == 200, answer.text
    return answer.json()


def accept_current_policy(stack, token):
    """Accepts the current policy version, if another test published one (a
    new account starts without an acceptance: the banner would show)."""
    current = stack.call("GET", "/v1/privacy/policy")
    if current.status_code == 200:
        accepted = stack.call("POST", "/v1/privacy/policy/accept", token=token,
                              json={"version": current.json()["version"]})
        assert accepted.status_code == 200, accepted.text


def test_a_new_policy_version_is_asked_for_and_accepted_in_the_banner(stack, open_console):
    address, _, token = verified_login(stack)
    accept_current_policy(stack, token)
    console = open_console()
    page = console.page
    console.sign_in(address, PASSWORD)
    assert page.get_by_role("region", name=BANNER).count() == 0

    version = f"2026-banner-{uuid.uuid4().hex[:6]}"
    publish_policy(stack, version, "We now keep generated videos for 60 days.")
    eventually(lambda: me(stack, token)["policy"]["acceptance_required"], 30,
               "the new version to be required")
    console.goto("/gallery")  # any page: the banner is part of the layout
    console.heading("Gallery")
    banner = page.get_by_role("region", name=BANNER)
    banner.wait_for()
    assert version in banner.inner_text()
    console.visit("policy-banner")
    banner.get_by_role("button", name=f"Accept version {version}").click()
    banner.wait_for(state="detached")
    profile = me(stack, page.evaluate("localStorage.getItem('darkroom.session')"))["policy"]
    assert (profile["accepted"], profile["acceptance_required"]) == (version, False)
    console.goto("/account")  # a new page load asks /v1/me again: still accepted
    console.heading("Account")
    assert page.get_by_role("region", name=BANNER).count() == 0


def test_a_video_job_shows_its_progress_and_a_queued_one_is_cancelled(stack, open_console,
                                                                      tmp_path):
    address, _, token = verified_login(stack)

    def balance() -> dict:
        return stack.call("GET", "/v1/billing/balance", token=token).json()

    granted = eventually(lambda: (b := balance())["available"] > 0 and b["available"], 30,
                         "the signup grant")
    accept_current_policy(stack, token)
    console = open_console()
    page = console.page
    console.sign_in(address, PASSWORD)
    source = tmp_path / "source.png"
    Image.new("RGB", (128, 96), "teal").save(source, "PNG")
    page.get_by_label("Job type").select_option("image-to-video")
    page.get_by_label("Source image (PNG, JPEG or WebP)").set_input_files(str(source))
    page.get_by_alt_text("The uploaded source image").wait_for()
    page.get_by_label("Prompt").fill("the waves rolling in")
    generate = page.get_by_role("button", name="Generate", exact=True)
    status = page.get_by_test_id("job-status")
    slow = stack.video.polls_to_finish
    stack.video.polls_to_finish = 150  # ~15 s of polls, each a step of progress
    try:
        generate.click()
        eventually(lambda: status.inner_text() == "running", 60, "the video job running")
        progress = page.get_by_test_id("job-progress")
        eventually(lambda: progress.count() and 0 < int(progress.inner_text().strip(" ·%done")) < 100,
                   30, "progress shown")
        assert int(page.get_by_role("progressbar", name="Progress").get_attribute("value")) > 0
        # a running job is not cancellable (the API says not_cancellable): no button
        assert page.get_by_role("button", name="Cancel").count() == 0
        console.visit("generate-video-progress")
        first = stack.call("GET", "/v1/generations", token=token).json()["items"][0]
        assert (first["type"], first["status"]) == ("image-to-video", "running")

        # a second one waits behind it, holding its credits, and is cancelled
        generate.click()
        eventually(lambda: page.get_by_role("heading", name=f"Job …{first['id'][-8:]}").count() == 0
                   and status.inner_text() == "reserved", 30, "the second job waiting, held")
        second = stack.call("GET", "/v1/generations", token=token).json()["items"][0]
        assert second["id"] != first["id"] and second["status"] == "reserved"
        page.get_by_role("heading", name=f"Job …{second['id'][-8:]}").wait_for()
        assert balance()["held"] == first["price"] + second["price"]
        page.get_by_role("button", name="Cancel").click()
        eventually(lambda: status.inner_text() == "cancelled", 30, "the job cancelled")
        page.get_by_role("status").filter(has_text="credits held for it are released").wait_for()
        console.visit("generate-video-cancelled", shot=False)
        cancelled = stack.call("GET", f"/v1/generations/{second['id']}", token=token).json()
        assert cancelled["status"] == "cancelled"
        eventually(lambda: balance()["held"] == first["price"], 30, "the hold released")
    finally:
        stack.video.polls_to_finish = slow  # the first one's next poll ends it
    done = eventually(lambda: (j := stack.call("GET", f"/v1/generations/{first['id']}",
                                               token=token).json())["status"] in
                      ("succeeded", "failed") and j, 90, "the first video job to end")
    assert done["status"] == "succeeded", done
    eventually(lambda: balance()["held"] == 0, 30, "the credits to settle")
    assert balance()["available"] == granted - first["price"]
    console.goto("/billing")
    console.heading("Credits")
    eventually(lambda: page.get_by_test_id("balance").inner_text() == str(granted - first["price"]),
               30, "the balance shown")
