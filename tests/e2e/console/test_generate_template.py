"""Generate from a template: its inputs become fields (enums as choices), a
missing required one is the API's per-field error, and the dry run prices it.
And image-to-image from a source uploaded on the page."""

from __future__ import annotations

import pytest
from PIL import Image

from tests.e2e.console.conftest import eventually
from tests.e2e.stack import PASSWORD, verified_login

pytestmark = pytest.mark.e2e


def test_a_template_asks_its_inputs_and_is_priced(stack, open_console):
    address, _, _ = verified_login(stack)
    console = open_console()
    page = console.page
    console.sign_in(address, PASSWORD)
    page.get_by_label("Template").select_option("poster")
    assert page.get_by_label("Prompt").count() == 0  # a template's inputs instead of a prompt
    assert page.get_by_label("style (optional)").input_value() == "minimalist"
    page.get_by_label("title", exact=True).fill("Jazz by the river")
    page.get_by_role("button", name="Show the price").click()
    alert = page.get_by_role("alert")
    alert.wait_for()
    assert "invalid_request" in alert.inner_text() and "theme" in alert.inner_text()
    page.get_by_label("theme", exact=True).fill("a jazz night by the river")
    page.get_by_label("style (optional)").select_option("retro")
    page.get_by_role("button", name="Show the price").click()
    assert int(page.get_by_test_id("price").inner_text()) > 0
    console.visit("generate-template", shot=False)


def test_image_to_image_from_an_uploaded_source(stack, open_console, tmp_path):
    address, _, _ = verified_login(stack)
    console = open_console()
    page = console.page
    console.sign_in(address, PASSWORD)
    page.get_by_label("Job type").select_option("image-to-image")
    generate = page.get_by_role("button", name="Generate", exact=True)
    assert generate.is_disabled()  # a source image first
    source = tmp_path / "source.png"
    Image.new("RGB", (128, 96), "orange").save(source, "PNG")
    page.get_by_label("Source image (PNG, JPEG or WebP)").set_input_files(str(source))
    page.get_by_alt_text("The uploaded source image").wait_for()
    page.get_by_label("Prompt").fill("the same, as a watercolour")
    generate.click()
    status = page.get_by_test_id("job-status")
    eventually(lambda: status.inner_text() == "succeeded", 120, "the image-to-image job")
    assert page.locator(".results img").count() >= 1
    # a file that is no image: the API's code, shown
    bad = tmp_path / "notes.png"
    bad.write_text("not an image at all")
    page.get_by_label("Source image (PNG, JPEG or WebP)").set_input_files(str(bad))
    page.get_by_role("alert").filter(has_text="unsupported_media_type").wait_for()
