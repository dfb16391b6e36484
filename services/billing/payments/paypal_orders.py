"""What PayPal's answers and events do to orders.

A PayPal order pays like a Stripe session (:func:`orders.fulfil`): our order
keeps the PayPal order id as ``provider_session_id`` and, once paid, the
capture id as ``payment_intent_id`` (the payment record's too). Refunds and
disputes reuse :func:`orders.refund`, :func:`orders.dispute_opened` and
:func:`orders.dispute_closed` (and so :mod:`reversals`), the PayPal objects
turned into the few fields those read.

- **Capture** (:func:`capture`, then :func:`apply_capture`): once the buyer
  approved the order, the app calls ``POST /v1/billing/orders/{id}/capture``
  (the buyer's return to ``<base>/checkout/success?order_id=...&token=...``).
  Every network call happens outside any transaction (the reads before it
  are detached). ``PayPal-Request-Id: capture:<order id>`` makes a retry the
  same capture;
  ``ORDER_ALREADY_CAPTURED`` (captured by an earlier call whose answer was
  lost) reads the order back instead; ``INSTRUMENT_DECLINED`` is 402
  ``payment_declined`` with the approve link to choose another way to pay;
  ``ORDER_NOT_APPROVED`` is 409 ``order_not_approved``. A capture PayPal
  answers ``DECLINED`` or ``FAILED`` fails the order (402 too); ``PENDING``
  leaves it pending until ``PAYMENT.CAPTURE.COMPLETED``.
- **Webhooks** (:func:`verified_event`, then :func:`handle`): verified
  first through PayPal's verify-webhook-signature API; idempotent on the event id
  (``webhook_events``, provider ``paypal``). ``CHECKOUT.ORDER.APPROVED``
  captures the order then and there (:func:`capture_approved`: the buyer
  may never come back to the app), ``PAYMENT.CAPTURE.COMPLETED``
  pays the order (once, whichever of the capture call and the event comes
  first), ``PAYMENT.CAPTURE.DENIED`` fails a pending one,
  ``PAYMENT.CAPTURE.REFUNDED`` refunds (PayPal's running total,
  ``seller_payable_breakdown.total_refunded_amount``),
  ``CUSTOMER.DISPUTE.CREATED`` freezes the credits and
  ``CUSTOMER.DISPUTE.RESOLVED`` takes them back (buyer's favour) or
  unfreezes them; other types are received and ignored.
- **Refunds** (:func:`refund_request`, :func:`send_refund`, then
  :func:`apply_refund`): an
  operator refunds a PayPal order through PayPal
  (``POST /v2/payments/captures/{id}/refund``).
"""

from __future__ import annotations

import json
import logging
import uuid
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from services.billing import orders
from services.billing.models import Order, WebhookEvent
from services.billing.payments import paypal, providers
from services.billing.payments.stripe import PaymentProviderError
from services.billing.payments.webhooks import invalid_signature
from services.billing.settings import BillingSettings
from services.common.contracts.billing import OrderStatus
from services.common.db import locked
from services.common.errors import DomainError, conflict, invalid_request, not_found
from services.common.ids import parse_uuid
from services.common.messaging import Dispatch

log = logging.getLogger(__name__)

TRANSMISSION_HEADERS = ("PAYPAL-TRANSMISSION-ID", "PAYPAL-TRANSMISSION-TIME",
                        "PAYPAL-TRANSMISSION-SIG", "PAYPAL-CERT-URL", "PAYPAL-AUTH-ALGO")
PAID = (OrderStatus.PAID, OrderStatus.PARTIALLY_REFUNDED, OrderStatus.REFUNDED)
BUYER_WINS = ("RESOLVED_BUYER_FAVOUR", "ACCEPTED")


def payment_declined(order: Order) -> DomainError:
    return DomainError("payment_declined", "PayPal declined the payment; choose another way "
                       "to pay at checkout_url", 402, {"checkout_url": order.checkout_url})


# ---------------------------------------------------------------- capture


def order_to_capture(db: Session, settings: BillingSettings, user_id: uuid.UUID,
                     order_id: uuid.UUID) -> Order:
    """The caller's PayPal order: 404 when it is not theirs, 409
    ``not_capturable`` when it is not a PayPal order with a checkout."""
    providers.require(settings, providers.PAYPAL)
    order = db.get(Order, order_id)
    if order is None or order.user_ref != str(user_id):
        raise not_found("order")
    if order.provider != providers.PAYPAL or not order.provider_session_id:
        raise conflict("only a PayPal order with a checkout is captured", code="not_capturable")
    if order.status == OrderStatus.FAILED:
        raise conflict("this order failed; start a new checkout", code="not_capturable")
    return _detached(db, order)


def _detached(db: Session, order: Order) -> Order:
    """The order as read, its read transaction ended: nothing stays open
    (or locked) while PayPal answers."""
    db.expunge(order)
    db.rollback()
    return order


def capture(client: paypal.PayPalClient, order: Order) -> dict:
    """Capture the buyer's approved PayPal order (outside any transaction):
    the PayPal order with its capture."""
    try:
        return client.capture(order.provider_session_id, request_id=f"capture:{order.id}")
    except paypal.PayPalRefused as exc:
        if exc.issue == paypal.ORDER_ALREADY_CAPTURED:
            return _read_back(client, order)
        if exc.issue == paypal.INSTRUMENT_DECLINED:
            raise payment_declined(order) from None
        if exc.issue == paypal.ORDER_NOT_APPROVED:
            raise conflict("the buyer has not approved this order at checkout_url yet",
                           code="order_not_approved", checkout_url=order.checkout_url) from None
        log.error("paypal refused a capture: %s", exc, extra={"order_id": str(order.id)})
        raise orders.provider_unavailable() from None
    except PaymentProviderError as exc:
        log.error("capture failed: %s", exc, extra={"order_id": str(order.id)})
        raise orders.provider_unavailable() from None


def _read_back(client: paypal.PayPalClient, order: Order) -> dict:
    try:
        return client.get_order(order.provider_session_id)
    except PaymentProviderError as exc:
        log.error("reading a captured order failed: %s", exc, extra={"order_id": str(order.id)})
        raise orders.provider_unavailable() from None


def capture_approved(db: Session, client: paypal.PayPalClient, event: dict) -> dict | None:
    """``CHECKOUT.ORDER.APPROVED``: capture the approved order now, outside
    any transaction; the answer for :func:`handle`, or None when there is
    nothing to capture (not ours, not pending). A capture PayPal refuses is
    recorded as the event's outcome; only PayPal being away fails the
    delivery (503, and PayPal delivers again)."""
    if event.get("event_type") != "CHECKOUT.ORDER.APPROVED":
        return None
    resource = event.get("resource") or {}
    units = [u for u in resource.get("purchase_units") or [] if isinstance(u, dict)]
    order_id = parse_uuid(str((units[0] if units else {}).get("custom_id") or ""))
    order = db.get(Order, order_id) if order_id else None
    if order is None:
        order = db.scalars(select(Order).where(
            Order.provider_session_id == str(resource.get("id") or ""),
            Order.provider == providers.PAYPAL)).first()
    if order is None or order.provider != providers.PAYPAL or \
            order.status != OrderStatus.PENDING or order.provider_session_id is None:
        db.rollback()
        return None
    order = _detached(db, order)
    try:
        return {"order_id": order.id, "answer": capture(client, order)}
    except DomainError as exc:
        if exc.status == 503:
            raise
        return {"order_id": order.id, "refused": exc.code}


def apply_capture(db: Session, settings: BillingSettings, order_id: uuid.UUID,
                  paypal_order: dict, now: datetime, dispatch: Dispatch) -> str:
    """What a capture answer does to the order: paid, still pending, or
    failed (``declined``). Returns the outcome."""
    found = paypal.first_capture(paypal_order)
    if found is None:
        return "no_capture"
    status = str(found.get("status") or "")
    if status == "COMPLETED":
        return orders.fulfil(db, settings, order_id, _payment(found, paypal_order.get("id")),
                             now, dispatch)
    if status in ("DECLINED", "FAILED"):
        return _fail(db, order_id, "payment declined")
    return "capture_pending"


def _payment(found: dict, paypal_order_id) -> dict:
    """A capture as the fields :func:`orders.fulfil` reads."""
    amount, currency = paypal.money(found.get("amount"))
    return {"id": paypal_order_id, "amount_total": amount, "currency": currency,
            "payment_intent": found.get("id")}


def _fail(db: Session, order_id: uuid.UUID | None, reason: str) -> str:
    order = locked(db, Order, order_id) if order_id else None
    if order is None or order.status != OrderStatus.PENDING:
        return "ignored"
    order.status, order.failure_reason = OrderStatus.FAILED, reason
    return "declined"


# ---------------------------------------------------------------- refunds (operators)


def refund_request(db: Session, settings: BillingSettings, order_id: uuid.UUID,
                   amount: int | None) -> tuple[Order, int]:
    """The paid PayPal order an operator refunds, and how much (all that is
    not back yet by default)."""
    order = db.get(Order, order_id)
    if order is None:
        raise not_found("order")
    if order.provider != providers.PAYPAL:
        raise conflict("refund this order in its provider's dashboard", code="not_refundable")
    left = int(order.amount) - int(order.amount_refunded) - int(order.amount_charged_back)
    if order.status not in PAID or not order.payment_intent_id or left <= 0:
        raise conflict("this order has no payment left to refund", code="not_refundable")
    amount = left if amount is None else amount
    if amount > left:
        raise invalid_request(f"at most {left} can be refunded",
                              fields={"amount": [f"At most {left}."]})
    return _detached(db, order), amount


def send_refund(client: paypal.PayPalClient, order: Order, amount: int) -> dict:
    """Ask PayPal to refund ``amount`` of the order's capture (outside any
    transaction). The request id names the order's refunded total so far:
    a retry of this refund is the same refund, never a second one."""
    try:
        return client.refund(order.payment_intent_id, amount, order.currency, str(order.id),
                             request_id=f"refund:{order.id}:{order.amount_refunded}:{amount}")
    except paypal.PayPalRefused as exc:
        raise conflict("PayPal refused the refund", code="not_refundable",
                       issue=exc.issue) from None
    except PaymentProviderError as exc:
        log.error("refund failed: %s", exc, extra={"order_id": str(order.id)})
        raise orders.provider_unavailable() from None


def apply_refund(db: Session, settings: BillingSettings, order: Order, amount: int,
                 refund: dict, now: datetime, dispatch: Dispatch) -> str:
    if refund.get("status") != "COMPLETED":
        return "refund_pending"  # PAYMENT.CAPTURE.REFUNDED follows
    total, currency = _refunded_total(refund)
    if total is None:
        total, currency = int(order.amount_refunded) + amount, order.currency
    return orders.refund(db, settings, order.id, {"currency": currency, "amount_refunded": total},
                         now, dispatch)


def _refunded_total(refund: dict) -> tuple[int | None, str]:
    breakdown = refund.get("seller_payable_breakdown") or {}
    return paypal.money(breakdown.get("total_refunded_amount"))


# ---------------------------------------------------------------- webhooks


def verified_event(client: paypal.PayPalClient, settings: BillingSettings, payload: str,
                   headers: dict) -> dict:
    """The delivery's event, once PayPal's verify-webhook-signature API said
    it is genuine and for ``PAYPAL_WEBHOOK_ID``: 400 ``invalid_signature``
    otherwise, 503 when PayPal cannot say (PayPal delivers again), 400
    ``invalid_request`` for a verified body that is not an event."""
    providers.require(settings, providers.PAYPAL)
    sent = transmission(headers)
    event = parse_body(payload)  # 400, and PayPal is not asked, for what is not an object
    try:
        genuine = client.verify_webhook(sent, payload, settings.paypal_webhook_id)
    except PaymentProviderError as exc:
        log.error("paypal webhook verification failed: %s", exc)
        raise orders.provider_unavailable() from None
    if not genuine:
        raise invalid_signature("mismatch")
    return check_event(event)


def transmission(headers: dict | None) -> dict:
    """The ``PAYPAL-*`` headers a delivery is verified with; 400
    ``invalid_signature`` (missing) without them."""
    upper = {str(k).upper(): str(v) for k, v in (headers or {}).items()}
    found = {name: upper.get(name, "") for name in TRANSMISSION_HEADERS}
    if not all(found.values()):
        raise invalid_signature("missing")
    return found


def parse_body(payload: str) -> dict:
    """The delivery's JSON object (what PayPal is asked to verify); 400
    ``invalid_request`` when it is not one."""
    try:
        event = json.loads(payload)
    except ValueError:
        raise invalid_request("the webhook body is not JSON") from None
    if not isinstance(event, dict):
        raise invalid_request("the webhook body is not a PayPal event")
    return event


def check_event(event: dict) -> dict:
    """A verified body that is not a PayPal event is 400 ``invalid_request``."""
    if (not isinstance(event.get("id"), str) or not event["id"] or len(event["id"]) > 255
            or not isinstance(event.get("event_type"), str) or len(event["event_type"]) > 100
            or not isinstance(event.get("resource"), dict)):
        raise invalid_request("the webhook body is not a PayPal event")
    return event


def handle(db: Session, settings: BillingSettings, event: dict, now: datetime,
           dispatch: Dispatch, captured: dict | None = None) -> dict:
    """Apply one verified event in the current transaction (the caller
    commits); ``captured`` is :func:`capture_approved`'s answer. Returns
    ``{"received", "duplicate"}``."""
    if db.get(WebhookEvent, event["id"]) is not None:
        return {"received": True, "duplicate": True}
    if event["event_type"] == "CHECKOUT.ORDER.APPROVED":
        outcome = _approved(db, settings, captured, now, dispatch)
    else:
        outcome = apply(db, settings, event["event_type"], event["resource"], now, dispatch)
    db.add(WebhookEvent(id=event["id"], provider=providers.PAYPAL, type=event["event_type"],
                        outcome=outcome, received_at=now))
    log.info("paypal webhook", extra={"event_id": event["id"], "type": event["event_type"],
                                      "outcome": outcome})
    return {"received": True, "duplicate": False}


def apply(db: Session, settings: BillingSettings, kind: str, resource: dict, now: datetime,
          dispatch: Dispatch) -> str:
    if kind == "PAYMENT.CAPTURE.COMPLETED":
        order_id = _order_of_capture(db, resource)
        if order_id is None:
            return "unknown_order"
        related = ((resource.get("supplementary_data") or {}).get("related_ids") or {})
        return orders.fulfil(db, settings, order_id, _payment(resource, related.get("order_id")),
                             now, dispatch)
    if kind == "PAYMENT.CAPTURE.DENIED":
        return _fail(db, _order_of_capture(db, resource), "payment denied")
    if kind == "PAYMENT.CAPTURE.REFUNDED":
        return _refunded(db, settings, resource, now, dispatch)
    if kind in ("CUSTOMER.DISPUTE.CREATED", "CUSTOMER.DISPUTE.RESOLVED"):
        return _dispute(db, settings, kind, resource, now, dispatch)
    return "ignored"


def _approved(db: Session, settings: BillingSettings, captured: dict | None, now: datetime,
              dispatch: Dispatch) -> str:
    if captured is None:
        return "ignored"
    if "refused" in captured:
        return f"capture_refused:{captured['refused']}"
    return apply_capture(db, settings, captured["order_id"], captured["answer"], now, dispatch)


def _order_of_capture(db: Session, capture: dict) -> uuid.UUID | None:
    """Our order id travels as the capture's ``custom_id``; else the PayPal order id."""
    found = parse_uuid(str(capture.get("custom_id") or capture.get("invoice_id") or ""))
    if found is not None:
        return found
    related = ((capture.get("supplementary_data") or {}).get("related_ids") or {}).get("order_id")
    if not related:
        return None
    return db.scalar(select(Order.id).where(Order.provider_session_id == str(related),
                                            Order.provider == providers.PAYPAL))


def _refunded(db: Session, settings: BillingSettings, refund: dict, now: datetime,
              dispatch: Dispatch) -> str:
    """A refund names its capture in its ``up`` link."""
    up = next((link.get("href") for link in refund.get("links") or []
               if isinstance(link, dict) and link.get("rel") == "up"), None)
    capture_id = str(up).rstrip("/").rsplit("/", 1)[-1] if up else None
    order_id = orders.find_refunded_order(db, {
        "payment_intent": capture_id,
        "metadata": {"order_id": refund.get("custom_id") or refund.get("invoice_id")}})
    if order_id is None:
        return "unknown_order"
    total, currency = _refunded_total(refund)
    if total is None:
        log.error("a paypal refund without its running total", extra={"order_id": str(order_id)})
        return "no_refund_total"
    return orders.refund(db, settings, order_id, {"currency": currency, "amount_refunded": total},
                         now, dispatch)


def _dispute(db: Session, settings: BillingSettings, kind: str, dispute: dict, now: datetime,
             dispatch: Dispatch) -> str:
    """A PayPal dispute as the fields :mod:`orders`' dispute steps read: its
    capture (``seller_transaction_id``) is the order's payment."""
    transactions = [t for t in dispute.get("disputed_transactions") or [] if isinstance(t, dict)]
    first = transactions[0] if transactions else {}
    outcome = dispute.get("dispute_outcome") or {}
    amount, currency = paypal.money(outcome.get("amount_refunded")
                                    or dispute.get("dispute_amount"))
    view = {"id": dispute.get("dispute_id"), "payment_intent": first.get("seller_transaction_id"),
            "metadata": {"order_id": first.get("custom") or first.get("invoice_number")},
            "amount": amount, "currency": currency}
    order_id = orders.find_disputed_order(db, view)
    if order_id is None:
        return "unknown_order"
    if kind == "CUSTOMER.DISPUTE.CREATED":
        return orders.dispute_opened(db, settings, order_id, view, now, dispatch)
    view["status"] = "lost" if outcome.get("outcome_code") in BUYER_WINS else "won"
    return orders.dispute_closed(db, settings, order_id, view, now, dispatch)
