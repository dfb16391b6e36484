"""Credits and payments: every /v1/billing endpoint against a fake billing RPC
surface (tests/integration and tests/e2e run them against the real service)."""

from __future__ import annotations

import hashlib
import hmac
import io
import json
import re
import time
import uuid

import pytest
from openapi_spec_validator import validate

from gateway.api.billing import DEFAULT_WEBHOOK_MAX_BYTES, PAYPAL_HEADERS
from gateway.api.common import IDEMPOTENCY_KEY_DOC
from gateway.rpc import ServiceUnavailable
from services.common.errors import DomainError
from tests.unit.gateway.conftest import (
    APIKEY,
    BEARER,
    NOW,
    UNVERIFIED_ID,
    UNVERIFIED_TOKEN,
    USER_ID,
    FakeRpcService,
)

UNVERIFIED = {"Authorization": f"Bearer {UNVERIFIED_TOKEN}"}  # another user, email unverified
WEBHOOK_SECRET = "whsec_unit"
BALANCE_FIELDS = {"available", "held", "plan", "period_start", "period_end",
                  "granted_this_period", "used_this_period", "plan_expires_at"}
ENTRY_FIELDS = {"id", "kind", "amount", "held_change", "balance_after", "job_id", "order_id",
                "created_at", "expires_at", "attempt", "reason"}
ORDER_FIELDS = {"id", "kind", "item_id", "description", "credits", "amount", "currency", "status",
                "created_at", "paid_at", "amount_refunded"}
PACKS = {"starter": {"credits": 500, "amount": 900}, "studio": {"credits": 3000, "amount": 4500}}
PLANS = {"free": None, "pro": 1900}


def error_of(response) -> dict:
    return response.get_json()["error"]


def sign(body: bytes, secret: str = WEBHOOK_SECRET, at: int | None = None) -> str:
    at = int(time.time()) if at is None else at
    digest = hmac.new(secret.encode(), f"{at}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={at},v1={digest}"


class FakeBilling(FakeRpcService):
    """The billing service's RPC surface the gateway uses, in memory, per user.

    The webhook is verified like the real one (HMAC-SHA256 of ``t.body``), so a
    body altered on its way through the gateway fails here too; it is
    idempotent on the Stripe event id.
    """

    def __init__(self):
        super().__init__()
        self.entries: dict[str, list[dict]] = {}
        self.orders: dict[str, list[dict]] = {}
        self.checkouts: dict[tuple[str, str], tuple[dict, dict]] = {}
        self.stripe_events: set[str] = set()
        self.subscriptions: dict[str, dict] = {}

    def grant(self, user_id: str, amount: int, kind: str = "grant") -> dict:
        entries = self.entries.setdefault(user_id, [])
        balance = (entries[0]["balance_after"] if entries else 0) + amount
        entry = {"id": str(uuid.uuid4()), "kind": kind, "amount": amount, "held_change": 0,
                 "balance_after": balance, "job_id": None, "order_id": None, "created_at": NOW,
                 "expires_at": None, "attempt": None, "reason": None,
                 "idempotency_key": f"internal:{uuid.uuid4()}"}  # never shown to clients
        entries.insert(0, entry)
        return entry

    # -- the surface (rpc_ prefix: see FakeRpcService)

    def rpc_ping(self):
        return {"service": "billing", "ok": True}

    def rpc_get_balance(self, user_id):
        entries = self.entries.get(user_id, [])
        return {"available": entries[0]["balance_after"] if entries else 0, "held": 0,
                "plan": "free", "period_start": "2026-01-01T00:00:00Z",
                "period_end": "2026-02-01T00:00:00Z",
                "granted_this_period": sum(e["amount"] for e in entries if e["kind"] == "grant"),
                "used_this_period": 0, "plan_expires_at": None, "account_id": "internal"}

    def rpc_list_ledger(self, user_id, query=None):
        query = query or {}
        limit = query.get("limit", 20)
        items = self.entries.get(user_id, [])
        start = int(query["cursor"]) if query.get("cursor") else 0
        page = items[start:start + limit]
        more = start + limit < len(items)
        return {"items": page, "next_cursor": str(start + limit) if more else None}

    def rpc_list_orders(self, user_id, query=None):
        return {"items": self.orders.get(user_id, [])[: (query or {}).get("limit", 20)],
                "next_cursor": None}

    def rpc_list_plans(self):
        return {"items": [
            {"id": plan_id, "name": plan_id.title(),
             "price": None if amount is None else {"amount": amount, "currency": "eur"},
             "signup_grant": 50 if plan_id == "free" else 0,
             "monthly_grant": 20 if plan_id == "free" else 500,
             "retention_days": 30, "priority": 0, "stripe_price": "internal"}
            for plan_id, amount in PLANS.items()]}

    def rpc_list_prices(self):
        return {"currency": "credits",
                "job_types": [{"type": "text-to-image", "unit": "image", "area_pixels": 262144,
                               "credits_per_area": 1, "default_size": "1024x1024",
                               "credits_per_second": None, "credits_per_shot": None,
                               "default_duration_s": None, "minimum": 1}],
                "packs": [{"id": pack_id, "name": pack_id.title(), "credits": p["credits"],
                           "price": {"amount": p["amount"], "currency": "eur"}, "expires_days": 365}
                          for pack_id, p in PACKS.items()]}

    def rpc_create_checkout(self, user_id, payload, idempotency_key=None):
        if idempotency_key is not None and (user_id, idempotency_key) in self.checkouts:
            first_payload, answer = self.checkouts[(user_id, idempotency_key)]
            if first_payload != payload:
                raise DomainError("idempotency_key_reused",
                                  "this Idempotency-Key was used with another body", 409)
            return answer
        if payload.get("pack_id") is not None and payload["pack_id"] not in PACKS:
            raise DomainError("not_found", "pack not found", 404)
        if payload.get("plan_id") == "free":
            raise DomainError("conflict", "the free plan is not for sale", 409)
        order_id = str(uuid.uuid4())
        answer = {"order_id": order_id,
                  "checkout_url": f"https://checkout.stripe.test/c/pay/cs_test_{order_id[:8]}",
                  "session_id": "cs_internal"}
        pack = PACKS.get(payload.get("pack_id"), {"credits": 500, "amount": 1900})
        self.orders.setdefault(user_id, []).insert(0, {
            "id": order_id, "kind": "pack" if "pack_id" in payload else "plan",
            "item_id": payload.get("pack_id") or payload.get("plan_id"), "description": "x",
            "credits": pack["credits"], "amount": pack["amount"], "currency": "eur",
            "status": "pending", "created_at": NOW, "paid_at": None, "amount_refunded": None,
            "provider_session_id": "cs_internal"})
        if idempotency_key is not None:
            self.checkouts[(user_id, idempotency_key)] = (payload, answer)
        return answer

    def rpc_get_subscription(self, user_id):
        if user_id not in self.subscriptions:
            raise DomainError("not_found", "subscription not found", 404)
        return self.subscriptions[user_id]

    def rpc_cancel_subscription(self, user_id):
        if user_id not in self.subscriptions:
            raise DomainError("not_found", "subscription not found", 404)
        self.subscriptions[user_id]["cancel_at_period_end"] = True
        return self.subscriptions[user_id]

    def rpc_portal_link(self, user_id):
        if user_id not in self.subscriptions:
            raise DomainError("not_found", "subscription not found", 404)
        return {"url": "https://billing.stripe.test/p/session/x", "customer": "cus_internal"}

    def rpc_handle_stripe_webhook(self, payload, signature=None):
        if not isinstance(payload, str):
            raise AssertionError(f"the raw body must arrive as a str, not {type(payload)}")
        fields = dict(part.split("=", 1) for part in (signature or "").split(",") if "=" in part)
        expected = hmac.new(WEBHOOK_SECRET.encode(), f"{fields.get('t')}.{payload}".encode(),
                            hashlib.sha256).hexdigest()
        if not hmac.compare_digest(expected, fields.get("v1", "")):
            raise DomainError("invalid_signature", "the Stripe signature does not match", 400)
        try:
            event = json.loads(payload)
        except ValueError:
            raise DomainError("invalid_request", "the body is not JSON", 400) from None
        duplicate = event["id"] in self.stripe_events
        self.stripe_events.add(event["id"])
        return {"received": True, "duplicate": duplicate}

    def rpc_capture_order(self, user_id, order_id):
        order = next((o for o in self.orders.get(user_id, []) if o["id"] == order_id), None)
        if order is None:
            raise DomainError("not_found", "order not found", 404)
        if order["item_id"] == "declined":
            raise DomainError("payment_declined", "PayPal declined the payment", 402,
                              {"checkout_url": "https://www.sandbox.paypal.com/checkoutnow"})
        order.update(status="paid", paid_at=NOW)
        return order

    def rpc_handle_paypal_webhook(self, payload, headers=None):
        if not isinstance(payload, str):
            raise AssertionError(f"the raw body must arrive as a str, not {type(payload)}")
        if set(headers or {}) != set(PAYPAL_HEADERS):
            raise DomainError("invalid_signature", "the webhook signature is not valid", 400)
        return {"received": True, "duplicate": False}


@pytest.fixture
def billing(pool) -> FakeBilling:
    fake = FakeBilling()
    pool.services["billing"] = fake
    return fake


# ------------------------------------------------------------ balance and ledger


def test_balance_is_the_callers_with_the_documented_fields(client, billing):
    billing.grant(USER_ID, 50)
    for headers in (BEARER, APIKEY):
        response = client.get("/v1/billing/balance", headers=headers)
        assert response.status_code == 200
        body = response.get_json()
        assert set(body) == BALANCE_FIELDS  # nothing internal leaks through
        assert (body["available"], body["granted_this_period"], body["plan"]) == (50, 50, "free")
        assert body["period_start"] == "2026-01-01T00:00:00+00:00"
        assert response.headers["Cache-Control"] == "no-store"
    assert [args for args, _ in billing.called("get_balance")] == [(USER_ID,), (USER_ID,)]


@pytest.mark.parametrize("path", ["/v1/billing/balance", "/v1/billing/ledger",
                                  "/v1/billing/orders"])
def test_the_callers_billing_needs_authentication(client, billing, path):
    response = client.get(path)
    assert response.status_code == 401
    assert error_of(response)["code"] == "unauthenticated"
    assert billing.calls == []


def test_ledger_pages_newest_first_and_only_the_callers(client, billing):
    grants = [billing.grant(USER_ID, amount) for amount in (50, 20, 5)]
    billing.grant(UNVERIFIED_ID, 999)  # someone else's
    first = client.get("/v1/billing/ledger?limit=2", headers=BEARER)
    assert first.status_code == 200
    page = first.get_json()
    assert [e["id"] for e in page["items"]] == [grants[2]["id"], grants[1]["id"]]
    assert set(page["items"][0]) == ENTRY_FIELDS  # idempotency keys stay inside billing
    assert page["items"][0]["balance_after"] == 75 and page["items"][0]["held_change"] == 0
    second = client.get(f"/v1/billing/ledger?limit=2&cursor={page['next_cursor']}",
                        headers=BEARER).get_json()
    assert [e["id"] for e in second["items"]] == [grants[0]["id"]]
    assert second["next_cursor"] is None
    assert billing.called("list_ledger") == [((USER_ID, {"limit": 2}), {}),
                                             ((USER_ID, {"limit": 2, "cursor": "2"}), {})]
    others = client.get("/v1/billing/ledger", headers=UNVERIFIED).get_json()["items"]
    assert [e["amount"] for e in others] == [999]
    # naming another user in the query changes nothing: the caller is the principal
    sneaky = client.get(f"/v1/billing/ledger?user_id={UNVERIFIED_ID}", headers=BEARER)
    assert [e["amount"] for e in sneaky.get_json()["items"]] == [5, 20, 50]
    assert billing.called("list_ledger")[-1][0][0] == USER_ID


@pytest.mark.parametrize("path", ["/v1/billing/ledger", "/v1/billing/orders"])
@pytest.mark.parametrize("query", ["limit=0", "limit=101", "limit=ten", "cursor=", "limit=-3"])
def test_bad_list_queries_are_400(client, billing, path, query):
    response = client.get(f"{path}?{query}", headers=BEARER)
    assert response.status_code == 400
    assert error_of(response)["code"] == "invalid_request"
    assert error_of(response)["details"]["fields"]
    assert billing.calls == []


def test_orders_are_the_callers(client, billing):
    created = client.post("/v1/billing/checkout", headers=BEARER, json={"pack_id": "starter"})
    assert created.status_code == 201
    response = client.get("/v1/billing/orders", headers=BEARER)
    assert response.status_code == 200
    [order] = response.get_json()["items"]
    assert set(order) == ORDER_FIELDS
    assert (order["id"], order["status"], order["credits"]) == \
        (created.get_json()["order_id"], "pending", 500)
    assert client.get("/v1/billing/orders", headers=UNVERIFIED).get_json()["items"] == []


# ------------------------------------------------------------ public lists


def test_plans_and_prices_need_no_credential(client, billing, auth):
    plans = client.get("/v1/billing/plans")
    assert plans.status_code == 200
    items = plans.get_json()["items"]
    assert [p["id"] for p in items] == ["free", "pro"]
    assert items[0]["price"] is None
    assert items[1]["price"] == {"amount": 1900, "currency": "eur"}
    assert "stripe_price" not in items[1]
    prices = client.get("/v1/billing/prices")
    assert prices.status_code == 200
    body = prices.get_json()
    assert body["currency"] == "credits"
    assert body["job_types"][0]["type"] == "text-to-image"
    assert {p["id"]: p["credits"] for p in body["packs"]} == {"starter": 500, "studio": 3000}
    assert auth.called("authenticate") == []


# ------------------------------------------------------------ checkout


def test_checkout_of_a_pack(client, billing):
    response = client.post("/v1/billing/checkout", headers=BEARER, json={"pack_id": "starter"})
    assert response.status_code == 201
    body = response.get_json()
    assert set(body) == {"order_id", "checkout_url"}
    assert body["checkout_url"].startswith("https://checkout.stripe.test/")
    assert billing.called("create_checkout") == [
        ((USER_ID, {"pack_id": "starter"}), {"idempotency_key": None})]


def test_checkout_of_a_plan_with_an_api_key(client, billing):
    response = client.post("/v1/billing/checkout", headers=APIKEY, json={"plan_id": "pro"})
    assert response.status_code == 201
    assert billing.called("create_checkout")[0][0] == (USER_ID, {"plan_id": "pro"})


def test_checkout_needs_a_verified_email(client, billing):
    response = client.post("/v1/billing/checkout", headers=UNVERIFIED, json={"pack_id": "starter"})
    assert response.status_code == 403
    assert error_of(response)["code"] == "email_unverified"
    assert client.post("/v1/billing/checkout", json={"pack_id": "starter"}).status_code == 401
    assert billing.calls == []


@pytest.mark.parametrize("body", [
    {}, {"pack_id": "starter", "plan_id": "pro"}, {"pack_id": "Starter Pack!"},
    {"pack_id": 5}, {"pack_id": "starter", "quantity": 2}, [], "starter",
])
def test_checkout_rejects_bad_bodies(client, billing, body):
    response = client.post("/v1/billing/checkout", headers=BEARER, json=body)
    assert response.status_code == 400
    assert error_of(response)["code"] == "invalid_request"
    assert billing.calls == []


def test_checkout_body_must_be_json(client, billing):
    response = client.post("/v1/billing/checkout", headers=BEARER, data="pack_id=starter",
                           content_type="application/x-www-form-urlencoded")
    assert response.status_code == 415
    assert error_of(response)["code"] == "unsupported_media_type"
    assert billing.calls == []


def test_checkout_honours_idempotency_key(client, billing):
    headers = {**BEARER, "Idempotency-Key": "  order-42 "}
    first = client.post("/v1/billing/checkout", headers=headers, json={"pack_id": "starter"})
    again = client.post("/v1/billing/checkout", headers=headers, json={"pack_id": "starter"})
    assert first.status_code == again.status_code == 201
    assert first.get_json() == again.get_json()
    assert billing.called("create_checkout")[0][1] == {"idempotency_key": "order-42"}
    other = client.post("/v1/billing/checkout", headers=headers, json={"pack_id": "studio"})
    assert other.status_code == 409
    assert error_of(other)["code"] == "idempotency_key_reused"
    assert len(billing.orders[USER_ID]) == 1


@pytest.mark.parametrize("key", ["", "   ", "k" * 201, "tab\there"])
def test_an_unusable_idempotency_key_is_400(client, billing, key):
    response = client.post("/v1/billing/checkout", headers={**BEARER, "Idempotency-Key": key},
                           json={"pack_id": "starter"})
    assert response.status_code == 400
    assert "Idempotency-Key" in error_of(response)["details"]["fields"]
    assert billing.calls == []


@pytest.mark.parametrize("key, usable", [
    ("", False), ("   ", False), ("k" * 201, False), ("tab\there", False),
    ("order-1", True), (" padded key ", True), ("k" * 200, True),
])
def test_the_documented_idempotency_key_is_the_one_the_gateway_takes(client, billing, key,
                                                                      usable):
    """The OpenAPI schema of the header refuses what the gateway refuses (fuzzing relies on it)."""
    schema = IDEMPOTENCY_KEY_DOC["schema"]
    documented = (schema["minLength"] <= len(key) <= schema["maxLength"]
                  and re.fullmatch(schema["pattern"], key) is not None)
    response = client.post("/v1/billing/checkout", headers={**BEARER, "Idempotency-Key": key},
                           json={"pack_id": "small"})
    assert documented == usable == (response.status_code != 400)


@pytest.mark.parametrize("payload, status, code", [
    ({"pack_id": "unknown"}, 404, "not_found"),
    ({"plan_id": "free"}, 409, "conflict"),
])
def test_checkout_refusals_are_passed_through(client, billing, payload, status, code):
    response = client.post("/v1/billing/checkout", headers=BEARER, json=payload)
    assert response.status_code == status
    assert error_of(response)["code"] == code


def test_payment_provider_down_is_503(client, billing):
    billing.fail_with["create_checkout"] = DomainError(
        "payment_provider_unavailable", "the payment provider is not answering", 503)
    response = client.post("/v1/billing/checkout", headers=BEARER, json={"pack_id": "starter"})
    assert response.status_code == 503
    assert error_of(response)["code"] == "payment_provider_unavailable"


def test_billing_service_away_is_503(client, billing):
    billing.fail_with["get_balance"] = ServiceUnavailable()
    response = client.get("/v1/billing/balance", headers=BEARER)
    assert response.status_code == 503
    assert error_of(response)["code"] == "service_unavailable"
    assert response.headers["Retry-After"] == "5"


# ------------------------------------------------------------ the Stripe webhook


def stripe_event(event_id: str = "evt_1", **extra) -> bytes:
    # odd spacing and key order on purpose: the signature covers these exact bytes
    return json.dumps({"id": event_id, "type": "checkout.session.completed",
                       "data": {"object": {"id": "cs_test_1", "note": "caf\u00e9"}}, **extra},
                      indent=1, ensure_ascii=False).encode()


def post_webhook(client, body: bytes, signature: str | None, **kwargs):
    headers = {"Stripe-Signature": signature} if signature is not None else {}
    return client.post("/v1/billing/webhooks/stripe", data=body, headers=headers,
                       content_type="application/json; charset=utf-8", **kwargs)


def test_webhook_passes_the_raw_body_and_signature(client, billing, auth):
    body = stripe_event()
    signature = sign(body)
    response = post_webhook(client, body, signature)
    assert response.status_code == 200, response.get_json()
    assert response.get_json() == {"received": True}
    [((payload, passed_signature), _)] = billing.called("handle_stripe_webhook")
    assert payload.encode("utf-8") == body and passed_signature == signature
    assert auth.calls == []  # no credential involved


def test_the_same_webhook_twice_is_200_both_times(client, billing):
    body = stripe_event("evt_twice")
    assert post_webhook(client, body, sign(body)).status_code == 200
    assert post_webhook(client, body, sign(body)).status_code == 200
    assert len(billing.called("handle_stripe_webhook")) == 2


@pytest.mark.parametrize("signature", [None, "", "t=1,v1=00", "garbage"])
def test_a_bad_signature_is_400(client, billing, signature):
    response = post_webhook(client, stripe_event(), signature)
    assert response.status_code == 400
    assert error_of(response)["code"] == "invalid_signature"
    assert billing.called("handle_stripe_webhook")[0][0][1] == signature


def test_a_signature_of_other_bytes_is_400(client, billing):
    signature = sign(stripe_event())
    tampered = stripe_event(amount_total=1)
    response = post_webhook(client, tampered, signature)
    assert response.status_code == 400
    assert error_of(response)["code"] == "invalid_signature"


def test_a_webhook_body_over_the_cap_is_413_before_billing(client, billing):
    body = stripe_event(padding="x" * DEFAULT_WEBHOOK_MAX_BYTES)
    response = post_webhook(client, body, sign(body))
    assert response.status_code == 413
    assert error_of(response) == {
        "code": "payload_too_large",
        "message": f"the body is larger than {DEFAULT_WEBHOOK_MAX_BYTES} bytes",
        "details": {"max_bytes": DEFAULT_WEBHOOK_MAX_BYTES}}
    assert billing.calls == []


def test_the_webhook_cap_is_configurable_and_holds_for_chunked_bodies(make_app, pool, billing):
    client = make_app(BILLING_WEBHOOK_MAX_BYTES=1000).test_client()
    small = stripe_event()
    assert post_webhook(client, small, sign(small)).status_code == 200
    body = stripe_event(padding="x" * 1000)
    response = client.post("/v1/billing/webhooks/stripe", input_stream=io.BytesIO(body),
                           headers={"Stripe-Signature": sign(body)},
                           content_type="application/json",
                           environ_overrides={"wsgi.input_terminated": True})
    assert response.status_code == 413
    assert error_of(response)["details"] == {"max_bytes": 1000}
    assert len(billing.called("handle_stripe_webhook")) == 1


def test_a_webhook_body_that_is_not_utf8_is_400(client, billing):
    body = b'{"id": "evt_\xff"}'
    response = post_webhook(client, body, sign(body))
    assert response.status_code == 400
    assert error_of(response)["code"] == "invalid_request"
    assert billing.calls == []


def test_a_webhook_body_that_is_not_json_is_400_from_billing(client, billing):
    body = b"not json at all"
    response = post_webhook(client, body, sign(body))
    assert response.status_code == 400
    assert error_of(response)["code"] == "invalid_request"


def test_a_credential_on_the_webhook_is_not_needed_nor_checked(client, billing, auth):
    body = stripe_event("evt_with_header")
    response = client.post("/v1/billing/webhooks/stripe", data=body,
                           headers={"Stripe-Signature": sign(body),
                                    "Authorization": "Bearer whatever"},
                           content_type="application/json")
    assert response.status_code == 200
    assert auth.called("authenticate") == []


# ------------------------------------------------------------ PayPal


def test_capture_is_the_callers_order(client, billing):
    order_id = client.post("/v1/billing/checkout", json={"pack_id": "starter",
                                                         "provider": "paypal"},
                           headers=BEARER).get_json()["order_id"]
    assert billing.called("create_checkout")[0][0][1] == {"pack_id": "starter",
                                                           "provider": "paypal"}
    response = client.post(f"/v1/billing/orders/{order_id}/capture", headers=BEARER)
    assert response.status_code == 200
    assert (response.get_json()["id"], response.get_json()["status"]) == (order_id, "paid")
    assert billing.called("capture_order")[-1][0] == (USER_ID, order_id)
    assert client.post(f"/v1/billing/orders/{order_id}/capture").status_code == 401
    other = client.post(f"/v1/billing/orders/{uuid.uuid4()}/capture", headers=BEARER)
    assert (other.status_code, error_of(other)["code"]) == (404, "not_found")
    assert client.post("/v1/billing/orders/not-a-uuid/capture", headers=BEARER).status_code == 404


def test_a_declined_capture_is_402_with_the_link(client, billing):
    order_id = client.post("/v1/billing/checkout", json={"plan_id": "declined"},
                           headers=BEARER).get_json()["order_id"]
    response = client.post(f"/v1/billing/orders/{order_id}/capture", headers=BEARER)
    assert response.status_code == 402
    assert error_of(response)["code"] == "payment_declined"
    assert error_of(response)["details"]["checkout_url"].startswith("https://")


def test_checkout_refuses_an_unknown_provider(client, billing):
    response = client.post("/v1/billing/checkout", json={"pack_id": "starter",
                                                         "provider": "bitcoin"}, headers=BEARER)
    assert (response.status_code, error_of(response)["code"]) == (400, "invalid_request")
    assert billing.called("create_checkout") == []


def test_the_paypal_webhook_passes_the_raw_body_and_transmission_headers(client, billing, auth):
    body = b'{"id": "WH-1", "event_type": "PAYMENT.CAPTURE.COMPLETED", "resource": {}}'
    headers = {name: f"value of {name}" for name in PAYPAL_HEADERS}
    response = client.post("/v1/billing/webhooks/paypal", data=body,
                           headers={**headers, "X-Other": "not passed"},
                           content_type="application/json")
    assert response.status_code == 200 and response.get_json() == {"received": True}
    [(args, _)] = billing.called("handle_paypal_webhook")
    assert args == (body.decode(), headers)
    assert auth.called("authenticate") == []
    missing = client.post("/v1/billing/webhooks/paypal", data=body,
                          content_type="application/json")
    assert (missing.status_code, error_of(missing)["code"]) == (400, "invalid_signature")


# ------------------------------------------------------------ the OpenAPI document


def test_openapi_documents_billing(client):
    doc = client.get("/v1/openapi.json").get_json()
    validate(doc)
    paths = {path: set(ops) - {"parameters"} for path, ops in doc["paths"].items()
             if path.startswith("/v1/billing")}
    assert paths == {
        "/v1/billing/balance": {"get"}, "/v1/billing/ledger": {"get"},
        "/v1/billing/plans": {"get"}, "/v1/billing/prices": {"get"},
        "/v1/billing/checkout": {"post"}, "/v1/billing/orders": {"get"},
        "/v1/billing/webhooks/stripe": {"post"}, "/v1/billing/webhooks/paypal": {"post"},
        "/v1/billing/orders/{order_id}/capture": {"post"},
        "/v1/billing/subscription": {"get"}, "/v1/billing/subscription/cancel": {"post"},
        "/v1/billing/portal": {"get"},
    }
    secured = [[{"bearerAuth": []}, {"apiKeyAuth": []}]]
    for path in ("/v1/billing/balance", "/v1/billing/ledger", "/v1/billing/orders"):
        assert [doc["paths"][path]["get"].get("security")] == secured
    assert [doc["paths"]["/v1/billing/checkout"]["post"].get("security")] == secured
    for path in ("/v1/billing/plans", "/v1/billing/prices"):
        assert "security" not in doc["paths"][path]["get"]
    webhook = doc["paths"]["/v1/billing/webhooks/stripe"]["post"]
    assert "security" not in webhook
    assert [p["name"] for p in webhook["parameters"]] == ["Stripe-Signature"]
    paypal = doc["paths"]["/v1/billing/webhooks/paypal"]["post"]
    assert "security" not in paypal
    assert [p["name"] for p in paypal["parameters"]] == list(PAYPAL_HEADERS)
    capture = doc["paths"]["/v1/billing/orders/{order_id}/capture"]["post"]
    assert [capture.get("security")] == secured
    assert {"200", "402", "404", "409"} <= set(capture["responses"])
    checkout = doc["paths"]["/v1/billing/checkout"]["post"]
    assert "Idempotency-Key" in [p["name"] for p in checkout["parameters"]]
    assert checkout["requestBody"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/Checkout"}
    entry = doc["components"]["schemas"]["LedgerEntry"]["properties"]
    assert {"held_change", "balance_after", "expires_at"} <= set(entry)


# ------------------------------------------------------------ subscriptions

SUBSCRIPTION = {"plan": "pro", "status": "active", "cancel_at_period_end": False,
                "current_period_end": "2026-02-10T00:00:00+00:00", "grace_until": None,
                "created_at": "2026-01-10T00:00:00+00:00", "id": "sub_internal"}


def test_the_subscription_endpoints_are_the_callers_own(client, billing):
    billing.subscriptions[USER_ID] = dict(SUBSCRIPTION)
    got = client.get("/v1/billing/subscription", headers=BEARER)
    assert got.status_code == 200
    assert set(got.get_json()) == set(SUBSCRIPTION) - {"id"}  # Stripe's ids stay inside
    cancelled = client.post("/v1/billing/subscription/cancel", headers=APIKEY)
    assert cancelled.status_code == 200 and cancelled.get_json()["cancel_at_period_end"] is True
    portal = client.get("/v1/billing/portal", headers=BEARER)
    assert portal.get_json() == {"url": "https://billing.stripe.test/p/session/x"}
    calls = [args for method in ("get_subscription", "cancel_subscription", "portal_link")
             for args, _ in billing.called(method)]
    assert calls == [(USER_ID,)] * 3
    for method, path in (("GET", "/v1/billing/subscription"),
                         ("POST", "/v1/billing/subscription/cancel"),
                         ("GET", "/v1/billing/portal")):
        other = client.open(path, method=method, headers=UNVERIFIED)
        assert (other.status_code, error_of(other)["code"]) == (404, "not_found")
        assert client.open(path, method=method).status_code == 401
