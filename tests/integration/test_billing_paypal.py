"""PayPal through the billing service's real entrypoint (`nameko run`, the
Procfile's "billing" line) against RabbitMQ, PostgreSQL and the fake PayPal
server (tests/fakes/paypal.py) on loopback, with Stripe and PayPal both
enabled: a checkout through PayPal, the buyer's approval, the capture (and
one already done, one declined), verified webhooks (and a forged one), an
operator's refund through PayPal, a dispute, and a plan bought through
PayPal (one period, not a subscription)."""

from __future__ import annotations

import time
import uuid
from types import SimpleNamespace

import pytest
from nameko.standalone.rpc import ClusterRpcProxy

from services.billing.payments.paypal import PayPalClient
from services.common.db import make_engine
from tests.conftest import base_env, free_port, wait_for
from tests.fakes.paypal import FakePayPal
from tests.integration.probe_service import start_fake_auth
from tests.integration.test_billing_service import EventTap, assert_clean, new_user, refused

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def billing(make_vhost, make_database, start_process, tmp_path_factory):
    amqp_uri, _ = make_vhost("billing-paypal")
    start_fake_auth(start_process, tmp_path_factory.mktemp("fake-auth"), amqp_uri)
    db_url = make_database("billing_paypal")
    paypal = FakePayPal().start()
    port = free_port()
    env = base_env(
        AMQP_URI=amqp_uri, BILLING_DATABASE_URL=db_url, BILLING_METRICS_PORT=port,
        BILLING_PAYMENT_PROVIDERS="stripe,paypal", BILLING_PAYPAL_BASE_URL=paypal.url,
        BILLING_PAYPAL_CLIENT_ID=paypal.client_id,
        BILLING_PAYPAL_CLIENT_SECRET=paypal.client_secret,
        BILLING_PAYPAL_WEBHOOK_ID=paypal.webhook_id, BILLING_PAYPAL_TIMEOUT_SECONDS=3,
        OUTBOX_RELAY_INTERVAL_SECONDS=1, APP_BASE_URL="https://app.darkroom.test",
    )
    tap = EventTap(amqp_uri)
    proc = start_process("billing", env)
    proc.wait_ready(f"http://127.0.0.1:{port}/readyz")
    engine = make_engine(db_url)
    with ClusterRpcProxy({"AMQP_URI": amqp_uri}, timeout=30) as rpc:
        wait_for(lambda: rpc.billing.ping(), 30, 0.2, "billing RPC")
        yield SimpleNamespace(rpc=rpc.billing, paypal=paypal, tap=tap, engine=engine)
    engine.dispose()
    tap.close()
    paypal.stop()
    proc.stop()


def buy(billing, user: str, item: dict | None = None) -> tuple[dict, dict]:
    """A checkout through PayPal: (our answer, the fake's PayPal order)."""
    answer = billing.rpc.create_checkout(user, item or {"pack_id": "small", "provider": "paypal"})
    order = billing.paypal.order_for(answer["order_id"])
    assert answer["checkout_url"] == next(link["href"] for link in order["links"]
                                          if link["rel"] == "payer-action")
    return answer, order


def webhook(billing, evt: dict) -> dict:
    body, headers = billing.paypal.webhook(evt)
    return billing.rpc.handle_paypal_webhook(body, headers)


def capture_elsewhere(billing, paypal_order_id: str) -> None:
    """A capture billing did not make (or whose answer it lost)."""
    PayPalClient(billing.paypal.url, billing.paypal.client_id,
                 billing.paypal.client_secret, 5).capture(paypal_order_id, str(uuid.uuid4()))


def order_of(billing, user: str, order_id: str) -> dict:
    return next(o for o in billing.rpc.list_orders(user)["items"] if o["id"] == order_id)


def test_a_paypal_checkout_is_captured_on_return_and_credited_once(billing):
    user = new_user(billing)
    answer, paypal_order = buy(billing, user)
    unit = paypal_order["purchase_units"][0]
    assert (unit["custom_id"], unit["amount"]) == \
        (answer["order_id"], {"currency_code": "USD", "value": "5.00"})
    context = paypal_order["payment_source"]["paypal"]["experience_context"]
    assert context["return_url"] == \
        f"https://app.darkroom.test/checkout/success?order_id={answer['order_id']}"
    error = refused(billing.rpc.capture_order, user, answer["order_id"])
    assert (error.status, error.code) == (409, "order_not_approved")

    billing.paypal.approve(paypal_order["id"])
    error = refused(billing.rpc.capture_order, str(uuid.uuid4()), answer["order_id"])
    assert (error.status, error.code) == (404, "not_found")  # someone else's order
    paid = billing.rpc.capture_order(user, answer["order_id"])
    assert (paid["status"], paid["provider"], paid["credits"]) == ("paid", "paypal", 100)
    assert billing.rpc.capture_order(user, answer["order_id"])["status"] == "paid"
    [event] = billing.tap.wait("order_paid", order_id=answer["order_id"])
    assert (event["amount"], event["currency"]) == (500, "usd")
    # PayPal's webhook of that capture, twice: nothing more
    completed = billing.paypal.capture_completed(paypal_order["id"])
    assert webhook(billing, completed) == {"received": True, "duplicate": False}
    assert webhook(billing, completed) == {"received": True, "duplicate": True}
    assert billing.rpc.get_balance(user)["available"] == 150
    time.sleep(1)
    assert len(billing.tap.of("order_paid", order_id=answer["order_id"])) == 1
    assert_clean(billing, user)


def test_the_approval_webhook_pays_when_the_buyer_does_not_return(billing):
    user = new_user(billing)
    answer, paypal_order = buy(billing, user)
    billing.paypal.approve(paypal_order["id"])
    assert webhook(billing, billing.paypal.order_approved(paypal_order["id"]))["duplicate"] is False
    assert order_of(billing, user, answer["order_id"])["status"] == "paid"
    billing.tap.wait("order_paid", order_id=answer["order_id"])
    assert billing.rpc.capture_order(user, answer["order_id"])["status"] == "paid"
    assert billing.rpc.get_balance(user)["available"] == 150


def test_a_capture_already_done_and_a_declined_one(billing):
    user = new_user(billing)
    answer, paypal_order = buy(billing, user)
    billing.paypal.approve(paypal_order["id"])
    billing.paypal.decline(paypal_order["id"])
    error = refused(billing.rpc.capture_order, user, answer["order_id"])
    assert (error.status, error.code) == (402, "payment_declined")
    assert error.details["checkout_url"] == answer["checkout_url"]
    assert order_of(billing, user, answer["order_id"])["status"] == "pending"
    # the buyer approves with another card; a capture made elsewhere gets there first
    billing.paypal.approve(paypal_order["id"])
    capture_elsewhere(billing, paypal_order["id"])
    paid = billing.rpc.capture_order(user, answer["order_id"])  # ORDER_ALREADY_CAPTURED
    assert paid["status"] == "paid"
    assert billing.rpc.get_balance(user)["available"] == 150


def test_webhooks_are_verified_with_paypal(billing):
    user = new_user(billing)
    answer, paypal_order = buy(billing, user)
    billing.paypal.approve(paypal_order["id"])
    capture_elsewhere(billing, paypal_order["id"])
    evt = billing.paypal.capture_completed(paypal_order["id"])
    body, headers = billing.paypal.webhook(evt)
    tampered = body.replace('"value":"5.00"', '"value":"50.00"')
    error = refused(billing.rpc.handle_paypal_webhook, tampered, headers)
    assert (error.status, error.code, error.details) == \
        (400, "invalid_signature", {"reason": "mismatch"})
    error = refused(billing.rpc.handle_paypal_webhook, body, {})
    assert (error.code, error.details) == ("invalid_signature", {"reason": "missing"})
    _, elsewhere = billing.paypal.webhook(evt, webhook_id="WH-ANOTHER-APP")
    assert refused(billing.rpc.handle_paypal_webhook, body, elsewhere).code == "invalid_signature"
    assert order_of(billing, user, answer["order_id"])["status"] == "pending"
    not_an_event, genuine = billing.paypal.webhook({"not": "an event"})
    error = refused(billing.rpc.handle_paypal_webhook, not_an_event, genuine)
    assert (error.status, error.code) == (400, "invalid_request")
    billing.paypal.fail_next(503)  # PayPal cannot say: 503, and PayPal delivers again
    error = refused(billing.rpc.handle_paypal_webhook, body, headers)
    assert (error.status, error.code) == (503, "payment_provider_unavailable")
    assert billing.rpc.handle_paypal_webhook(body, headers)["duplicate"] is False
    assert order_of(billing, user, answer["order_id"])["status"] == "paid"
    assert billing.rpc.get_balance(user)["available"] == 150


def test_an_operator_refund_goes_through_paypal(billing):
    user = new_user(billing)
    answer, paypal_order = buy(billing, user)
    billing.paypal.approve(paypal_order["id"])
    billing.rpc.capture_order(user, answer["order_id"])
    partly = billing.rpc.refund_order(answer["order_id"], 200)
    assert (partly["status"], partly["amount_refunded"]) == ("partially_refunded", 200)
    [sent] = [r for r in billing.paypal.requests if r.path.endswith("/refund")]
    assert sent.json()["amount"] == {"currency_code": "USD", "value": "2.00"}
    [refunded] = billing.tap.wait("order_refunded", order_id=answer["order_id"])
    assert (refunded["credits_reversed"], refunded["total_amount_refunded"]) == (40, 200)
    assert webhook(billing, billing.paypal.capture_refunded())["duplicate"] is False
    assert billing.rpc.get_balance(user)["available"] == 110  # the webhook took nothing more
    assert billing.rpc.refund_order(answer["order_id"])["status"] == "refunded"
    assert billing.rpc.get_balance(user)["available"] == 50
    error = refused(billing.rpc.refund_order, answer["order_id"])
    assert (error.status, error.code) == (409, "not_refundable")
    error = refused(billing.rpc.refund_order, str(uuid.uuid4()))
    assert (error.status, error.code) == (404, "not_found")
    assert_clean(billing, user)


def test_a_dispute_lost_at_paypal_takes_the_credits_back(billing):
    user = new_user(billing)
    answer, paypal_order = buy(billing, user)
    billing.paypal.approve(paypal_order["id"])
    billing.rpc.capture_order(user, answer["order_id"])
    webhook(billing, billing.paypal.dispute(paypal_order["id"], dispute_id="PP-D-1"))
    assert order_of(billing, user, answer["order_id"])["dispute_status"] == "open"
    assert billing.rpc.get_balance(user)["frozen"] == 100
    webhook(billing, billing.paypal.dispute(paypal_order["id"], outcome="RESOLVED_BUYER_FAVOUR",
                                            dispute_id="PP-D-1"))
    assert order_of(billing, user, answer["order_id"])["dispute_status"] == "lost"
    assert billing.rpc.get_balance(user)["available"] == 50
    assert_clean(billing, user)


def test_bad_providers_and_order_ids_are_refused(billing):
    user = new_user(billing)
    error = refused(billing.rpc.create_checkout, user, {"pack_id": "small", "provider": "cash"})
    assert (error.status, error.code) == (400, "invalid_request")
    count = len(billing.paypal.orders)
    error = refused(billing.rpc.capture_order, user, "not-a-uuid")
    assert (error.status, error.code) == (400, "invalid_request")
    assert len(billing.paypal.orders) == count


def test_a_plan_bought_through_paypal_is_one_period_not_a_subscription(billing):
    """The service hands every client a plan's subscription terms; PayPal's
    ignores them: one order for one period's price, paid once, no
    subscription (and no Stripe call)."""
    user = new_user(billing)
    answer, paypal_order = buy(billing, user, {"plan_id": "pro", "provider": "paypal"})
    [unit] = paypal_order["purchase_units"]
    assert unit["amount"] == {"currency_code": "USD", "value": "15.00"}
    assert "plan" not in paypal_order and "billing_cycles" not in paypal_order
    billing.paypal.approve(paypal_order["id"])
    paid = billing.rpc.capture_order(user, answer["order_id"])
    assert (paid["kind"], paid["status"], paid["provider"]) == ("plan", "paid", "paypal")
    balance = billing.rpc.get_balance(user)
    assert (balance["plan"], balance["available"]) == ("pro", 550)
    assert balance["plan_expires_at"] is not None
    assert refused(billing.rpc.get_subscription, user).code == "not_found"
    error = refused(billing.rpc.create_checkout, user, {"plan_id": "pro", "provider": "paypal"})
    assert (error.status, error.code) == (409, "conflict")  # already on it
    assert_clean(billing, user)
