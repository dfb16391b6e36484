"""Generate from a template: its inputs become fields (enums as choices), a
missing required one is the API's per-field error, and the dry run prices it."""

from __future__ import annotations

import pytest

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
