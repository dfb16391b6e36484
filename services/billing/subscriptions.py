"""Paid plans that renew: Stripe subscriptions.

A paid plan is bought with a Checkout Session in ``mode=subscription``
(:func:`checkout_terms`: the plan's ``stripe_price``, or an inline monthly
price from its ``price_amount``); the subscription carries ``user_id``,
``plan_id`` and ``order_id`` in its metadata, so each of its events finds
the account whatever order Stripe delivers them in (:func:`_upsert`).

- ``invoice.paid`` (:func:`invoice_paid`): the plan's ``monthly_grant`` for
  the invoice's period, ONCE per invoice (ledger key
  ``invoice:<id>:grant``: a replayed or re-sent invoice grants nothing).
  The lots of earlier periods that are past their expiry are expired first;
  the new grant expires at the period's end when
  ``GRANTS_EXPIRE_AT_PERIOD_END`` and the plan's terms do not say
  ``credits_roll_over``, else never. The plan is
  in force until the period end plus ``SUBSCRIPTION_GRACE_DAYS`` (the
  renewal invoice is paid shortly after the period ends).
- ``invoice.payment_failed`` (:func:`payment_failed`): dunning. The
  subscription is ``past_due`` and the plan stays for
  ``SUBSCRIPTION_GRACE_DAYS`` from the first failure (``grace_until``); a
  paid invoice in the meantime ends the grace. After it the ``plans`` timer
  (:func:`plans.end_expired_plan`) drops the account to the free plan.
- ``customer.subscription.created/updated/deleted`` (:func:`changed`): the
  status, the period end and ``cancel_at_period_end`` are tracked; with
  ``cancel_at_period_end`` the plan ends at the period end (no grace); an
  ended subscription (``canceled``, ``unpaid``, ``incomplete_expired``)
  returns the account to the free plan at once.
- Cancelling (:func:`require_live`, then Stripe, then :func:`changed` with
  Stripe's answer) sets ``cancel_at_period_end``: the customer keeps what
  they paid for. The customer portal (:func:`portal_customer`) manages the
  rest (card, invoices, resuming).
- Erasure (services/billing/privacy.py) detaches the subscriptions from the
  user (``user_id`` NULL); the ``subscriptions`` maintenance task cancels
  them at Stripe (:func:`to_cancel`, :func:`forget`), so an erased person
  is never charged again, then deletes the rows.

Everything here runs in the caller's transaction; the caller commits.
"""

from __future__ import annotations

import logging
import uuid
from datetime import UTC, datetime, timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from services.billing import ledger, plans
from services.billing.models import Account, Order, Subscription
from services.billing.settings import BillingSettings, Plan
from services.common.db import locked
from services.common.errors import DomainError, not_found
from services.common.ids import parse_uuid
from services.common.messaging import Dispatch

log = logging.getLogger(__name__)

INTERVAL = "month"
ENDED = ("canceled", "unpaid", "incomplete_expired")
LIVE = ("incomplete", "trialing", "active", "past_due")


def subscription_active(plan: str) -> DomainError:
    return DomainError("subscription_active",
                       f"you already have a {plan} subscription: change or cancel it "
                       "in the customer portal (GET /v1/billing/portal)", 409)


def view(row: Subscription) -> dict:
    return {"plan": row.plan, "status": row.status,
            "cancel_at_period_end": row.cancel_at_period_end,
            "current_period_end": row.current_period_end, "grace_until": row.grace_until,
            "created_at": row.created_at}


# ---------------------------------------------------------------- the caller's subscription


def live(db: Session, user_id: uuid.UUID) -> Subscription | None:
    """The user's subscription that has not ended, the newest."""
    return db.scalars(select(Subscription)
                      .where(Subscription.user_id == user_id, Subscription.status.in_(LIVE))
                      .order_by(Subscription.created_at.desc())).first()


def require_live(db: Session, user_id: uuid.UUID) -> Subscription:
    row = live(db, user_id)
    if row is None:
        raise not_found("subscription")
    return row


def latest(db: Session, user_id: uuid.UUID) -> Subscription:
    """The user's newest subscription, ended or not; 404 ``not_found`` if none."""
    row = db.scalars(select(Subscription).where(Subscription.user_id == user_id)
                     .order_by(Subscription.created_at.desc())).first()
    if row is None:
        raise not_found("subscription")
    return row


def portal_customer(db: Session, user_id: uuid.UUID) -> str:
    """The user's Stripe customer (their newest subscription's): only theirs."""
    row = db.scalars(select(Subscription).where(Subscription.user_id == user_id,
                                                Subscription.customer_id.is_not(None))
                     .order_by(Subscription.created_at.desc())).first()
    if row is None:
        raise not_found("subscription")
    return row.customer_id


def refuse_second(db: Session, user_id: uuid.UUID) -> None:
    """A plan checkout while a subscription is live: 409 ``subscription_active``."""
    row = live(db, user_id)
    if row is not None:
        raise subscription_active(row.plan)


def checkout_terms(plan: Plan, user_id: str, order_id: str) -> dict:
    """What :meth:`StripeClient.create_checkout_session` needs for a subscription."""
    return {"price": plan.stripe_price, "interval": INTERVAL,
            "metadata": {"user_id": user_id, "plan_id": plan.id, "order_id": order_id}}


# ---------------------------------------------------------------- reading Stripe objects


def timestamp(value) -> datetime | None:
    """A Stripe timestamp (unix seconds) as an aware datetime."""
    return datetime.fromtimestamp(int(value), UTC) if isinstance(value, int | float) else None


def _id(value) -> str | None:
    if isinstance(value, dict):  # expanded
        value = value.get("id")
    return str(value) if value else None


def _invoice_subscription(invoice: dict) -> tuple[str | None, dict]:
    """(subscription id, its metadata) of an invoice: ``parent.subscription_details``
    in the pinned API version; ``subscription`` in versions before 2025-03-31."""
    details = ((invoice.get("parent") or {}).get("subscription_details")
               or invoice.get("subscription_details") or {})
    sub_id = _id(details.get("subscription")) or _id(invoice.get("subscription"))
    return sub_id, dict(details.get("metadata") or {})


def _invoice_period_end(invoice: dict) -> datetime | None:
    ends = [(line.get("period") or {}).get("end")
            for line in ((invoice.get("lines") or {}).get("data") or [])]
    ends = [e for e in ends if isinstance(e, int | float)]
    return timestamp(max(ends)) if ends else timestamp(invoice.get("period_end"))


def _subscription_period_end(sub: dict) -> datetime | None:
    """``items.data[].current_period_end`` in the pinned version (the
    subscription's own ``current_period_end`` before 2025-03-31)."""
    ends = [item.get("current_period_end")
            for item in ((sub.get("items") or {}).get("data") or [])]
    ends = [e for e in ends if isinstance(e, int | float)]
    return timestamp(max(ends)) if ends else timestamp(sub.get("current_period_end"))


# ---------------------------------------------------------------- rows


def _upsert(db: Session, settings: BillingSettings, sub_id: str, metadata: dict,
            customer: str | None, now: datetime, dispatch: Dispatch,
            ) -> tuple[Subscription | None, Account | None]:
    """The subscription's row (created from its metadata the first time) and
    its account, locked (account first, as every path does); (None, None)
    for a subscription that is not ours. The account is None when erased."""
    row = db.get(Subscription, sub_id)
    user_id = row.user_id if row is not None else parse_uuid(metadata.get("user_id") or "")
    if row is None and user_id is None:
        return None, None
    account = None
    if user_id is not None:
        account = plans.locked_account(db, settings, user_id, now, dispatch)
    row = locked(db, Subscription, sub_id)
    if row is None:
        plan = str(metadata.get("plan_id") or "")
        if plan not in settings.plans:
            log.error("subscription for an unknown plan", extra={"subscription": sub_id})
            return None, None
        row = Subscription(id=sub_id, user_id=user_id, plan=plan, status="incomplete",
                           order_id=parse_uuid(metadata.get("order_id") or ""),
                           cancel_at_period_end=False, created_at=now, updated_at=now)
        db.add(row)
    if account is None:
        row.user_id = None  # erased: the maintenance task cancels it at Stripe
    row.customer_id = row.customer_id or customer
    row.updated_at = now
    return row, account


def _plan(settings: BillingSettings, row: Subscription) -> Plan | None:
    return settings.plans.get(row.plan)


def _keep_plan_until(settings: BillingSettings, account: Account, row: Subscription,
                     until: datetime | None, dispatch: Dispatch, now: datetime) -> None:
    """The subscription's plan is in force until ``until``."""
    plan = _plan(settings, row)
    if plan is None or until is None:
        return
    changed = plans.effective_plan(settings, account, now).id != plan.id
    account.plan, account.plan_expires_at, account.updated_at = plan.id, until, now
    if changed:
        plans.plan_changed(dispatch, account.user_id, plan)


def _end(settings: BillingSettings, account: Account | None, row: Subscription, now: datetime,
         dispatch: Dispatch) -> None:
    row.ended_at = row.ended_at or now
    if account is not None and account.plan == row.plan:
        plans.end_plan(settings, account, now, dispatch)


# ---------------------------------------------------------------- webhook events


def started(db: Session, settings: BillingSettings, order: Order, session: dict, now: datetime,
            dispatch: Dispatch) -> None:
    """``checkout.session.completed`` in subscription mode: the row (the
    credits come with ``invoice.paid``)."""
    sub_id = _id(session.get("subscription"))
    if not sub_id:
        log.error("subscription checkout without a subscription", extra={"order_id": str(order.id)})
        return
    metadata = {"user_id": order.user_ref, "plan_id": order.item_id, "order_id": str(order.id)}
    _upsert(db, settings, sub_id, metadata, _id(session.get("customer")), now, dispatch)


def invoice_paid(db: Session, settings: BillingSettings, invoice: dict, now: datetime,
                 dispatch: Dispatch, at: datetime | None = None) -> str:
    sub_id, metadata = _invoice_subscription(invoice)
    invoice_id = _id(invoice.get("id"))
    if not sub_id or not invoice_id:
        return "ignored"  # a one-off invoice: not ours
    row, account = _upsert(db, settings, sub_id, metadata, _id(invoice.get("customer")), now,
                           dispatch)
    if row is None:
        return "unknown_subscription"
    if account is None:
        return "erased_account"
    plan, period_end = _plan(settings, row), _invoice_period_end(invoice)
    if plan is None or period_end is None:
        log.error("paid invoice without a plan or a period", extra={"invoice": invoice_id})
        return "unknown_plan" if plan is None else "no_period"
    if row.status in ENDED:
        return "subscription_ended"
    row.status, row.grace_until, row.last_invoice_id = "active", None, invoice_id
    row.current_period_end = max(filter(None, (row.current_period_end, period_end)))
    if not row.cancel_at_period_end:
        until = row.current_period_end + timedelta(days=settings.subscription_grace_days)
    else:
        until = row.current_period_end
    _keep_plan_until(settings, account, row, until, dispatch, now)
    ledger.expire_lots(db, account, now)  # the previous period's credits, per the plan's terms
    _, created = ledger.credit(
        db, account, kind="grant", key=f"invoice:{invoice_id}:grant", credits=plan.monthly_grant,
        now=now, expires_at=None if plan.credits_roll_over else plans.grant_expiry(
            settings, period_end),
        reason=f"plan {plan.id} invoice {invoice_id}")
    log.info("subscription invoice paid", extra={"subscription": sub_id, "invoice": invoice_id,
                                                 "granted": created})
    return "granted" if created else "already_granted"


def payment_failed(db: Session, settings: BillingSettings, invoice: dict, now: datetime,
                   dispatch: Dispatch, at: datetime | None = None) -> str:
    sub_id, metadata = _invoice_subscription(invoice)
    if not sub_id:
        return "ignored"
    row, account = _upsert(db, settings, sub_id, metadata, _id(invoice.get("customer")), now,
                           dispatch)
    if row is None or account is None:
        return "unknown_subscription" if row is None else "erased_account"
    if row.status in ENDED:
        return "subscription_ended"
    row.status = "past_due"
    if row.grace_until is None:
        row.grace_until = now + timedelta(days=settings.subscription_grace_days)
    if account.plan == row.plan:
        account.plan_expires_at, account.updated_at = row.grace_until, now
    log.warning("subscription renewal failed: grace period", extra={
        "subscription": sub_id, "grace_until": row.grace_until.isoformat()})
    return "grace"


def changed(db: Session, settings: BillingSettings, sub: dict, now: datetime,
            dispatch: Dispatch, at: datetime | None = None) -> str:
    """``customer.subscription.created/updated/deleted`` made by Stripe at
    ``at`` (or Stripe's answer to a cancellation, ``at`` now): track status,
    period end, cancel at period end. An event older than the newest one
    applied is ``stale`` (Stripe does not deliver events in order)."""
    sub_id = _id(sub.get("id"))
    if not sub_id:
        return "ignored"
    row, account = _upsert(db, settings, sub_id, dict(sub.get("metadata") or {}),
                           _id(sub.get("customer")), now, dispatch)
    if row is None:
        return "unknown_subscription"
    if at is not None and row.stripe_seen_at is not None and at < row.stripe_seen_at:
        return "stale"
    row.stripe_seen_at = at or row.stripe_seen_at
    status = str(sub.get("status") or row.status)
    row.status = status
    row.cancel_at_period_end = bool(sub.get("cancel_at_period_end"))
    row.current_period_end = _subscription_period_end(sub) or row.current_period_end
    if status in ENDED:
        _end(settings, account, row, now, dispatch)
        if row.user_id is None:  # an erased account's: nothing more to cancel or keep
            db.flush()
            db.delete(row)
        return "ended"
    if account is None:
        return "erased_account"
    if status == "active" and row.current_period_end is not None and account.plan == row.plan:
        grace = 0 if row.cancel_at_period_end else settings.subscription_grace_days
        account.plan_expires_at = row.current_period_end + timedelta(days=grace)
        if row.grace_until is not None and row.grace_until > now:
            account.plan_expires_at = min(account.plan_expires_at, row.grace_until)
        account.updated_at = now
    return "cancel_at_period_end" if row.cancel_at_period_end else status


# ---------------------------------------------------------------- erased accounts


def detach(db: Session, user_id: uuid.UUID) -> int:
    """Erasure: the user's subscriptions lose their link to the user; the
    live ones wait for their cancellation at Stripe, the ended ones go."""
    count = 0
    for row in db.scalars(select(Subscription).where(Subscription.user_id == user_id)).all():
        if row.status in ENDED:
            db.delete(row)
        else:
            row.user_id = None
        count += 1
    return count


def to_cancel(db: Session, limit: int) -> list[str]:
    """Subscriptions of erased accounts still to be cancelled at Stripe."""
    return list(db.scalars(select(Subscription.id).where(Subscription.user_id.is_(None),
                                                         Subscription.status.in_(LIVE))
                           .order_by(Subscription.created_at).limit(limit)))


def forget(db: Session, sub_id: str) -> int:
    """Stripe cancelled it: the row goes. Returns 1 if it did."""
    row = locked(db, Subscription, sub_id)
    if row is None or row.user_id is not None:
        return 0
    db.delete(row)
    return 1
