"""Credits and payments (docs/api.md "Credits and payments"), over the billing service's RPC.

The caller's balance, ledger and orders; the public plan and price lists; a
checkout for a credit pack or a plan (verified email required, honours
``Idempotency-Key``), through Stripe or PayPal; the capture of an approved
PayPal order; and the Stripe and PayPal webhooks.

The webhook is not authenticated by a credential but by its signature, which
covers the exact bytes Stripe sent: the gateway passes the raw body
(``request.get_data``, never parsed here) and the ``Stripe-Signature`` header
to ``billing.handle_stripe_webhook``, which verifies and applies it. A body
over ``BILLING_WEBHOOK_MAX_BYTES`` is refused (413) before it is read: Stripe's
events are a few KiB, and nothing unauthenticated gets to ship megabytes to
the billing service. PayPal's webhook goes the same way with its
``PAYPAL-*`` transmission headers, which billing verifies through PayPal.
"""

from __future__ import annotations

from flask import current_app, request
from marshmallow import Schema, fields

from gateway.api.common import (
    IDEMPOTENCY_KEY_DOC,
    Blueprint,
    cached_answer,
    call,
    capped_body,
    errors,
    for_caller,
    given,
    idempotency_key,
)
from gateway.auth import authenticated, current_principal, require_verified
from services.common.contracts import billing as c
from services.common.errors import DomainError

DEFAULT_WEBHOOK_MAX_BYTES = 256 * 1024

billing_blp = Blueprint("billing", __name__, url_prefix="/v1/billing",
                        description="Credits: balance, ledger, plans, prices, checkout, orders "
                                    "and the payment provider's webhook")

WEBHOOK_DOC = {
    "parameters": [{
        "in": "header", "name": "Stripe-Signature", "required": True,
        "schema": {"type": "string"},
        "description": "t=<unix time>,v1=<hex HMAC-SHA256 of \"t.body\">",
    }],
    "requestBody": {
        "required": True,
        "description": "a Stripe event, exactly as Stripe sent it (the signature covers the "
                       "raw bytes)",
        "content": {"application/json": {"schema": {"type": "object"}}},
    },
}


PAYPAL_HEADERS = ("PAYPAL-TRANSMISSION-ID", "PAYPAL-TRANSMISSION-TIME", "PAYPAL-TRANSMISSION-SIG",
                  "PAYPAL-CERT-URL", "PAYPAL-AUTH-ALGO")

PAYPAL_WEBHOOK_DOC = {
    "parameters": [{"in": "header", "name": name, "required": True, "schema": {"type": "string"},
                    "description": "as PayPal sent it (verified through PayPal's "
                                   "verify-webhook-signature API)"}
                   for name in PAYPAL_HEADERS],
    "requestBody": {
        "required": True,
        "description": "a PayPal webhook event, exactly as PayPal sent it",
        "content": {"application/json": {"schema": {"type": "object"}}},
    },
}


class WebhookAnswer(Schema):
    received = fields.Boolean(required=True)


def raw_body() -> str:
    """A webhook's exact body as text (never parsed here: its signature covers these bytes)."""
    try:
        return request.get_data(cache=False).decode("utf-8")
    except UnicodeDecodeError:
        raise DomainError("invalid_request", "the body is not UTF-8 JSON", 400) from None


def webhook_max_bytes() -> int:
    config = current_app.extensions["darkroom"].config
    return int(config.get("BILLING_WEBHOOK_MAX_BYTES") or DEFAULT_WEBHOOK_MAX_BYTES)


# ------------------------------------------------------------ the caller's account


@billing_blp.route("/balance", methods=["GET"])
@billing_blp.response(200, c.Balance)
@authenticated
def balance():
    """Credits available and held, the plan and this period's grants and use"""
    user_id = current_principal().user_id
    return cached_answer(c.Balance, "balance", user_id, None,
                         lambda: call(None, "billing.get_balance", user_id))


@billing_blp.route("/ledger", methods=["GET"])
@billing_blp.arguments(c.LedgerQuery, location="query")
@billing_blp.response(200, c.LedgerPage)
@authenticated
def ledger(query):
    """Every change to the caller's credits, newest first"""
    return for_caller(c.LedgerPage, "billing.list_ledger", given(query))


@billing_blp.route("/orders", methods=["GET"])
@billing_blp.arguments(c.OrderQuery, location="query")
@billing_blp.response(200, c.OrderPage)
@authenticated
def orders(query):
    """The caller's orders (packs and plans), newest first"""
    return for_caller(c.OrderPage, "billing.list_orders", given(query))


@billing_blp.route("/checkout", methods=["POST"])
@billing_blp.response(201, c.CheckoutCreated)
@billing_blp.doc(parameters=[IDEMPOTENCY_KEY_DOC])
@errors(404, 409)
@require_verified
@billing_blp.arguments(c.Checkout)
def checkout(payload):
    """Start paying for a credit pack or a plan: open checkout_url to pay"""
    return for_caller(c.CheckoutCreated, "billing.create_checkout", payload,
                      idempotency_key=idempotency_key())


@billing_blp.route("/orders/<uuid:order_id>/capture", methods=["POST"])
@billing_blp.response(200, c.Order)
@errors(402, 404, 409)
@authenticated
def capture(order_id):
    """Take the money of a PayPal order the buyer approved (on their return to the app)"""
    return for_caller(c.Order, "billing.capture_order", str(order_id))


@billing_blp.route("/subscription", methods=["GET"])
@billing_blp.response(200, c.Subscription)
@authenticated
def subscription():
    """The caller's plan subscription (the newest): status, period end, grace"""
    return for_caller(c.Subscription, "billing.get_subscription")


@billing_blp.route("/subscription/cancel", methods=["POST"])
@billing_blp.response(200, c.Subscription)
@authenticated
def cancel_subscription():
    """Cancel the caller's subscription at the end of the period already paid"""
    return for_caller(c.Subscription, "billing.cancel_subscription")


@billing_blp.route("/portal", methods=["GET"])
@billing_blp.response(200, c.PortalLink)
@authenticated
def portal():
    """A link to Stripe's customer portal: payment method, invoices, cancellation"""
    return for_caller(c.PortalLink, "billing.portal_link")


# ------------------------------------------------------------ public


@billing_blp.route("/plans", methods=["GET"])
@billing_blp.response(200, c.PlanList)
def plans():
    """The plans: price per period, credits granted, retention, queue priority"""
    return call(c.PlanList, "billing.list_plans")


@billing_blp.route("/prices", methods=["GET"])
@billing_blp.response(200, c.Prices)
def prices():
    """What each job type costs in credits, and the credit packs for sale"""
    return call(c.Prices, "billing.list_prices")


@billing_blp.route("/webhooks/stripe", methods=["POST"])
@billing_blp.response(200, WebhookAnswer)
@billing_blp.alt_response(413, description="the body is larger than BILLING_WEBHOOK_MAX_BYTES")
@billing_blp.doc(**WEBHOOK_DOC)
@errors(400)
@capped_body(webhook_max_bytes)
def stripe_webhook():
    """Stripe's events (signed; no credential): payments and refunds"""
    text = raw_body()
    call(None, "billing.handle_stripe_webhook", text, request.headers.get("Stripe-Signature"))
    return {"received": True}


@billing_blp.route("/webhooks/paypal", methods=["POST"])
@billing_blp.response(200, WebhookAnswer)
@billing_blp.alt_response(413, description="the body is larger than BILLING_WEBHOOK_MAX_BYTES")
@billing_blp.doc(**PAYPAL_WEBHOOK_DOC)
@errors(400)
@capped_body(webhook_max_bytes)
def paypal_webhook():
    """PayPal's events (verified with PayPal; no credential): payments, refunds, disputes"""
    text = raw_body()
    headers = {name: request.headers[name] for name in PAYPAL_HEADERS if name in request.headers}
    call(None, "billing.handle_paypal_webhook", text, headers)
    return {"received": True}
