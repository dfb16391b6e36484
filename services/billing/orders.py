"""Orders: buying a credit pack or a paid plan through Stripe Checkout.

1. :func:`begin_checkout` validates the request and writes the order
   (``pending``); the service commits it *before* calling Stripe, so a paid
   session can always find its order (and no transaction stays open, no row
   stays locked, while Stripe answers).
2. The service asks Stripe for a Checkout Session (``payments/stripe.py``)
   outside any transaction, then :func:`attach_session` stores its id and
   URL, or :func:`mark_failed` fails the order when Stripe is unreachable or
   refuses (the caller gets 503 ``payment_provider_unavailable``): no pending
   order is left that can never complete. A crash between the two leaves a
   pending order without a session; :func:`expire_pending` fails it after
   ``PENDING_ORDER_TIMEOUT_SECONDS`` (and a session never paid after
   ``CHECKOUT_SESSION_TTL_SECONDS``).
3. Stripe's signed webhook (``payments/webhooks.py``) pays the order
   (:func:`fulfil`), refunds it (:func:`refund`) or reports a dispute
   (:func:`dispute_opened`, :func:`dispute_closed`; the credits taken back
   are :mod:`reversals`'). A payment for an order already failed by the
   timeout is still honoured: the money was taken.

With an ``Idempotency-Key`` the same request gets the same order back (and
the same checkout URL); the same key with another body is refused with 409
``idempotency_key_reused``. A repeat of a request whose order failed before it
got a session asks Stripe again for that same order.

Every function here runs in the caller's transaction; the caller commits.
"""

from __future__ import annotations

import hashlib
import json
import logging
import uuid
from datetime import datetime, timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from services.billing import ledger, plans, reversals, subscriptions
from services.billing.models import Account, Order, Payment
from services.billing.payments import providers
from services.billing.settings import BillingSettings
from services.common.contracts.billing import OrderStatus
from services.common.db import locked
from services.common.errors import DomainError, conflict, not_found
from services.common.idempotency import request_hash
from services.common.ids import add_years, parse_uuid
from services.common.messaging import Dispatch
from services.common.pagination import paginate

log = logging.getLogger(__name__)

DEFAULT_PACK_EXPIRY_DAYS = 365


def provider_unavailable() -> DomainError:
    return DomainError("payment_provider_unavailable",
                       "the payment provider is unavailable; try again later", 503)


def same_request(order: Order, data: dict) -> bool:
    """Whether ``data`` is the request that created ``order`` under the same
    Idempotency-Key. Orders written before the one canonical JSON of
    :mod:`services.common.idempotency` hold the hash of
    ``json.dumps(data, sort_keys=True)`` (default separators): those match too,
    so a retry across the upgrade still finds its order."""
    legacy = hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()
    return order.request_hash in (request_hash(data), legacy)


def view(order: Order) -> dict:
    return {
        "id": order.id, "kind": order.kind, "item_id": order.item_id,
        "description": order.description, "credits": order.credits, "amount": order.amount,
        "currency": order.currency, "status": order.status, "created_at": order.created_at,
        "paid_at": order.paid_at, "amount_refunded": order.amount_refunded,
        "dispute_status": order.dispute_status, "provider": order.provider,
    }


# ---------------------------------------------------------------- checkout


def begin_checkout(db: Session, settings: BillingSettings, user_id: uuid.UUID, data: dict,
                   idempotency_key: str | None, now: datetime,
                   dispatch: Dispatch) -> tuple[Order, bool]:
    """The order for this request, and whether it still needs a checkout
    session. New orders are ``pending``; the caller commits."""
    provider = providers.chosen(settings, data)
    account = plans.open_account(db, settings, user_id, now, dispatch)
    if account is None:
        raise not_found("account")
    user_ref = str(user_id)
    digest = request_hash(data)
    if idempotency_key:
        existing = db.scalars(select(Order).where(
            Order.user_ref == user_ref, Order.idempotency_key == idempotency_key)).first()
        if existing is not None:
            if not same_request(existing, data):
                raise conflict("this Idempotency-Key was used with another request",
                               code="idempotency_key_reused")
            if existing.checkout_url:
                return existing, False
            existing.status, existing.failure_reason = OrderStatus.PENDING, None
            return existing, True
    if "pack_id" in data:
        pack = settings.packs.get(data["pack_id"])
        if pack is None:
            raise not_found("pack")
        order = Order(kind="pack", item_id=pack.id, description=pack.name, credits=pack.credits,
                      lot_expires_days=pack.expires_days, amount=pack.price_amount,
                      currency=pack.currency)
    else:
        plan = settings.plans.get(data["plan_id"])
        if plan is None:
            raise not_found("plan")
        if not plan.paid:
            raise conflict(f"the {plan.name} plan is not for sale")
        if plans.effective_plan(settings, account, now).id == plan.id:
            raise conflict(f"you are already on the {plan.name} plan")
        subscriptions.refuse_second(db, user_id)
        order = Order(kind="plan", item_id=plan.id, description=f"{plan.name} plan",
                      credits=plan.monthly_grant, amount=plan.price_amount,
                      currency=plan.currency)
    order.user_ref, order.status, order.created_at = user_ref, OrderStatus.PENDING, now
    order.provider = provider
    order.idempotency_key, order.request_hash = idempotency_key, digest
    order.amount_refunded, order.credits_reversed = 0, 0
    db.add(order)
    db.flush()
    return order, True


def attach_session(db: Session, order_id: uuid.UUID, session_id: str, url: str) -> Order:
    order = locked(db, Order, order_id)
    if order.provider_session_id is None:
        order.provider_session_id = session_id
    order.checkout_url = url
    if order.status == OrderStatus.FAILED:  # the timeout failed it while Stripe answered
        order.status, order.failure_reason = OrderStatus.PENDING, None
    return order


def mark_failed(db: Session, order_id: uuid.UUID, reason: str) -> None:
    order = locked(db, Order, order_id)
    if order is not None and order.status == OrderStatus.PENDING and order.checkout_url is None:
        order.status, order.failure_reason = OrderStatus.FAILED, reason[:200]


def expire_pending(db: Session, settings: BillingSettings, now: datetime) -> int:
    """Fail orders that can no longer be paid: no session after the pending
    timeout (a crash between the order and Stripe's answer), or a session
    older than Stripe keeps it open. Returns how many; the caller commits."""
    no_session = now - timedelta(seconds=settings.pending_order_timeout_seconds)
    too_old = now - timedelta(seconds=settings.checkout_session_ttl_seconds)
    rows = db.scalars(select(Order)
                      .where(Order.status == OrderStatus.PENDING, Order.created_at <= no_session)
                      .with_for_update(skip_locked=True)).all()
    failed = 0
    for order in rows:
        if order.checkout_url is None:
            order.status, order.failure_reason = OrderStatus.FAILED, "no checkout session"
        elif order.created_at <= too_old:
            order.status, order.failure_reason = OrderStatus.FAILED, "checkout expired"
        else:
            continue
        failed += 1
    return failed


def list_orders(db: Session, user_id: uuid.UUID, query: dict) -> tuple[list[Order], str | None]:
    stmt = select(Order).where(Order.user_ref == str(user_id))
    return paginate(db, stmt, Order.created_at, Order.id, query["limit"], query["cursor"])


# ---------------------------------------------------------------- payment and refund


def _lock_order_and_account(db: Session, settings: BillingSettings, order_id: uuid.UUID,
                            now: datetime, dispatch: Dispatch) -> tuple[Order | None, Account | None]:
    """Account first, then order: every path takes the locks in that order."""
    order = db.get(Order, order_id)
    if order is None:
        return None, None
    account = None
    if order.pseudonymised_at is None:
        account = plans.locked_account(db, settings, uuid.UUID(order.user_ref), now, dispatch)
    order = locked(db, Order, order_id)
    return order, account


def fulfil(db: Session, settings: BillingSettings, order_id: uuid.UUID, session: dict,
           now: datetime, dispatch: Dispatch) -> str:
    """A Checkout Session was paid: credit the pack or start the plan, record
    the payment, mark the order paid, dispatch ``billing.order_paid``.
    Returns the outcome (recorded with the webhook event)."""
    order, account = _lock_order_and_account(db, settings, order_id, now, dispatch)
    if order is None:
        log.warning("payment for an unknown order", extra={"order_id": str(order_id)})
        return "unknown_order"
    if order.status in (OrderStatus.PAID, OrderStatus.REFUNDED, OrderStatus.PARTIALLY_REFUNDED):
        return "already_paid"
    if order.provider_session_id and session.get("id") != order.provider_session_id:
        log.error("payment session does not match the order's", extra={"order_id": str(order_id)})
        return "session_mismatch"
    if session.get("amount_total") != order.amount or \
            str(session.get("currency") or "").lower() != order.currency:
        log.error("payment amount does not match the order", extra={
            "order_id": str(order_id), "amount": session.get("amount_total"),
            "currency": session.get("currency")})
        return "amount_mismatch"
    if account is None:  # erased before paying: the money needs a manual refund
        log.error("payment for an erased account", extra={"order_id": str(order_id)})
    elif order.kind == "pack":
        days = order.lot_expires_days or DEFAULT_PACK_EXPIRY_DAYS
        ledger.credit(db, account, kind="purchase", key=f"order:{order.id}:purchase",
                      credits=int(order.credits), now=now, expires_at=now + timedelta(days=days),
                      order_id=order.id, reason=order.description)
    elif session.get("mode") == "subscription":  # the credits come with invoice.paid
        subscriptions.started(db, settings, order, session, now, dispatch)
    else:  # a plan bought once, before plans renewed
        plans.activate_plan(db, settings, account, order, now, dispatch)
    order.status, order.paid_at, order.failure_reason = OrderStatus.PAID, now, None
    order.provider_session_id = order.provider_session_id or session.get("id")
    order.payment_intent_id = _string(session.get("payment_intent"))
    order.retain_until = add_years(now, settings.payment_retention_years)
    db.add(Payment(
        order_id=order.id, user_ref=order.user_ref, provider=order.provider,
        provider_session_id=order.provider_session_id, payment_intent_id=order.payment_intent_id,
        amount=order.amount, currency=order.currency, amount_refunded=0, status=OrderStatus.PAID,
        created_at=now, paid_at=now, retain_until=order.retain_until,
        pseudonymised_at=order.pseudonymised_at,
    ))
    if account is not None:
        dispatch("order_paid", {
            "order_id": str(order.id), "user_id": order.user_ref, "kind": order.kind,
            "item_id": order.item_id, "description": order.description,
            "credits": int(order.credits), "amount": int(order.amount),
            "currency": order.currency, "paid_at": now.isoformat(),
        })
    log.info("order paid", extra={"order_id": str(order.id), "kind": order.kind})
    return "paid" if account is not None else "paid_erased_account"


def find_refunded_order(db: Session, charge: dict) -> uuid.UUID | None:
    intent = _string(charge.get("payment_intent"))
    if intent:
        found = db.scalar(select(Order.id).where(Order.payment_intent_id == intent))
        if found is not None:
            return found
    order_id = (charge.get("metadata") or {}).get("order_id")
    return parse_uuid(order_id) if order_id else None


def _lock_paid_order(db: Session, settings: BillingSettings, order_id: uuid.UUID, now: datetime,
                     dispatch: Dispatch, what: str) -> tuple[Order | None, Account | None, str | None]:
    """The paid order money goes back for (a refund, a dispute), and its
    account, locked; or the outcome refusing it (``unknown_order``, ``not_paid``)."""
    order, account = _lock_order_and_account(db, settings, order_id, now, dispatch)
    if order is None:
        log.warning("%s for an unknown order", what, extra={"order_id": str(order_id)})
        return None, None, "unknown_order"
    if order.status not in (OrderStatus.PAID, OrderStatus.PARTIALLY_REFUNDED, OrderStatus.REFUNDED):
        log.error("%s for an order that is not paid", what, extra={"order_id": str(order_id)})
        return None, None, "not_paid"
    return order, account, None


def refund(db: Session, settings: BillingSettings, order_id: uuid.UUID, charge: dict,
           now: datetime, dispatch: Dispatch) -> str:
    """Stripe refunded (part of) a payment. ``charge.amount_refunded`` is the
    total refunded so far: the order's credits are reversed in proportion
    (:mod:`reversals`: the unspent part now, the part held by jobs when those
    holds are released; credits already spent cannot be taken back). A full
    refund of the current paid plan ends it."""
    order, account, refusal = _lock_paid_order(db, settings, order_id, now, dispatch, "refund")
    if refusal:
        return refusal
    if str(charge.get("currency") or "").lower() != order.currency:
        log.error("refund currency does not match the order", extra={"order_id": str(order_id)})
        return "currency_mismatch"
    total = min(int(charge.get("amount_refunded") or 0), int(order.amount))
    if total <= order.amount_refunded:
        return "stale"
    previous = order.amount_refunded
    reversed_now, pending = reversals.money_returned(
        db, account, order, amount_refunded=total, key=f"order:{order.id}:refund:{total}",
        reason=f"refund of {total} {order.currency}", now=now)
    order.status = OrderStatus.REFUNDED if total >= order.amount else OrderStatus.PARTIALLY_REFUNDED
    order.refunded_at = now
    payment = db.scalars(select(Payment).where(Payment.order_id == order.id)).first()
    if payment is not None:
        payment.amount_refunded, payment.status, payment.refunded_at = total, order.status, now
    _end_plan_if_all_back(settings, account, order, now, dispatch)
    if account is not None:
        dispatch("order_refunded", {
            "order_id": str(order.id), "user_id": order.user_ref,
            "credits_reversed": reversed_now, "amount_refunded": total - previous,
            "total_amount_refunded": total, "currency": order.currency, "status": order.status,
        })
    log.info("order refunded", extra={"order_id": str(order.id), "refunded": total,
                                      "credits_reversed": reversed_now,
                                      "credits_pending": pending})
    return order.status


def _end_plan_if_all_back(settings: BillingSettings, account: Account | None, order: Order,
                          now: datetime, dispatch: Dispatch) -> None:
    """All the money of the current paid plan went back: the plan ends."""
    if (account is not None and order.kind == "plan"
            and reversals.money_back(order) >= order.amount and account.plan == order.item_id):
        plans.end_plan(settings, account, now, dispatch)


# ---------------------------------------------------------------- disputes (chargebacks)

DISPUTE_OPEN, DISPUTE_LOST = "open", "lost"
DISPUTE_RESTORED = ("won", "warning_closed", "prevented")


def find_disputed_order(db: Session, dispute: dict) -> uuid.UUID | None:
    """The order of a dispute: by its ``payment_intent``, else by the one
    already recorded for this dispute id."""
    found = find_refunded_order(db, {"payment_intent": dispute.get("payment_intent"),
                                     "metadata": dispute.get("metadata")})
    if found is None and dispute.get("id"):
        found = db.scalar(select(Order.id).where(Order.dispute_id == str(dispute["id"])))
    return found


def dispute_opened(db: Session, settings: BillingSettings, order_id: uuid.UUID, dispute: dict,
                   now: datetime, dispatch: Dispatch) -> str:
    """``charge.dispute.created``: the buyer disputes the payment. The
    order's credits are frozen until the dispute closes."""
    order, account, refusal = _lock_paid_order(db, settings, order_id, now, dispatch, "dispute")
    if refusal:
        return refusal
    dispute_id = _string(dispute.get("id"))
    if order.dispute_id == dispute_id and order.dispute_status != DISPUTE_OPEN:
        return "stale"  # closed already: a late notification of its opening
    order.dispute_id, order.dispute_status, order.disputed_at = dispute_id, DISPUTE_OPEN, now
    frozen = reversals.freeze(db, order, account.user_id, True) if account is not None else 0
    log.warning("payment disputed: the order's credits are frozen", extra={
        "order_id": str(order.id), "dispute_id": dispute_id, "frozen": frozen})
    return "dispute_opened"


def dispute_closed(db: Session, settings: BillingSettings, order_id: uuid.UUID, dispute: dict,
                   now: datetime, dispatch: Dispatch) -> str:
    """``charge.dispute.closed``: ``lost`` takes the order's credits back in
    proportion to the disputed amount (like a refund: the unspent part now,
    the held part when its holds are released, the spent part stays spent);
    ``won`` (``warning_closed``, ``prevented``) unfreezes them."""
    order, account, refusal = _lock_paid_order(db, settings, order_id, now, dispatch, "dispute")
    if refusal:
        return refusal
    dispute_id = _string(dispute.get("id"))
    if order.dispute_id == dispute_id and order.dispute_status not in (None, DISPUTE_OPEN):
        return "stale"
    status = str(dispute.get("status") or "")
    order.dispute_id, order.dispute_closed_at = dispute_id, now
    order.disputed_at = order.disputed_at or now
    if account is not None:
        reversals.freeze(db, order, account.user_id, False)
    if status != DISPUTE_LOST:
        order.dispute_status = status if status in DISPUTE_RESTORED else "won"
        log.info("dispute closed in our favour: credits restored", extra={
            "order_id": str(order.id), "dispute_id": dispute_id, "status": status})
        return "dispute_won"
    if str(dispute.get("currency") or order.currency).lower() != order.currency:
        log.error("dispute currency does not match the order", extra={"order_id": str(order_id)})
    disputed = int(dispute.get("amount") or order.amount)
    charged_back = max(0, min(disputed, int(order.amount) - int(order.amount_refunded)))
    order.dispute_status = DISPUTE_LOST
    taken, pending = reversals.money_returned(
        db, account, order, amount_charged_back=charged_back,
        key=f"order:{order.id}:chargeback:{dispute_id}",
        reason=f"chargeback of {charged_back} {order.currency} (dispute lost)", now=now)
    _end_plan_if_all_back(settings, account, order, now, dispatch)
    log.warning("dispute lost: the order's credits are taken back", extra={
        "order_id": str(order.id), "dispute_id": dispute_id, "credits_reversed": taken,
        "credits_pending": pending})
    return "dispute_lost"


def _string(value) -> str | None:
    if isinstance(value, dict):  # an expanded object
        value = value.get("id")
    return str(value) if value else None
