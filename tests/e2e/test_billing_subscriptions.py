"""Plans that renew, through the whole stack: a plan checkout is a Stripe
subscription (the fake Stripe, through the official SDK), its signed events
reach billing through the gateway's webhook, each renewal invoice grants the
plan's credits once (a replayed invoice.paid grants nothing), a failed
renewal keeps the plan for the grace period and Stripe's final failure drops
the account to the free plan, and a cancellation ends the plan at the end
of the period paid for. The portal link is the caller's own."""

from __future__ import annotations

import pytest

from tests.conftest import wait_for
from tests.e2e.stack import post_stripe_event, verified_login

pytestmark = pytest.mark.e2e

SIGNUP_GRANT, PRO_GRANT = 50, 500  # deploy/config/billing.yaml


def balance(stack, token) -> dict:
    response = stack.call("GET", "/v1/billing/balance", token=token)
    assert response.status_code == 200, response.text
    return response.json()


def subscription(stack, token) -> dict:
    response = stack.call("GET", "/v1/billing/subscription", token=token)
    assert response.status_code == 200, response.text
    return response.json()


def deliver(stack, events) -> None:
    for event in events:
        response = post_stripe_event(stack, event)
        assert response.status_code == 200, response.text


def subscribe(stack, plan_id="pro") -> tuple[str, str]:
    """A verified user who paid a plan checkout: (token, Stripe subscription id)."""
    _, _, token = verified_login(stack)
    wait_for(lambda: balance(stack, token)["available"] == SIGNUP_GRANT, 15,
             what="the signup grant")
    response = stack.call("POST", "/v1/billing/checkout", token=token, json={"plan_id": plan_id})
    assert response.status_code == 201, response.text
    session = stack.stripe.session_for_order(response.json()["order_id"])
    assert session["mode"] == "subscription"
    assert response.json()["checkout_url"] == session["url"]
    deliver(stack, stack.stripe.complete_subscription(session["id"]))
    return token, stack.stripe.session(session["id"])["subscription"]


def test_renewals_grant_once_and_a_failed_renewal_ends_on_the_free_plan(stack):
    token, sub_id = subscribe(stack)
    now = balance(stack, token)
    assert (now["plan"], now["available"]) == ("pro", SIGNUP_GRANT + PRO_GRANT)
    first = subscription(stack, token)
    assert (first["plan"], first["status"], first["cancel_at_period_end"]) == \
        ("pro", "active", False)
    again = stack.call("POST", "/v1/billing/checkout", token=token, json={"plan_id": "studio"})
    assert (again.status_code, again.json()["error"]["code"]) == (409, "subscription_active")

    # Stripe sends the first invoice.paid again, as a new event: nothing more
    invoice = next(i for i in reversed(stack.stripe.invoices) if i["_subscription"] == sub_id)
    replay = {k: v for k, v in invoice.items() if not k.startswith("_")}
    deliver(stack, [{"id": "evt_replay_" + invoice["id"], "object": "event", "type":
                     "invoice.paid", "data": {"object": replay}}])
    assert balance(stack, token)["available"] == SIGNUP_GRANT + PRO_GRANT

    deliver(stack, stack.stripe.renew(sub_id))  # the next month, paid
    assert balance(stack, token)["available"] == SIGNUP_GRANT + 2 * PRO_GRANT
    grants = [e for e in stack.call("GET", "/v1/billing/ledger", token=token).json()["items"]
              if e["kind"] == "grant" and e["amount"] == PRO_GRANT]
    assert len(grants) == 2 and all(e["expires_at"] for e in grants)

    deliver(stack, stack.stripe.renew(sub_id, paid=False))  # declined: dunning
    late = subscription(stack, token)
    assert (late["status"], late["grace_until"] is not None) == ("past_due", True)
    assert balance(stack, token)["plan"] == "pro"  # kept for the grace period
    deliver(stack, stack.stripe.retry_payment(sub_id, paid=False))  # Stripe gives up
    assert subscription(stack, token)["status"] == "canceled"
    assert balance(stack, token)["plan"] == "free"


def test_cancel_at_period_end_and_the_portal(stack):
    token, sub_id = subscribe(stack)
    _, _, stranger = verified_login(stack)
    assert stack.call("GET", "/v1/billing/portal", token=stranger).status_code == 404
    assert stack.call("POST", "/v1/billing/subscription/cancel",
                      token=stranger).status_code == 404

    portal = stack.call("GET", "/v1/billing/portal", token=token)
    assert portal.status_code == 200, portal.text
    assert portal.json()["url"] == stack.stripe.portal_sessions[-1]["url"]
    assert stack.stripe.portal_sessions[-1]["customer"] == \
        stack.stripe.subscriptions[sub_id]["customer"]

    cancelled = stack.call("POST", "/v1/billing/subscription/cancel", token=token)
    assert cancelled.status_code == 200, cancelled.text
    assert cancelled.json()["cancel_at_period_end"] is True
    assert stack.stripe.subscriptions[sub_id]["cancel_at_period_end"] is True
    end = cancelled.json()["current_period_end"]
    assert balance(stack, token)["plan"] == "pro"
    assert balance(stack, token)["plan_expires_at"] == end  # no grace after a cancellation
    again = stack.call("POST", "/v1/billing/subscription/cancel", token=token)
    assert again.status_code == 200 and again.json()["cancel_at_period_end"] is True

    deliver(stack, stack.stripe.renew(sub_id))  # the period ends: Stripe deletes it
    assert balance(stack, token)["plan"] == "free"
    assert subscription(stack, token)["status"] == "canceled"
    gone = stack.call("POST", "/v1/billing/subscription/cancel", token=token)
    assert (gone.status_code, gone.json()["error"]["code"]) == (404, "not_found")
