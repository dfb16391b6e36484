"""Paying through PayPal, through the whole stack: a checkout naming
``provider: paypal``, the buyer's approval at the fake PayPal, the app's
capture on the buyer's return, PayPal's webhook through the gateway
(verified with PayPal; a forged one refused), the receipt, and the
credits granted exactly once."""

from __future__ import annotations

import uuid

import pytest

from tests.conftest import wait_for
from tests.e2e.stack import body_text, verified_login

pytestmark = pytest.mark.e2e

SIGNUP_GRANT = 50
PACK = {"id": "small", "credits": 100, "amount": 500}


def balance(stack, token) -> int:
    response = stack.call("GET", "/v1/billing/balance", token=token)
    assert response.status_code == 200, response.text
    return response.json()["available"]


def post_paypal_event(stack, body: str, headers: dict):
    return stack.call("POST", "/v1/billing/webhooks/paypal", data=body.encode(), headers=headers)


def test_a_pack_bought_through_paypal(stack, fake_paypal):
    address, _, token = verified_login(stack)
    wait_for(lambda: balance(stack, token) == SIGNUP_GRANT, 15, what="the signup grant")
    response = stack.call("POST", "/v1/billing/checkout", token=token,
                          json={"pack_id": PACK["id"], "provider": "paypal"})
    assert response.status_code == 201, response.text
    created = response.json()
    paypal_order = fake_paypal.order_for(created["order_id"])
    assert created["checkout_url"].startswith("https://www.sandbox.paypal.com/checkoutnow?token=")
    capture = f"/v1/billing/orders/{created['order_id']}/capture"

    # back before approving: 409; someone else cannot capture it
    early = stack.call("POST", capture, token=token)
    assert (early.status_code, early.json()["error"]["code"]) == (409, "order_not_approved")
    fake_paypal.approve(paypal_order["id"])
    _, _, stranger = verified_login(stack)
    assert stack.call("POST", capture, token=stranger).status_code == 404
    assert stack.call("POST", f"/v1/billing/orders/{uuid.uuid4()}/capture",
                      token=token).status_code == 404

    # the buyer returns: the app captures
    paid = stack.call("POST", capture, token=token)
    assert paid.status_code == 200, paid.text
    assert (paid.json()["status"], paid.json()["provider"]) == ("paid", "paypal")
    assert balance(stack, token) == SIGNUP_GRANT + PACK["credits"]
    receipt = stack.wait_for_mail(address, count=2)
    assert receipt["X-Darkroom-Template"] == "receipt"
    assert created["order_id"] in body_text(receipt) and "5.00 USD" in body_text(receipt)

    # PayPal's webhook of the capture (and its redelivery): received, nothing more
    body, headers = fake_paypal.webhook(fake_paypal.capture_completed(paypal_order["id"]))
    for _ in range(2):
        answer = post_paypal_event(stack, body, headers)
        assert answer.status_code == 200 and answer.json() == {"received": True}
    assert stack.call("POST", capture, token=token).status_code == 200  # captured again: same
    assert balance(stack, token) == SIGNUP_GRANT + PACK["credits"]

    # a forged delivery: 400, nothing changes
    forged = body.replace(paypal_order["id"], "FORGED")
    refused = post_paypal_event(stack, forged, headers)
    assert (refused.status_code, refused.json()["error"]["code"]) == (400, "invalid_signature")
    missing = post_paypal_event(stack, body, {"Content-Type": "application/json"})
    assert missing.status_code == 400
    assert balance(stack, token) == SIGNUP_GRANT + PACK["credits"]
    ledger = stack.call("GET", "/v1/billing/ledger", token=token).json()["items"]
    assert [e["order_id"] for e in ledger if e["kind"] == "purchase"] == [created["order_id"]]
    assert len(stack.mails_to(address)) == 2


def test_a_provider_not_offered_is_400(stack):
    _, _, token = verified_login(stack)
    response = stack.call("POST", "/v1/billing/checkout", token=token,
                          json={"pack_id": PACK["id"], "provider": "cash"})
    assert (response.status_code, response.json()["error"]["code"]) == (400, "invalid_request")
