"""One public base URL: the e2e stack runs the gateway on a random port (never
8000) and sets only ``PUBLIC_BASE_URL`` (tests/e2e/conftest.py). Every URL
Darkroom hands out must start with it: the signed URL of a stored image (and the
redirect to it), the link of a mail, and the return URLs a checkout sends to
Stripe. Each of them is then used, where the stack serves it."""

from __future__ import annotations

import io
import re

import pytest
import requests
from PIL import Image

from tests.conftest import wait_for
from tests.e2e.stack import body_text, register, verified_login

pytestmark = pytest.mark.e2e


def png() -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (16, 12), (200, 40, 40)).save(out, "PNG")
    return out.getvalue()


def test_the_stack_runs_on_a_port_of_its_own_and_names_it_once(stack):
    assert not stack.base_url.endswith(":8000")
    assert stack.env["PUBLIC_BASE_URL"] == stack.base_url
    assert not {"STORAGE_PUBLIC_BASE_URL", "APP_BASE_URL"} & set(stack.env)


def test_signed_file_urls_start_with_the_public_base_and_work(stack):
    _, _, token = verified_login(stack)
    uploaded = stack.call("POST", "/v1/uploads", token=token,
                          files={"file": ("red.png", png(), "image/png")})
    assert uploaded.status_code == 201, uploaded.text
    image = stack.call("GET", f"/v1/images/{uploaded.json()['id']}", token=token).json()
    assert image["url"].startswith(stack.base_url + "/v1/files/"), image["url"]
    assert requests.get(image["url"], timeout=10).status_code == 200
    redirect = stack.call("GET", f"/v1/images/{image['id']}/content", token=token,
                          allow_redirects=False)
    assert redirect.status_code == 302
    assert redirect.headers["Location"].startswith(stack.base_url + "/v1/files/")


def test_mail_links_start_with_the_public_base(stack):
    address, _ = register(stack)
    assert stack.call("POST", "/v1/auth/password-reset",
                      json={"email": address}).status_code == 202
    mail = wait_for(lambda: next((m for m in stack.mails_to(address)
                                  if "?token=" in body_text(m)), None), 30, what="reset mail")
    links = re.findall(r"https?://[^\s\"'<>]+", body_text(mail))
    assert links and all(link.startswith(stack.base_url + "/") for link in links), links
    assert any(link.startswith(stack.base_url + "/reset-password?token=") for link in links)


def test_checkout_return_urls_start_with_the_public_base(stack):
    _, _, token = verified_login(stack)
    created = stack.call("POST", "/v1/billing/checkout", token=token, json={"pack_id": "small"})
    assert created.status_code == 201, created.text
    order_id = created.json()["order_id"]
    sent = next(r.form for r in stack.stripe.requests
                if r.form.get("client_reference_id") == order_id)
    assert sent["success_url"] == f"{stack.base_url}/checkout/success?order_id={order_id}"
    assert sent["cancel_url"] == f"{stack.base_url}/checkout/cancel?order_id={order_id}"
