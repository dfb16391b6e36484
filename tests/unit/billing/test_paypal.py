"""PayPal: the client against the fake PayPal over HTTP (tests/fakes/paypal.py),
and what its answers and events do to orders (on SQLite): checkout through
the chosen provider, capture (approved, not approved, already captured,
declined), webhook verification, refunds and disputes."""

from __future__ import annotations

import json
import uuid
from datetime import timedelta

import pytest
from sqlalchemy import select

from services.billing import orders, subscriptions
from services.billing.models import Account, Lot, Order, Payment, WebhookEvent
from services.billing.payments import paypal_orders
from services.billing.payments.paypal import PayPalClient, PayPalRefused, to_minor, to_value
from services.billing.payments.stripe import PaymentProviderError
from services.billing.settings import BillingSettings
from services.common.errors import DomainError
from tests.fakes.paypal import FakePayPal
from tests.unit.billing.audit_helpers import assert_clean
from tests.unit.billing.conftest import NOW
from tests.unit.billing.test_orders import balance, refused


@pytest.fixture
def paypal():
    with FakePayPal() as fake:
        yield fake


@pytest.fixture
def settings(paypal):
    return BillingSettings(payment_providers=("stripe", "paypal"),
                           paypal_base_url=paypal.url, paypal_client_id=paypal.client_id,
                           paypal_client_secret=paypal.client_secret,
                           paypal_webhook_id=paypal.webhook_id)


@pytest.fixture
def client(paypal):
    return PayPalClient(paypal.url, paypal.client_id, paypal.client_secret, 5)


def checkout(db, settings, events, client, user, payload=None) -> Order:
    """What the service does: the order, PayPal's order, attached."""
    payload = payload or {"pack_id": "small", "provider": "paypal"}
    order, needs = orders.begin_checkout(db, settings, user, payload, None, NOW, events)
    db.commit()
    assert needs and order.provider == "paypal"
    plan = settings.plans.get(order.item_id) if order.kind == "plan" else None
    session = client.create_checkout_session(
        order_id=str(order.id), name=order.description, amount=order.amount,
        currency=order.currency, success_url="https://app.test/checkout/success",
        cancel_url="https://app.test/checkout/cancel",
        subscription=(subscriptions.checkout_terms(plan, str(user), str(order.id))
                      if plan is not None else None))  # ignored by PayPal's client
    order = orders.attach_session(db, order.id, session.id, session.url)
    db.commit()
    return order


def captured(db, settings, events, client, order) -> str:
    answer = paypal_orders.capture(client, order)
    outcome = paypal_orders.apply_capture(db, settings, order.id, answer, NOW, events)
    db.commit()
    return outcome


def deliver(db, settings, events, paypal, client, evt) -> dict:
    """A delivery as the service takes it: verified with PayPal, then applied."""
    body, headers = paypal.webhook(evt)
    event = paypal_orders.verified_event(client, settings, body, headers)
    result = paypal_orders.handle(db, settings, event, NOW, events)
    db.commit()
    return result


def fresh(db, order) -> Order:
    return db.get(Order, order.id, populate_existing=True)


# ---------------------------------------------------------------- the client


def test_amounts_are_paypal_decimal_strings():
    assert (to_value(500, "usd"), to_value(1999, "eur"), to_value(500, "jpy")) == \
        ("5.00", "19.99", "500")
    assert (to_minor("5.00", "usd"), to_minor("19.99", "eur"), to_minor("500", "jpy")) == \
        (500, 1999, 500)
    assert to_minor("a lot", "usd") is None and to_minor("NaN", "usd") is None


def test_the_client_creates_an_order_with_a_request_id(paypal, client):
    session = client.create_checkout_session(
        order_id="0190-order", name="100 credits", amount=500, currency="usd",
        success_url="https://app.test/ok?from=paypal", cancel_url="https://app.test/cancel")
    token, create = paypal.requests
    assert token.path == "/v1/oauth2/token" and token.body == b"grant_type=client_credentials"
    assert token.headers["Authorization"].startswith("Basic ")
    assert create.headers["PayPal-Request-Id"] == "order:0190-order"
    assert create.headers["Authorization"].startswith("Bearer A21AA")
    unit = create.json()["purchase_units"][0]
    assert create.json()["intent"] == "CAPTURE"
    assert (unit["custom_id"], unit["invoice_id"], unit["amount"]) == \
        ("0190-order", "0190-order", {"currency_code": "USD", "value": "5.00"})
    context = create.json()["payment_source"]["paypal"]["experience_context"]
    assert context["return_url"] == "https://app.test/ok?from=paypal&order_id=0190-order"
    order = paypal.orders[session.id]
    assert order["status"] == "PAYER_ACTION_REQUIRED"
    assert session.url == next(link["href"] for link in order["links"]
                               if link["rel"] == "payer-action")
    # a retry is the same PayPal order; the token is reused
    again = client.create_checkout_session(
        order_id="0190-order", name="100 credits", amount=500, currency="usd",
        success_url="https://app.test/ok", cancel_url="https://app.test/cancel")
    assert again == session and len(paypal.orders) == 1
    assert [r.path for r in paypal.requests].count("/v1/oauth2/token") == 1


def test_the_client_reports_every_provider_failure(paypal, client):
    def create(c):
        return c.create_checkout_session(order_id="o", name="n", amount=1, currency="usd",
                                         success_url="https://a/ok", cancel_url="https://a/no")

    with pytest.raises(PaymentProviderError, match="client credentials"):
        create(PayPalClient(paypal.url, paypal.client_id, "wrong", 5))
    create(client)
    paypal.fail_next(500)
    with pytest.raises(PaymentProviderError, match="500") as info:
        create(client)
    assert not isinstance(info.value, PayPalRefused)
    with pytest.raises(PayPalRefused) as info:
        client.capture("NO-SUCH-ORDER", request_id="capture:x")
    assert (info.value.status, info.value.issue) == (404, "INVALID_RESOURCE_ID")
    base = paypal.url
    paypal.stop()
    with pytest.raises(PaymentProviderError, match="unreachable"):
        create(PayPalClient(base, paypal.client_id, paypal.client_secret, 2))


def test_an_expired_token_is_fetched_again(paypal, client):
    client.create_checkout_session(order_id="a", name="n", amount=1, currency="usd",
                                   success_url="https://a/ok", cancel_url="https://a/no")
    paypal._tokens.clear()  # PayPal no longer knows it: 401, a new token, the call again
    client.create_checkout_session(order_id="b", name="n", amount=1, currency="usd",
                                   success_url="https://a/ok", cancel_url="https://a/no")
    assert [r.path for r in paypal.requests].count("/v1/oauth2/token") == 2
    assert len(paypal.orders) == 2


# ---------------------------------------------------------------- checkout and capture


def test_the_provider_must_be_enabled(db, events, user, paypal):
    settings = BillingSettings()  # stripe only
    error = refused(orders.begin_checkout, db, settings, user,
                    {"pack_id": "small", "provider": "paypal"}, None, NOW, events)
    assert (error.status, error.code) == (400, "payment_provider_not_enabled")
    assert db.scalars(select(Order)).all() == []
    order, _ = orders.begin_checkout(db, settings, user, {"pack_id": "small"}, None, NOW, events)
    assert order.provider == "stripe"


def test_an_approved_order_is_captured_and_credited_once(db, settings, events, paypal, client,
                                                         user):
    order = checkout(db, settings, events, client, user)
    error = refused(paypal_orders.capture, client, order)
    assert (error.status, error.code) == (409, "order_not_approved")
    paypal.approve(order.provider_session_id)
    assert captured(db, settings, events, client, order) == "paid"
    sent = paypal.requests[-1]
    assert sent.path == f"/v2/checkout/orders/{order.provider_session_id}/capture"
    assert sent.headers["PayPal-Request-Id"] == f"capture:{order.id}"
    capture_id = paypal.capture_of(order.provider_session_id)["id"]
    order = fresh(db, order)
    assert (order.status, order.payment_intent_id) == ("paid", capture_id)
    payment = db.scalars(select(Payment)).one()
    assert (payment.provider, payment.payment_intent_id, payment.amount) == \
        ("paypal", capture_id, 500)
    assert balance(db, user) == (150, 0)
    # the app calls capture again (PayPal-Request-Id: the same answer), then the webhook comes
    assert captured(db, settings, events, client, order) == "already_paid"
    completed = paypal.capture_completed(order.provider_session_id)
    assert deliver(db, settings, events, paypal, client, completed) == \
        {"received": True, "duplicate": False}
    assert db.get(WebhookEvent, completed["id"]).outcome == "already_paid"
    assert deliver(db, settings, events, paypal, client, completed)["duplicate"] is True
    assert balance(db, user) == (150, 0)
    assert len(events.of("order_paid")) == 1
    assert_clean(db)


def test_the_webhook_pays_first_and_the_capture_finds_it_done(db, settings, events, paypal,
                                                              client, user):
    order = checkout(db, settings, events, client, user)
    paypal.approve(order.provider_session_id)
    client.capture(order.provider_session_id, request_id="capture:from-elsewhere")
    completed = paypal.capture_completed(order.provider_session_id)
    deliver(db, settings, events, paypal, client, completed)
    assert fresh(db, order).status == "paid"
    # our capture: ORDER_ALREADY_CAPTURED, so the order is read back; paid once
    assert captured(db, settings, events, client, order) == "already_paid"
    assert paypal.requests[-1].path == f"/v2/checkout/orders/{order.provider_session_id}"
    assert balance(db, user) == (150, 0)
    assert len(db.scalars(select(Lot).where(Lot.order_id == order.id)).all()) == 1


def deliver_approved(db, settings, events, paypal, client, evt) -> dict:
    """CHECKOUT.ORDER.APPROVED as the service takes it: verified, captured, applied."""
    body, headers = paypal.webhook(evt)
    event = paypal_orders.verified_event(client, settings, body, headers)
    captured = paypal_orders.capture_approved(db, client, event)
    result = paypal_orders.handle(db, settings, event, NOW, events, captured)
    db.commit()
    return result


def test_the_approval_webhook_captures_when_the_buyer_never_comes_back(db, settings, events,
                                                                       paypal, client, user):
    order = checkout(db, settings, events, client, user)
    paypal.approve(order.provider_session_id)
    approved = paypal.order_approved(order.provider_session_id)
    assert deliver_approved(db, settings, events, paypal, client, approved)["duplicate"] is False
    assert db.get(WebhookEvent, approved["id"]).outcome == "paid"
    assert paypal.requests[-1].headers["PayPal-Request-Id"] == f"capture:{order.id}"
    assert (fresh(db, order).status, balance(db, user)) == ("paid", (150, 0))
    # redelivered: nothing captured again; the app's capture on return finds it paid
    captures = [r for r in paypal.requests if r.path.endswith("/capture")]
    assert deliver_approved(db, settings, events, paypal, client, approved)["duplicate"] is True
    again = dict(approved, id="WH-ANOTHER-DELIVERY")
    deliver_approved(db, settings, events, paypal, client, again)
    assert db.get(WebhookEvent, again["id"]).outcome == "ignored"
    assert [r for r in paypal.requests if r.path.endswith("/capture")] == captures
    assert captured(db, settings, events, client, fresh(db, order)) == "already_paid"
    assert balance(db, user) == (150, 0) and len(events.of("order_paid")) == 1


def test_a_declined_capture_at_approval_is_recorded(db, settings, events, paypal, client, user):
    order = checkout(db, settings, events, client, user)
    paypal.approve(order.provider_session_id)
    paypal.decline(order.provider_session_id)
    approved = paypal.order_approved(order.provider_session_id)
    deliver_approved(db, settings, events, paypal, client, approved)
    assert db.get(WebhookEvent, approved["id"]).outcome == "capture_refused:payment_declined"
    assert fresh(db, order).status == "pending"


def test_a_declined_instrument_leaves_the_order_to_pay_again(db, settings, events, paypal,
                                                             client, user):
    order = checkout(db, settings, events, client, user)
    paypal.approve(order.provider_session_id)
    paypal.decline(order.provider_session_id)
    error = refused(paypal_orders.capture, client, order)
    assert (error.status, error.code) == (402, "payment_declined")
    assert error.details["checkout_url"] == order.checkout_url
    assert fresh(db, order).status == "pending" and balance(db, user) == (50, 0)
    paypal.approve(order.provider_session_id)  # the buyer picks another card
    assert captured(db, settings, events, client, order) == "paid"


def test_a_declined_capture_fails_the_order(db, settings, events, paypal, client, user):
    order = checkout(db, settings, events, client, user)
    paypal.approve(order.provider_session_id, capture_status="DECLINED")
    assert captured(db, settings, events, client, order) == "declined"
    order = fresh(db, order)
    assert (order.status, order.failure_reason) == ("failed", "payment declined")
    assert balance(db, user) == (50, 0) and events.of("order_paid") == []


def test_a_pending_capture_waits_for_the_webhook(db, settings, events, paypal, client, user):
    order = checkout(db, settings, events, client, user)
    paypal.approve(order.provider_session_id, capture_status="PENDING")
    assert captured(db, settings, events, client, order) == "capture_pending"
    assert fresh(db, order).status == "pending"
    deliver(db, settings, events, paypal, client,
            paypal.capture_completed(order.provider_session_id))
    assert fresh(db, order).status == "paid" and balance(db, user) == (150, 0)


def test_a_capture_that_does_not_match_its_order_pays_nothing(db, settings, events, paypal,
                                                              client, user):
    order = checkout(db, settings, events, client, user)
    paypal.approve(order.provider_session_id)
    paypal_orders.capture(client, order)
    forged = paypal.capture_completed(order.provider_session_id,
                                      amount={"currency_code": "USD", "value": "0.01"})
    deliver(db, settings, events, paypal, client, forged)
    assert db.get(WebhookEvent, forged["id"]).outcome == "amount_mismatch"
    assert fresh(db, order).status == "pending" and balance(db, user) == (50, 0)


def test_a_denied_capture_webhook_fails_a_pending_order(db, settings, events, paypal, client,
                                                        user):
    order = checkout(db, settings, events, client, user)
    paypal.approve(order.provider_session_id, capture_status="PENDING")
    paypal_orders.capture(client, order)
    deliver(db, settings, events, paypal, client, paypal.capture_denied(order.provider_session_id))
    assert fresh(db, order).status == "failed"


def test_only_the_callers_paypal_order_is_captured(db, settings, events, paypal, client, user):
    order = checkout(db, settings, events, client, user)
    error = refused(paypal_orders.order_to_capture, db, settings, uuid.uuid4(), order.id)
    assert (error.status, error.code) == (404, "not_found")
    stripe_order, _ = orders.begin_checkout(db, settings, user, {"pack_id": "large"}, None, NOW,
                                            events)
    error = refused(paypal_orders.order_to_capture, db, settings, user, stripe_order.id)
    assert (error.status, error.code) == (409, "not_capturable")
    assert paypal_orders.order_to_capture(db, settings, user, order.id).id == order.id


# ---------------------------------------------------------------- webhook verification


def test_webhook_verification_asks_paypal(paypal, client):
    body, headers = paypal.webhook({"id": "WH-1", "event_type": "X", "resource": {}})
    sent = paypal_orders.transmission(headers)
    event = json.loads(body)
    assert client.verify_webhook(sent, body, paypal.webhook_id) is True
    request = paypal.requests[-1]
    assert request.path == "/v1/notifications/verify-webhook-signature"
    assert request.json()["webhook_event"] == event
    assert request.json()["transmission_id"] == headers["PAYPAL-TRANSMISSION-ID"]
    # the delivered bytes go to PayPal as they came, not re-serialised
    assert request.body.decode().endswith('"webhook_event": ' + body + "}")
    # the same event re-serialised (other spacing), a changed event, another
    # webhook id, a forged signature: FAILURE
    assert client.verify_webhook(sent, json.dumps(event, indent=1), paypal.webhook_id) is False
    changed = json.dumps(dict(event, event_type="Y"))
    assert client.verify_webhook(sent, changed, paypal.webhook_id) is False
    assert client.verify_webhook(sent, body, "WH-SOMEONE-ELSE") is False
    forged = dict(sent, **{"PAYPAL-TRANSMISSION-SIG": "AAAA"})
    assert client.verify_webhook(forged, body, paypal.webhook_id) is False


def test_a_delivery_is_refused_unless_paypal_verifies_it(settings, paypal, client):
    body, headers = paypal.webhook({"id": "WH-2", "event_type": "X", "resource": {}})
    assert paypal_orders.verified_event(client, settings, body, headers)["id"] == "WH-2"
    error = refused(paypal_orders.verified_event, client, settings,
                    body.replace("WH-2", "WH-3"), headers)
    assert (error.status, error.code, error.details) == \
        (400, "invalid_signature", {"reason": "mismatch"})
    paypal.fail_next(503)
    error = refused(paypal_orders.verified_event, client, settings, body, headers)
    assert (error.status, error.code) == (503, "payment_provider_unavailable")
    error = refused(paypal_orders.verified_event, client, BillingSettings(), body, headers)
    assert (error.status, error.code) == (400, "payment_provider_not_enabled")
    other, genuine = paypal.webhook({"not": "an event"})
    error = refused(paypal_orders.verified_event, client, settings, other, genuine)
    assert (error.status, error.code) == (400, "invalid_request")


def test_a_delivery_without_its_headers_or_not_an_event_is_400():
    error = refused(paypal_orders.transmission, {"PAYPAL-TRANSMISSION-ID": "x"})
    assert (error.status, error.code, error.details) == \
        (400, "invalid_signature", {"reason": "missing"})
    for body in ("{oops", "[]", '{"id": "WH-1"}', '{"id": "WH-1", "event_type": "X"}'):
        error = refused(lambda b: paypal_orders.check_event(paypal_orders.parse_body(b)), body)
        assert (error.status, error.code) == (400, "invalid_request")


# ---------------------------------------------------------------- refunds and disputes


def paid_order(db, settings, events, paypal, client, user, payload=None) -> Order:
    order = checkout(db, settings, events, client, user, payload)
    paypal.approve(order.provider_session_id)
    assert captured(db, settings, events, client, order) == "paid"
    return fresh(db, order)


def refund(db, settings, events, client, order, amount=None) -> str:
    order, amount = paypal_orders.refund_request(db, settings, order.id, amount)
    answer = paypal_orders.send_refund(client, order, amount)
    outcome = paypal_orders.apply_refund(db, settings, order, amount, answer, NOW, events)
    db.commit()
    return outcome


def test_a_refund_goes_through_paypal_and_takes_the_credits_back(db, settings, events, paypal,
                                                                 client, user):
    order = paid_order(db, settings, events, paypal, client, user)
    assert refund(db, settings, events, client, order, 250) == "partially_refunded"
    sent = paypal.requests[-1]
    assert sent.path == f"/v2/payments/captures/{order.payment_intent_id}/refund"
    assert sent.json()["amount"] == {"currency_code": "USD", "value": "2.50"}
    assert sent.headers["PayPal-Request-Id"] == f"refund:{order.id}:0:250"
    assert balance(db, user) == (100, 0)
    # PayPal's webhook of that same refund changes nothing more
    deliver(db, settings, events, paypal, client, paypal.capture_refunded())
    assert balance(db, user) == (100, 0)
    error = refused(paypal_orders.refund_request, db, settings, order.id, 251)
    assert (error.status, error.code) == (400, "invalid_request")
    assert refund(db, settings, events, client, order) == "refunded"
    assert (fresh(db, order).amount_refunded, balance(db, user)) == (500, (50, 0))
    error = refused(paypal_orders.refund_request, db, settings, order.id, None)
    assert (error.status, error.code) == (409, "not_refundable")
    [first, second] = events.of("order_refunded")
    assert (first["amount_refunded"], second["total_amount_refunded"]) == (250, 500)
    assert_clean(db)


def test_a_refund_made_at_paypal_arrives_by_webhook(db, settings, events, paypal, client, user):
    order = paid_order(db, settings, events, paypal, client, user)
    client.refund(order.payment_intent_id, 500, "usd", str(order.id), request_id="dashboard-1")
    deliver(db, settings, events, paypal, client, paypal.capture_refunded())
    assert (fresh(db, order).status, balance(db, user)) == ("refunded", (50, 0))


def test_a_plan_bought_through_paypal_is_one_period_and_a_full_refund_ends_it(
        db, settings, events, paypal, client, user):
    order = paid_order(db, settings, events, paypal, client, user,
                       {"plan_id": "pro", "provider": "paypal"})
    account = db.get(Account, user, populate_existing=True)
    assert (account.plan, account.plan_expires_at) == ("pro", NOW + timedelta(days=30))
    assert paypal.capture_of(order.provider_session_id)["amount"] == \
        {"currency_code": "USD", "value": "15.00"}
    assert refund(db, settings, events, client, order) == "refunded"
    account = db.get(Account, user, populate_existing=True)
    assert (account.plan, balance(db, user)) == ("free", (50, 0))
    assert_clean(db)


def test_only_paypal_orders_are_refunded_here(db, settings, events, user):
    stripe_order, _ = orders.begin_checkout(db, settings, user, {"pack_id": "large"}, None, NOW,
                                            events)
    error = refused(paypal_orders.refund_request, db, settings, stripe_order.id, None)
    assert (error.status, error.code) == (409, "not_refundable")


@pytest.mark.parametrize("outcome, status, after", [
    ("RESOLVED_BUYER_FAVOUR", "lost", (50, 0)),
    ("RESOLVED_SELLER_FAVOUR", "won", (150, 0)),
])
def test_a_dispute_freezes_then_settles(db, settings, events, paypal, client, user, outcome,
                                        status, after):
    order = paid_order(db, settings, events, paypal, client, user)
    deliver(db, settings, events, paypal, client, paypal.dispute(order.provider_session_id))
    order = fresh(db, order)
    assert (order.dispute_status, order.dispute_id) == ("open", "PP-D-27803")
    assert all(lot.frozen for lot in db.scalars(select(Lot).where(Lot.order_id == order.id)))
    deliver(db, settings, events, paypal, client,
            paypal.dispute(order.provider_session_id, outcome=outcome))
    assert fresh(db, order).dispute_status == status
    assert balance(db, user) == after
    assert not any(lot.frozen for lot in db.scalars(select(Lot).where(Lot.order_id == order.id)))
    assert_clean(db)


def test_settings_need_paypal_credentials_when_enabled():
    with pytest.raises(ValueError, match="PAYPAL_CLIENT_ID"):
        BillingSettings(payment_providers=("paypal",))
    with pytest.raises(ValueError, match="PAYMENT_PROVIDERS"):
        BillingSettings(payment_providers=("bitcoin",))
    settings = BillingSettings.from_config({"BILLING": {
        "PAYMENT_PROVIDERS": "paypal, stripe", "PAYPAL_BASE_URL": "https://api-m.paypal.com/",
        "PAYPAL_CLIENT_ID": "id", "PAYPAL_CLIENT_SECRET": "secret", "PAYPAL_WEBHOOK_ID": "WH-1"}})
    assert (settings.payment_providers, settings.paypal_base_url) == \
        (("paypal", "stripe"), "https://api-m.paypal.com")
    assert BillingSettings.from_config({"BILLING": {}}).payment_providers == ("stripe",)


def test_an_unknown_refused_issue_is_a_domain_error(db, settings, events, paypal, client, user):
    order = checkout(db, settings, events, client, user)
    paypal.orders.pop(order.provider_session_id)  # PayPal no longer knows it: 404
    with pytest.raises(DomainError) as info:
        paypal_orders.capture(client, order)
    assert (info.value.status, info.value.code) == (503, "payment_provider_unavailable")
