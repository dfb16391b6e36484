"""Stripe webhooks: signature verification and event handling.

Verification (Stripe's scheme, checked by the official SDK's
``stripe.Webhook.construct_event``): the ``Stripe-Signature`` header is
``t=<unix time>,v1=<hex>[,v1=<hex>...]``; each ``v1`` may be
HMAC-SHA256(secret, ``f"{t}.{raw body}"``). The body is accepted when any
``v1`` matches any configured secret (``STRIPE_WEBHOOK_SECRET``, a
comma-separated list, so a secret can be rotated without downtime), and
``t`` is within ``STRIPE_WEBHOOK_TOLERANCE_SECONDS`` (300) of now, so a
captured request cannot be replayed later. Anything else is 400
``invalid_signature``, with nothing recorded.

Handling is idempotent on Stripe's event id (``webhook_events``): a
redelivered event answers ``{"received": true, "duplicate": true}`` and
changes nothing. Handled types: ``checkout.session.completed`` and
``checkout.session.async_payment_succeeded`` (paid sessions pay their
order), ``checkout.session.expired`` (a pending order fails),
``charge.refunded``, ``charge.dispute.created`` (the order's credits are
frozen) and ``charge.dispute.closed`` (lost: taken back like a refund; won:
unfrozen); ``invoice.paid``, ``invoice.payment_failed`` and
``customer.subscription.created/updated/deleted`` (renewing plans:
:mod:`services.billing.subscriptions`); other types are received and ignored.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Sequence
from datetime import datetime

from sqlalchemy.orm import Session

from services.billing import orders, subscriptions
from services.billing.models import Order, WebhookEvent
from services.billing.settings import BillingSettings
from services.common.contracts.billing import OrderStatus
from services.common.db import locked
from services.common.errors import DomainError, invalid_request
from services.common.ids import parse_uuid
from services.common.messaging import Dispatch

log = logging.getLogger(__name__)

MAX_SIGNATURES = 10


def invalid_signature(reason: str) -> DomainError:
    return DomainError("invalid_signature", "the webhook signature is not valid", 400,
                       {"reason": reason})


def parse_signature_header(header: str) -> tuple[int, list[str]]:
    timestamp, signatures = None, []
    for item in header.split(","):
        key, sep, value = item.strip().partition("=")
        if not sep:
            continue
        if key == "t":
            try:
                timestamp = int(value)
            except ValueError:
                raise invalid_signature("malformed") from None
        elif key == "v1" and value:
            signatures.append(value.strip().lower())
    if timestamp is None or not signatures or len(signatures) > MAX_SIGNATURES:
        raise invalid_signature("malformed")
    return timestamp, signatures


def verify_signature(payload: str, header: str | None, secrets: Sequence[str],
                     tolerance_seconds: int, now: float) -> int:
    """Check ``header`` signs ``payload`` with one of ``secrets``
    (``stripe.Webhook.construct_event``); returns its timestamp or raises 400
    ``invalid_signature`` (``details.reason``: missing, malformed, stale,
    mismatch). The age check is ours, against ``now`` and both ways (the
    SDK's looks at the wall clock, and only at the past)."""
    import stripe  # here, not at start (issue 15)

    if not header or not isinstance(header, str):
        raise invalid_signature("missing")
    timestamp, _ = parse_signature_header(header)
    matched = False
    for secret in secrets:
        try:
            stripe.Webhook.construct_event(payload, header, secret, tolerance=0)
            matched = True
        except stripe.SignatureVerificationError:
            continue
        except ValueError:  # signed, but not JSON
            raise invalid_request("the webhook body is not JSON") from None
    if not matched:
        raise invalid_signature("mismatch")
    if abs(now - timestamp) > tolerance_seconds:
        raise invalid_signature("stale")
    return timestamp


def parse_event(payload: str) -> dict:
    try:
        event = json.loads(payload)
    except ValueError:
        raise invalid_request("the webhook body is not JSON") from None
    if (not isinstance(event, dict) or not isinstance(event.get("id"), str) or not event["id"]
            or not isinstance(event.get("type"), str)
            or not isinstance((event.get("data") or {}).get("object"), dict)):
        raise invalid_request("the webhook body is not a Stripe event")
    if len(event["id"]) > 255 or len(event["type"]) > 100:
        raise invalid_request("the webhook body is not a Stripe event")
    return event


def _order_id_of(session: dict) -> uuid.UUID | None:
    candidate = (session.get("metadata") or {}).get("order_id") or session.get("client_reference_id")
    return parse_uuid(candidate) if candidate else None


def handle(db: Session, settings: BillingSettings, payload: str, signature: str | None,
           now: datetime, dispatch: Dispatch) -> dict:
    """Verify, parse and apply one webhook delivery in the current
    transaction (the caller commits). Returns ``{"received", "duplicate"}``."""
    verify_signature(payload, signature, settings.stripe_webhook_secrets,
                     settings.stripe_webhook_tolerance_seconds, now.timestamp())
    event = parse_event(payload)
    if db.get(WebhookEvent, event["id"]) is not None:
        return {"received": True, "duplicate": True}
    outcome = apply(db, settings, event, now, dispatch)
    db.add(WebhookEvent(id=event["id"], provider="stripe", type=event["type"], outcome=outcome,
                        received_at=now))
    log.info("stripe webhook", extra={"event_id": event["id"], "type": event["type"],
                                      "outcome": outcome})
    return {"received": True, "duplicate": False}


def apply(db: Session, settings: BillingSettings, event: dict, now: datetime,
          dispatch: Dispatch) -> str:
    obj = event["data"]["object"]
    kind = event["type"]
    if kind in ("checkout.session.completed", "checkout.session.async_payment_succeeded"):
        if obj.get("payment_status") != "paid":
            return "not_paid_yet"  # async payment methods: async_payment_succeeded follows
        order_id = _order_id_of(obj)
        if order_id is None:
            return "no_order_reference"
        return orders.fulfil(db, settings, order_id, obj, now, dispatch)
    if kind == "checkout.session.expired":
        order_id = _order_id_of(obj)
        order = locked(db, Order, order_id) if order_id else None
        if order is None or order.status != OrderStatus.PENDING:
            return "ignored"
        order.status, order.failure_reason = OrderStatus.FAILED, "checkout expired"
        return "order_failed"
    if kind == "charge.refunded":
        order_id = orders.find_refunded_order(db, obj)
        if order_id is None:
            return "unknown_order"
        return orders.refund(db, settings, order_id, obj, now, dispatch)
    if kind in SUBSCRIPTION_EVENTS:
        return SUBSCRIPTION_EVENTS[kind](db, settings, obj, now, dispatch,
                                         at=subscriptions.timestamp(event.get("created")))
    if kind in DISPUTE_EVENTS:
        order_id = orders.find_disputed_order(db, obj)
        if order_id is None:
            return "unknown_order"
        return DISPUTE_EVENTS[kind](db, settings, order_id, obj, now, dispatch)
    return "ignored"


SUBSCRIPTION_EVENTS = {"invoice.paid": subscriptions.invoice_paid,
                       "invoice.payment_failed": subscriptions.payment_failed,
                       "customer.subscription.created": subscriptions.changed,
                       "customer.subscription.updated": subscriptions.changed,
                       "customer.subscription.deleted": subscriptions.changed}
DISPUTE_EVENTS = {"charge.dispute.created": orders.dispute_opened,
                  "charge.dispute.closed": orders.dispute_closed}
