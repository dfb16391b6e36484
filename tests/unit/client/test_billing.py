"""Checkout through a chosen provider, and the capture of a PayPal order."""

from __future__ import annotations

import json

import pytest
from darkroom_client import DarkroomError

from tests.unit.client.conftest import answer, error

ORDER = "0190a5c3-0000-7000-8000-0000000000a1"


def test_checkout_names_the_provider(api, client):
    api.answer_with("POST", "/v1/billing/checkout",
                    answer(201, {"order_id": ORDER, "checkout_url": "https://paypal.test/a"}))
    assert client.checkout(pack_id="small", provider="paypal")["order_id"] == ORDER
    client.checkout(pack_id="small")
    first, second = api.calls("POST", "/v1/billing/checkout")
    assert json.loads(first.body) == {"pack_id": "small", "provider": "paypal"}
    assert json.loads(second.body) == {"pack_id": "small"}


def test_capture_posts_to_the_order_and_reports_a_decline(api, client):
    path = f"/v1/billing/orders/{ORDER}/capture"
    api.answer_with("POST", path, answer(200, {"id": ORDER, "status": "paid"}),
                    error(402, "payment_declined", "declined",
                          {"checkout_url": "https://paypal.test/a"}))
    assert client.capture(ORDER)["status"] == "paid"
    with pytest.raises(DarkroomError) as info:
        client.capture(ORDER)
    assert (info.value.status, info.value.code) == (402, "payment_declined")
    assert len(api.calls("POST", path)) == 2
