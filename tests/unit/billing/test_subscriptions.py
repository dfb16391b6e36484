"""Plans that renew: Stripe subscriptions through the official SDK against the
fake Stripe over HTTP, and their webhooks (invoice.paid once per invoice,
dunning, cancel at period end, the portal, erasure)."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

import pytest
from nameko.testing.services import worker_factory

from services.billing import orders, subscriptions
from services.billing import privacy as billing_privacy
from services.billing.models import Account, Subscription
from services.billing.payments import webhooks
from services.billing.payments.stripe import PaymentProviderError, StripeClient
from services.billing.service import BillingService
from services.billing.settings import BillingSettings
from services.common.errors import DomainError
from tests.fakes.stripe import FakeStripe, signed_body
from tests.unit.billing.audit_helpers import assert_clean
from tests.unit.billing.conftest import NOW

SECRET = "whsec_test_subs"


@pytest.fixture
def settings():
    return BillingSettings(stripe_webhook_secrets=(SECRET,), subscription_grace_days=3)


@pytest.fixture
def stripe():
    with FakeStripe() as fake:
        yield fake


@pytest.fixture
def client(stripe):
    return StripeClient(stripe.api_base, stripe.secret_key, 5)


def deliver(db, settings, events, evt, now) -> str:
    body, header = signed_body(evt, SECRET, int(now.timestamp()))
    webhooks.handle(db, settings, body, header, now, events)
    db.commit()
    return db.get(webhooks.WebhookEvent, evt["id"]).outcome


def subscribe(db, settings, events, client, stripe, user, plan_id="pro"):
    """Checkout of a plan, paid: the events Stripe sends, delivered at NOW."""
    order, _ = orders.begin_checkout(db, settings, user, {"plan_id": plan_id}, None, NOW, events)
    db.commit()
    session = client.create_checkout_session(
        order_id=str(order.id), name=order.description, amount=order.amount,
        currency=order.currency, success_url="https://app.test/ok",
        cancel_url="https://app.test/no",
        subscription=subscriptions.checkout_terms(settings.plans[plan_id], str(user),
                                                  str(order.id)))
    orders.attach_session(db, order.id, session.id, session.url)
    db.commit()
    outcomes = [deliver(db, settings, events, e, NOW)
                for e in stripe.complete_subscription(session.id, int(NOW.timestamp()))]
    [sub_id] = stripe.subscriptions
    return sub_id, outcomes


def account(db, user) -> Account:
    return db.get(Account, user, populate_existing=True)


def period_end(stripe, sub_id) -> datetime:
    ts = stripe.subscriptions[sub_id]["items"]["data"][0]["current_period_end"]
    return datetime.fromtimestamp(ts, UTC)


def test_a_plan_checkout_asks_stripe_for_a_monthly_subscription(db, settings, events, client,
                                                               stripe, user):
    sub_id, outcomes = subscribe(db, settings, events, client, stripe, user)
    sent = stripe.requests[0].form
    assert sent["mode"] == "subscription"
    assert sent["line_items[0][price_data][recurring][interval]"] == "month"
    assert sent["line_items[0][price_data][unit_amount]"] == "1500"
    assert sent["subscription_data[metadata][user_id]"] == str(user)
    assert sent["subscription_data[metadata][plan_id]"] == "pro"
    assert stripe.requests[0].headers["Stripe-Version"] == "2026-10-28.endive"
    assert outcomes == ["paid", "active", "granted"]
    row = db.get(Subscription, sub_id)
    assert (row.user_id, row.plan, row.status) == (user, "pro", "active")
    assert row.customer_id == stripe.subscriptions[sub_id]["customer"]


def test_a_configured_stripe_price_is_used(db, events, client, stripe, user):
    price = stripe.add_price(1500)
    base = BillingSettings().plans["pro"]
    plans = {**BillingSettings().plans,
             "pro": base.__class__(**{**base.__dict__, "stripe_price": price})}
    settings = BillingSettings(plans=plans, stripe_webhook_secrets=(SECRET,))
    subscribe(db, settings, events, client, stripe, user)
    assert stripe.requests[0].form["line_items[0][price]"] == price
    assert "line_items[0][price_data][unit_amount]" not in stripe.requests[0].form


def test_each_invoice_grants_its_period_once_and_the_last_period_expires(
        db, settings, events, client, stripe, user):
    sub_id, _ = subscribe(db, settings, events, client, stripe, user)
    first_end = period_end(stripe, sub_id)
    assert account(db, user).available == 50 + 500
    assert account(db, user).plan == "pro"
    assert account(db, user).plan_expires_at == first_end + timedelta(days=3)
    # the same invoice again, in a new event (Stripe re-sends): nothing more
    invoice = stripe.invoices[-1]
    replay = webhooks.parse_event(signed_body(
        {"id": "evt_replayed", "type": "invoice.paid", "data": {"object": {
            k: v for k, v in invoice.items() if not k.startswith("_")}}}, SECRET)[0])
    assert deliver(db, settings, events, replay, NOW) == "already_granted"
    assert account(db, user).available == 550
    # the next period: the pro credits of the last one expire, the new ones come
    renewal = first_end + timedelta(hours=1)
    assert [deliver(db, settings, events, e, renewal) for e in stripe.renew(sub_id)] == \
        ["granted", "active"]
    acc = account(db, user)
    assert acc.available == 500  # signup credits (30 days) and the first grant expired
    assert acc.plan_expires_at == period_end(stripe, sub_id) + timedelta(days=3)
    assert_clean(db)


def test_a_failed_renewal_keeps_the_plan_for_the_grace_then_the_free_plan(
        db, settings, events, client, stripe, user, maintain):
    sub_id, _ = subscribe(db, settings, events, client, stripe, user)
    failed_at = period_end(stripe, sub_id) + timedelta(hours=1)
    outcomes = [deliver(db, settings, events, e, failed_at)
                for e in stripe.renew(sub_id, paid=False)]
    assert outcomes == ["grace", "past_due"]
    row = db.get(Subscription, sub_id, populate_existing=True)
    assert row.grace_until == failed_at + timedelta(days=3)
    assert account(db, user).plan_expires_at == row.grace_until
    assert maintain("plans", failed_at + timedelta(days=2), settings) == 0
    assert account(db, user).plan == "pro"
    events.clear()
    assert maintain("plans", failed_at + timedelta(days=3, seconds=1), settings) == 1
    assert account(db, user).plan == "free"
    assert events.of("plan_changed")[-1]["plan"] == "free"


def test_a_payment_in_the_grace_restores_the_subscription(db, settings, events, client, stripe,
                                                         user):
    sub_id, _ = subscribe(db, settings, events, client, stripe, user)
    at = period_end(stripe, sub_id) + timedelta(hours=1)
    for e in stripe.renew(sub_id, paid=False):
        deliver(db, settings, events, e, at)
    for e in stripe.retry_payment(sub_id, paid=True):
        deliver(db, settings, events, e, at + timedelta(days=1))
    row = db.get(Subscription, sub_id, populate_existing=True)
    assert (row.status, row.grace_until) == ("active", None)
    assert account(db, user).plan_expires_at == period_end(stripe, sub_id) + timedelta(days=3)
    assert account(db, user).available == 500  # the new period's grant; the first one expired


def test_cancel_at_period_end_keeps_the_period_paid_for(db, settings, events, client, stripe,
                                                        user):
    sub_id, _ = subscribe(db, settings, events, client, stripe, user)
    row = subscriptions.require_live(db, user)
    answer = client.cancel_at_period_end(row.id)
    assert deliver(db, settings, events, {"id": "evt_cancel", "type":
                                          "customer.subscription.updated",
                                          "data": {"object": answer}}, NOW) == \
        "cancel_at_period_end"
    assert account(db, user).plan_expires_at == period_end(stripe, sub_id)  # no grace
    assert account(db, user).plan == "pro"
    [deleted] = stripe.renew(sub_id)
    assert deliver(db, settings, events, deleted, period_end(stripe, sub_id)) == "ended"
    assert account(db, user).plan == "free"
    assert subscriptions.live(db, user) is None


def test_a_second_plan_checkout_is_refused_while_subscribed(db, settings, events, client, stripe,
                                                            user):
    subscribe(db, settings, events, client, stripe, user)
    with pytest.raises(DomainError) as info:
        orders.begin_checkout(db, settings, user, {"plan_id": "studio"}, None, NOW, events)
    assert (info.value.code, info.value.status) == ("subscription_active", 409)


def test_the_portal_is_for_the_callers_own_customer(db, settings, events, client, stripe, user):
    sub_id, _ = subscribe(db, settings, events, client, stripe, user)
    customer = subscriptions.portal_customer(db, user)
    url = client.portal_url(customer, "https://app.test/billing")
    assert url.startswith("https://billing.stripe.test/")
    assert stripe.portal_sessions[-1]["customer"] == stripe.subscriptions[sub_id]["customer"]
    with pytest.raises(DomainError) as info:
        subscriptions.portal_customer(db, __import__("uuid").uuid4())
    assert info.value.status == 404
    with pytest.raises(PaymentProviderError, match="400"):
        client.portal_url("cus_someone_else", "https://app.test/billing")


def test_erasure_exports_then_detaches_and_housekeeping_cancels_at_stripe(
        db, settings, events, client, stripe, user):
    sub_id, _ = subscribe(db, settings, events, client, stripe, user)
    exported = billing_privacy.export(db, settings, user)["subscriptions"]
    assert [(s["id"], s["plan"], s["status"]) for s in exported] == [(sub_id, "pro", "active")]
    erased = billing_privacy.erase(db, settings, user, NOW)
    db.commit()
    assert erased.tables["subscriptions"] == 1
    assert db.get(Subscription, sub_id).user_id is None
    service = worker_factory(BillingService, db=db, settings=settings, dispatch=events,
                             stripe=client)
    assert service._maintain("subscriptions", NOW) == 1
    assert stripe.subscriptions[sub_id]["status"] == "canceled"
    assert db.get(Subscription, sub_id) is None
    # a late invoice for the erased account grants nothing and reopens nothing
    assert billing_privacy.export(db, settings, user)["subscriptions"] == []


def test_events_in_any_order_find_the_account_from_the_metadata(db, settings, events, client,
                                                               stripe, user):
    order, _ = orders.begin_checkout(db, settings, user, {"plan_id": "pro"}, None, NOW, events)
    db.commit()
    session = client.create_checkout_session(
        order_id=str(order.id), name=order.description, amount=order.amount,
        currency=order.currency, success_url="https://app.test/ok",
        cancel_url="https://app.test/no",
        subscription=subscriptions.checkout_terms(settings.plans["pro"], str(user),
                                                  str(order.id)))
    orders.attach_session(db, order.id, session.id, session.url)
    db.commit()
    completed, created, paid = stripe.complete_subscription(session.id, int(NOW.timestamp()))
    assert [deliver(db, settings, events, e, NOW) for e in (paid, created, completed)] == \
        ["granted", "active", "paid"]
    assert account(db, user).available == 550 and account(db, user).plan == "pro"
    row = subscriptions.require_live(db, user)
    assert (row.order_id, row.customer_id) == (order.id, completed["data"]["object"]["customer"])


def test_a_subscription_that_is_not_ours_changes_nothing(db, settings, events):
    evt = {"id": "evt_foreign", "type": "invoice.paid", "data": {"object": {
        "id": "in_foreign", "object": "invoice", "customer": "cus_x",
        "parent": {"subscription_details": {"subscription": "sub_foreign", "metadata": {}}},
        "lines": {"data": [{"period": {"start": 1, "end": 2}}]}}}}
    assert deliver(db, settings, events, evt, NOW) == "unknown_subscription"
    assert db.get(Subscription, "sub_foreign") is None


def test_a_subscription_event_delivered_late_changes_nothing(db, settings, events, client,
                                                            stripe, user):
    sub_id, _ = subscribe(db, settings, events, client, stripe, user)
    stripe.subscriptions[sub_id]["status"] = "active"
    later = int(time.time()) + 60  # after the events of the subscription's start
    older = {"id": "evt_old", "type": "customer.subscription.updated", "created": later,
             "data": {"object": dict(stripe.subscriptions[sub_id], status="past_due")}}
    newer = {"id": "evt_new", "type": "customer.subscription.updated", "created": later + 1,
             "data": {"object": dict(stripe.subscriptions[sub_id], status="canceled")}}
    assert deliver(db, settings, events, newer, NOW) == "ended"
    assert deliver(db, settings, events, older, NOW) == "stale"
    assert db.get(Subscription, sub_id, populate_existing=True).status == "canceled"
    assert account(db, user).plan == "free"


def test_stripe_refusals_carry_their_status(client, stripe):
    with pytest.raises(PaymentProviderError) as info:
        client.cancel_at_period_end("sub_unknown")
    assert info.value.status == 404
    with pytest.raises(PaymentProviderError) as info:
        client.cancel_now("sub_unknown")
    assert info.value.status == 404
    stripe.stop()
    with pytest.raises(PaymentProviderError, match="unreachable") as info:
        client.portal_url("cus_x", "https://app.test/billing")
    assert info.value.status is None


def test_an_erased_subscription_unknown_to_stripe_is_forgotten(db, settings, events, client,
                                                              stripe, user):
    sub_id, _ = subscribe(db, settings, events, client, stripe, user)
    billing_privacy.erase(db, settings, user, NOW)
    db.commit()
    del stripe.subscriptions[sub_id]  # deleted in Stripe's dashboard meanwhile
    service = worker_factory(BillingService, db=db, settings=settings, dispatch=events,
                             stripe=client)
    assert service._maintain("subscriptions", NOW) == 1
    assert db.get(Subscription, sub_id) is None


def test_a_plan_whose_terms_roll_credits_over_keeps_them(db, events, client, stripe, user):
    base = BillingSettings().plans["pro"]
    plans = {**BillingSettings().plans,
             "pro": base.__class__(**{**base.__dict__, "credits_roll_over": True})}
    settings = BillingSettings(plans=plans, stripe_webhook_secrets=(SECRET,))
    sub_id, _ = subscribe(db, settings, events, client, stripe, user)
    renewal = period_end(stripe, sub_id) + timedelta(hours=1)
    for e in stripe.renew(sub_id):
        deliver(db, settings, events, e, renewal)
    assert account(db, user).available == 500 + 500  # the signup grant expired, not these
