"""Plans that renew, through the billing service's real entrypoint (`nameko
run`) over RabbitMQ and PostgreSQL, with the fake Stripe over HTTP spoken to
by the official SDK: the subscription checkout, invoices granting once,
dunning to the free plan (time moved by editing the account's row, then the
timers' work through ``run_maintenance``), cancellation, the portal, the
ledger audit, and erasure cancelling the subscription at Stripe."""

from __future__ import annotations

import uuid

import pytest

from tests.fakes.stripe import signed_body
from tests.integration.test_billing_service import (  # noqa: F401  (the module's fixture)
    SECRET,
    assert_clean,
    billing,
    new_user,
    privacy_part,
    refused,
    sql,
)

pytestmark = pytest.mark.integration


def deliver(billing, events) -> list[dict]:  # noqa: F811
    return [billing.rpc.handle_stripe_webhook(*signed_body(e, SECRET)) for e in events]


def subscribe(billing, user: str, plan_id: str = "pro") -> str:  # noqa: F811
    created = billing.rpc.create_checkout(user, {"plan_id": plan_id})
    session = billing.stripe.session_for_order(created["order_id"])
    deliver(billing, billing.stripe.complete_subscription(session["id"]))
    return billing.stripe.session(session["id"])["subscription"]


def test_a_subscription_grants_each_invoice_once(billing):  # noqa: F811
    user = new_user(billing)
    sub_id = subscribe(billing, user)
    form = next(r.form for r in billing.stripe.requests
                if r.form.get("subscription_data[metadata][user_id]") == user)
    assert (form["mode"], form["line_items[0][price_data][recurring][interval]"]) == \
        ("subscription", "month")
    balance = billing.rpc.get_balance(user)
    assert (balance["plan"], balance["available"]) == ("pro", 550)
    assert billing.rpc.get_subscription(user)["status"] == "active"
    invoice = next(i for i in reversed(billing.stripe.invoices) if i["_subscription"] == sub_id)
    replay = {"id": f"evt_again_{uuid.uuid4().hex}", "type": "invoice.paid",
              "data": {"object": {k: v for k, v in invoice.items() if not k.startswith("_")}}}
    assert deliver(billing, [replay]) == [{"received": True, "duplicate": False}]
    assert billing.rpc.get_balance(user)["available"] == 550
    deliver(billing, billing.stripe.renew(sub_id))
    assert billing.rpc.get_balance(user)["available"] == 1050
    assert_clean(billing, user)


def test_a_failed_renewal_drops_to_the_free_plan_after_the_grace(billing):  # noqa: F811
    user = new_user(billing)
    sub_id = subscribe(billing, user)
    deliver(billing, billing.stripe.renew(sub_id, paid=False))
    late = billing.rpc.get_subscription(user)
    assert late["status"] == "past_due" and late["grace_until"] is not None
    assert billing.rpc.get_balance(user)["plan_expires_at"] == late["grace_until"]
    assert billing.rpc.run_maintenance(["plans"]) == {"plans": 0}
    assert billing.rpc.get_balance(user)["plan"] == "pro"
    # the grace period is over
    sql(billing, "UPDATE accounts SET plan_expires_at = now() - interval '1 second' "
                 "WHERE user_id = :u", u=uuid.UUID(user))
    assert billing.rpc.run_maintenance(["plans"])["plans"] >= 1
    assert billing.rpc.get_balance(user)["plan"] == "free"
    billing.tap.wait("plan_changed", user_id=user, plan="free")
    assert_clean(billing, user)


def test_cancel_portal_and_ownership(billing):  # noqa: F811
    user, stranger = new_user(billing), new_user(billing)
    sub_id = subscribe(billing, user)
    assert refused(billing.rpc.cancel_subscription, stranger).code == "not_found"
    assert refused(billing.rpc.portal_link, stranger).code == "not_found"
    assert refused(billing.rpc.get_subscription, stranger).code == "not_found"
    customer = billing.stripe.subscriptions[sub_id]["customer"]
    assert billing.rpc.portal_link(user)["url"].startswith("https://billing.stripe.test/")
    assert billing.stripe.portal_sessions[-1]["customer"] == customer
    assert billing.stripe.portal_sessions[-1]["return_url"].endswith("/billing")
    cancelled = billing.rpc.cancel_subscription(user)
    assert cancelled["cancel_at_period_end"] is True
    assert billing.stripe.subscriptions[sub_id]["cancel_at_period_end"] is True
    assert billing.rpc.get_balance(user)["plan_expires_at"] == cancelled["current_period_end"]
    asked = len(billing.stripe.requests)  # again: answered from the row, Stripe not asked
    assert billing.rpc.cancel_subscription(user)["cancel_at_period_end"] is True
    assert len(billing.stripe.requests) == asked
    deliver(billing, billing.stripe.renew(sub_id))
    assert billing.rpc.get_balance(user)["plan"] == "free"


def test_stripe_down_when_cancelling_is_a_503_and_changes_nothing(billing):  # noqa: F811
    user = new_user(billing)
    sub_id = subscribe(billing, user)
    billing.stripe.fail_next(503)
    error = refused(billing.rpc.cancel_subscription, user)
    assert (error.code, error.status) == ("payment_provider_unavailable", 503)
    assert billing.rpc.get_subscription(user)["cancel_at_period_end"] is False
    assert billing.stripe.subscriptions[sub_id]["cancel_at_period_end"] is False


def test_erasure_exports_then_cancels_the_subscription_at_stripe(billing):  # noqa: F811
    user = new_user(billing)
    sub_id = subscribe(billing, user)
    [exported] = privacy_part(billing, "export", user)["data"]["subscriptions"]
    assert (exported["id"], exported["plan"], exported["status"]) == (sub_id, "pro", "active")
    assert privacy_part(billing, "erasure", user)["rows_deleted"] >= 1
    assert sql(billing, "SELECT user_id FROM subscriptions WHERE id = :s",
               s=sub_id).scalar() is None
    assert billing.rpc.run_maintenance(["subscriptions"]) == {"subscriptions": 1}
    assert billing.stripe.subscriptions[sub_id]["status"] == "canceled"
    assert sql(billing, "SELECT count(*) FROM subscriptions WHERE id = :s",
               s=sub_id).scalar() == 0
    # Stripe's customer.subscription.deleted that follows reopens nothing
    deliver(billing, [{"id": f"evt_{uuid.uuid4().hex}", "type": "customer.subscription.deleted",
                       "data": {"object": billing.stripe.subscriptions[sub_id]}}])
    assert sql(billing, "SELECT count(*) FROM subscriptions WHERE id = :s",
               s=sub_id).scalar() == 0
    assert refused(billing.rpc.get_balance, user).code == "not_found"
