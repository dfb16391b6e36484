"""The gallery's pages and filters in Chromium, through the shared e2e stack:
more objects than a page holds (13 uploads and a generated output; the
console asks 12 a page), paged older and newer without losing or repeating
one, the outputs and the uploads apart, the pager driven by the keyboard, and
on a phone-sized screen nothing wider than the screen."""

from __future__ import annotations

import io

import pytest
from PIL import Image

from tests.e2e.console.conftest import PHONE, eventually
from tests.e2e.stack import PASSWORD, verified_login

pytestmark = pytest.mark.e2e

PAGE_SIZE = 12  # console/src/pages/gallery.tsx
UPLOADS = 13


def png(shade: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (64, 48), (shade, 90, 160)).save(buf, "PNG")
    return buf.getvalue()


def test_the_gallery_pages_and_filters_uploads_and_outputs(stack, open_console):
    address, _, token = verified_login(stack)
    uploads = []
    for n in range(UPLOADS):
        answer = stack.call("POST", "/v1/uploads", token=token,
                            files={"file": (f"photo-{n}.png", png(10 * n), "image/png")})
        assert answer.status_code == 201, answer.text
        uploads.append(answer.json()["id"])
    job = stack.call("POST", "/v1/generations", token=token,
                     json={"type": "text-to-image", "prompt": "a lighthouse at dusk"})
    assert job.status_code == 202, job.text
    done = eventually(lambda: (j := stack.call("GET", f"/v1/generations/{job.json()['id']}",
                                               token=token).json())["status"] in
                      ("succeeded", "failed", "rejected") and j, 120, "the job")
    assert done["status"] == "succeeded", done
    outputs = done["outputs"]
    assert len(outputs) == 1
    everything = set(uploads) | set(outputs)

    console = open_console(viewport=PHONE)
    page = console.page
    console.sign_in(address, PASSWORD)
    console.goto("/gallery")
    console.heading("Gallery")
    cards = page.locator("li.card")
    newer = page.get_by_role("button", name="Newer")
    older = page.get_by_role("button", name="Older")

    def shown() -> list[str]:  # read at once: the list changes under a page's load
        return page.evaluate("[...document.querySelectorAll('li.card')]"
                             ".map(c => c.dataset.imageId)")

    eventually(lambda: cards.count() == PAGE_SIZE, 30, "the first page")
    first = shown()
    assert newer.is_disabled() and older.is_enabled()
    assert page.get_by_role("button", name="Everything").get_attribute("aria-pressed") == "true"
    assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
    console.visit("gallery-phone", shot=False)

    # the pager by keyboard: focus "Older", Enter
    older.focus()
    page.keyboard.press("Enter")
    eventually(lambda: cards.count() == len(everything) - PAGE_SIZE
               and set(shown()).isdisjoint(first), 30, "the second page")
    second = shown()
    assert set(first) | set(second) == everything
    assert "cursor=" in page.url and newer.is_enabled() and older.is_disabled()
    console.visit("gallery-phone-older")
    newer.click()
    eventually(lambda: shown() == first, 30, "back to the first page")
    assert newer.is_disabled()

    # the outputs alone: the generated one, one page
    page.get_by_role("button", name="Outputs").click()
    eventually(lambda: shown() == outputs, 30, "the outputs")
    assert page.get_by_role("button", name="Outputs").get_attribute("aria-pressed") == "true"
    assert "kind=output" in page.url and newer.is_disabled() and older.is_disabled()
    assert "output" in cards.first.locator(".meta").inner_text()

    # the uploads alone: two pages of them, newest first
    page.get_by_role("button", name="Uploads").click()
    eventually(lambda: cards.count() == PAGE_SIZE and set(shown()) <= set(uploads), 30,
               "the uploads' first page")
    assert shown() == list(reversed(uploads))[:PAGE_SIZE]
    older.click()
    eventually(lambda: shown() == list(reversed(uploads))[PAGE_SIZE:], 30,
               "the uploads' second page")
    assert "kind=upload" in page.url and older.is_disabled()
    # a deep link to the filtered page opens as it was left
    console.goto(page.url.removeprefix(stack.base_url))
    eventually(lambda: shown() == list(reversed(uploads))[PAGE_SIZE:], 30, "the deep link")
