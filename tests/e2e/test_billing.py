"""Credits and payments through the whole stack: the signup grant, public
plans and prices, a checkout against the fake Stripe, its signed webhook
through the gateway (raw body), the receipt, a refund, and what a client
must never get (another user's data, a double credit, a 500)."""

from __future__ import annotations

import json

import pytest

from tests.conftest import wait_for
from tests.e2e.stack import body_text, post_stripe_event, register, verified_login
from tests.fakes.stripe import signed_body

pytestmark = pytest.mark.e2e

SIGNUP_GRANT = 50  # the free plan (deploy/config/billing.yaml)
PACK = {"id": "small", "credits": 100, "amount": 500, "currency": "usd"}


@pytest.fixture(scope="module")
def buyer(stack):
    address, _, token = verified_login(stack)
    return address, token


@pytest.fixture(scope="module")
def other(stack):
    return verified_login(stack)[2]


def balance(stack, token) -> dict:
    response = stack.call("GET", "/v1/billing/balance", token=token)
    assert response.status_code == 200, response.text
    return response.json()


def ledger(stack, token, **params) -> list[dict]:
    response = stack.call("GET", "/v1/billing/ledger", token=token, params=params)
    assert response.status_code == 200, response.text
    return response.json()["items"]


def orders(stack, token) -> list[dict]:
    response = stack.call("GET", "/v1/billing/orders", token=token)
    assert response.status_code == 200, response.text
    return response.json()["items"]


def checkout(stack, token, payload, key=None):
    headers = {"Idempotency-Key": key} if key else {}
    return stack.call("POST", "/v1/billing/checkout", token=token, json=payload, headers=headers)


def buy(stack, token, pack_id=PACK["id"]) -> tuple[dict, dict]:
    """A checkout of a pack; returns (the answer, the fake Stripe's session)."""
    response = checkout(stack, token, {"pack_id": pack_id})
    assert response.status_code == 201, response.text
    created = response.json()
    return created, stack.stripe.session_for_order(created["order_id"])


def test_a_new_verified_account_has_its_signup_grant(stack, buyer):
    _, token = buyer
    wait_for(lambda: balance(stack, token)["available"] == SIGNUP_GRANT, 15,
             what="the signup grant")
    now = balance(stack, token)
    assert (now["held"], now["plan"], now["granted_this_period"], now["used_this_period"]) == \
        (0, "free", SIGNUP_GRANT, 0)
    assert now["period_start"] < now["period_end"]
    [grant] = ledger(stack, token)
    assert (grant["kind"], grant["amount"], grant["held_change"], grant["balance_after"]) == \
        ("grant", SIGNUP_GRANT, 0, SIGNUP_GRANT)
    assert grant["job_id"] is None and grant["order_id"] is None


def test_plans_and_prices_are_public(stack):
    plans = stack.call("GET", "/v1/billing/plans")
    assert plans.status_code == 200
    by_id = {p["id"]: p for p in plans.json()["items"]}
    assert by_id["free"]["price"] is None and by_id["free"]["signup_grant"] == SIGNUP_GRANT
    assert by_id["pro"]["price"]["amount"] > 0
    prices = stack.call("GET", "/v1/billing/prices")
    assert prices.status_code == 200
    body = prices.json()
    assert body["currency"] == "credits"
    assert {j["type"] for j in body["job_types"]} == {"text-to-image", "image-to-image",
                                                      "image-to-video"}
    small = next(p for p in body["packs"] if p["id"] == PACK["id"])
    assert (small["credits"], small["price"]) == \
        (PACK["credits"], {"amount": PACK["amount"], "currency": PACK["currency"]})


def test_buying_a_pack_credits_once_and_mails_a_receipt(stack, buyer):
    address, token = buyer
    wait_for(lambda: balance(stack, token)["available"] == SIGNUP_GRANT, 15,
             what="the signup grant")
    created, session = buy(stack, token)
    assert created["checkout_url"] == session["url"]
    assert (session["amount_total"], session["currency"]) == (PACK["amount"], PACK["currency"])
    request = next(r for r in stack.stripe.requests
                   if r.form.get("client_reference_id") == created["order_id"])
    assert request.headers["Authorization"] == f"Bearer {stack.stripe.secret_key}"
    [pending] = [o for o in orders(stack, token) if o["id"] == created["order_id"]]
    assert (pending["status"], pending["paid_at"]) == ("pending", None)

    paid_event = stack.stripe.checkout_completed(session["id"])
    response = post_stripe_event(stack, paid_event)
    assert response.status_code == 200, response.text
    assert response.json() == {"received": True}
    assert balance(stack, token)["available"] == SIGNUP_GRANT + PACK["credits"]
    [order] = [o for o in orders(stack, token) if o["id"] == created["order_id"]]
    assert (order["status"], order["credits"], order["amount"]) == \
        ("paid", PACK["credits"], PACK["amount"])
    assert order["paid_at"] is not None
    purchases = [e for e in ledger(stack, token) if e["kind"] == "purchase"]
    assert [(e["amount"], e["order_id"]) for e in purchases] == \
        [(PACK["credits"], created["order_id"])]
    assert purchases[0]["expires_at"] is not None

    receipt = stack.wait_for_mail(address, count=2)  # the first was the verification code
    assert receipt["X-Darkroom-Template"] == "receipt"
    text = body_text(receipt)
    for part in ("5.00 USD", created["order_id"], f"Credits:  {PACK['credits']}"):
        assert part in text, part

    # Stripe delivers again (it retries until it sees a 2xx): 200, nothing more
    again = post_stripe_event(stack, paid_event)
    assert again.status_code == 200 and again.json() == {"received": True}
    # and a new delivery of the same payment (another event id) credits nothing either
    assert post_stripe_event(stack, stack.stripe.checkout_completed(session["id"])).status_code == 200
    assert balance(stack, token)["available"] == SIGNUP_GRANT + PACK["credits"]
    assert len([e for e in ledger(stack, token) if e["kind"] == "purchase"]) == 1
    assert len(stack.mails_to(address)) == 2


def test_a_bad_signature_is_refused_and_credits_nothing(stack, other):
    before = balance(stack, other)["available"]
    created, session = buy(stack, other)
    event = stack.stripe.checkout_completed(session["id"])
    response = post_stripe_event(stack, event, secret="whsec_wrong")
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid_signature"
    # a genuine signature over other bytes: the amount changed on the way
    _, genuine = signed_body(event, stack.stripe_webhook_secret)
    tampered = json.loads(json.dumps(event))
    tampered["data"]["object"]["amount_total"] = 1
    response = post_stripe_event(stack, tampered, signature=genuine)
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid_signature"
    # no signature at all
    body, _ = signed_body(event, stack.stripe_webhook_secret)
    response = stack.call("POST", "/v1/billing/webhooks/stripe", data=body.encode(),
                          headers={"Content-Type": "application/json"})
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid_signature"
    assert balance(stack, other)["available"] == before
    [order] = [o for o in orders(stack, other) if o["id"] == created["order_id"]]
    assert order["status"] == "pending"


def test_a_refund_takes_back_the_unspent_credits_and_mails(stack):
    address, _, token = verified_login(stack)
    wait_for(lambda: balance(stack, token)["available"] == SIGNUP_GRANT, 15,
             what="the signup grant")
    created, session = buy(stack, token)
    assert post_stripe_event(stack, stack.stripe.checkout_completed(session["id"])).status_code == 200
    stack.wait_for_mail(address, count=2)  # the receipt

    refund = stack.stripe.charge_refunded(session["id"], amount_refunded=PACK["amount"])
    response = post_stripe_event(stack, refund)
    assert response.status_code == 200, response.text
    assert balance(stack, token)["available"] == SIGNUP_GRANT
    [order] = [o for o in orders(stack, token) if o["id"] == created["order_id"]]
    assert order["status"] == "refunded"
    [entry] = [e for e in ledger(stack, token) if e["kind"] == "refund"]
    assert (entry["amount"], entry["order_id"]) == (-PACK["credits"], created["order_id"])
    mail = stack.wait_for_mail(address, count=3)
    assert mail["X-Darkroom-Template"] == "refund"
    assert "5.00 USD" in body_text(mail) and created["order_id"] in body_text(mail)


def test_a_dispute_freezes_the_credits_and_a_lost_one_takes_them_back(stack):
    _, _, token = verified_login(stack)
    wait_for(lambda: balance(stack, token)["available"] == SIGNUP_GRANT, 15,
             what="the signup grant")
    created, session = buy(stack, token)
    assert post_stripe_event(stack, stack.stripe.checkout_completed(session["id"])).status_code == 200
    opened = stack.stripe.dispute(session["id"], dispute_id="dp_test_e2e")
    assert post_stripe_event(stack, opened).status_code == 200
    held = balance(stack, token)
    assert (held["available"], held["frozen"]) == (SIGNUP_GRANT, PACK["credits"])
    [order] = [o for o in orders(stack, token) if o["id"] == created["order_id"]]
    assert order["dispute_status"] == "open"

    lost = stack.stripe.dispute(session["id"], closed_as="lost", dispute_id="dp_test_e2e")
    assert post_stripe_event(stack, lost).status_code == 200
    after = balance(stack, token)
    assert (after["available"], after["frozen"]) == (SIGNUP_GRANT, 0)
    [order] = [o for o in orders(stack, token) if o["id"] == created["order_id"]]
    assert order["dispute_status"] == "lost"
    [entry] = [e for e in ledger(stack, token) if e["kind"] == "refund"]
    assert (entry["amount"], entry["order_id"]) == (-PACK["credits"], created["order_id"])


def test_another_users_billing_is_never_visible(stack, buyer, other):
    _, token = buyer
    mine_now, theirs_now = buy(stack, token)[0]["order_id"], buy(stack, other)[0]["order_id"]
    mine = {o["id"] for o in orders(stack, token)}
    theirs = {o["id"] for o in orders(stack, other)}
    assert mine_now in mine and theirs_now in theirs and not mine & theirs
    my_entries = {e["id"] for e in ledger(stack, token)}
    assert not my_entries & {e["id"] for e in ledger(stack, other)}
    # naming the other user changes nothing: the caller is who the credential says
    me = stack.call("GET", "/v1/me", token=token).json()["id"]
    theirs_named = stack.call("GET", "/v1/billing/orders", token=other, params={"user_id": me})
    assert {o["id"] for o in theirs_named.json()["items"]} == theirs


def test_checkout_idempotency_key(stack, other):
    first = checkout(stack, other, {"pack_id": "large"}, key="e2e-key-1")
    again = checkout(stack, other, {"pack_id": "large"}, key="e2e-key-1")
    assert first.status_code == again.status_code == 201
    assert first.json() == again.json()
    assert len([o for o in orders(stack, other) if o["id"] == first.json()["order_id"]]) == 1
    reused = checkout(stack, other, {"pack_id": "small"}, key="e2e-key-1")
    assert reused.status_code == 409
    assert reused.json()["error"]["code"] == "idempotency_key_reused"


@pytest.mark.parametrize("payload, status, code", [
    ({}, 400, "invalid_request"),
    ({"pack_id": "small", "plan_id": "pro"}, 400, "invalid_request"),
    ({"pack_id": "small", "coupon": "FREE"}, 400, "invalid_request"),
    ({"pack_id": "no-such-pack"}, 404, "not_found"),
    ({"plan_id": "free"}, 409, "conflict"),
])
def test_bad_checkouts_are_4xx_with_a_code(stack, other, payload, status, code):
    response = checkout(stack, other, payload)
    assert response.status_code == status, response.text
    assert response.json()["error"]["code"] == code


def test_other_bad_input_is_4xx_with_a_code(stack, other):
    address, _ = register(stack)  # unverified
    code = stack.wait_for_mail(address)
    assert code is not None
    login = stack.call("POST", "/v1/auth/login",
                       json={"email": address, "password": "correct horse battery staple"})
    unverified = login.json()["token"]
    response = checkout(stack, unverified, {"pack_id": "small"})
    assert (response.status_code, response.json()["error"]["code"]) == (403, "email_unverified")
    assert stack.call("GET", "/v1/billing/balance").status_code == 401
    for params in ({"limit": 0}, {"limit": 101}, {"cursor": "not-a-cursor"}):
        response = stack.call("GET", "/v1/billing/ledger", token=other, params=params)
        assert response.status_code == 400, (params, response.text)
        assert response.json()["error"]["code"] == "invalid_request"
    response = stack.call("POST", "/v1/billing/webhooks/stripe", data=b"x" * (300 * 1024),
                          headers={"Stripe-Signature": "t=1,v1=00",
                                   "Content-Type": "application/json"})
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "payload_too_large"
    body, header = signed_body({"not": "an event"}, stack.stripe_webhook_secret)
    response = stack.call("POST", "/v1/billing/webhooks/stripe", data=body.encode(),
                          headers={"Stripe-Signature": header, "Content-Type": "application/json"})
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid_request"
