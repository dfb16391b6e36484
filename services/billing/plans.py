"""Accounts, plans, periods and grants.

- The billing period is the UTC calendar month (:func:`period_bounds`):
  ``get_balance`` reports on it, and plans without a price get their
  ``monthly_grant`` once per month from an hourly timer (:func:`grant_month`,
  key ``grant:monthly:<user>:<YYYY-MM>``). Granted credits expire at the end
  of the month they were granted for (``GRANTS_EXPIRE_AT_PERIOD_END``).
- An account opens on the default (free) plan with its ``signup_grant``
  (key ``grant:signup:<user>``, expiring after ``SIGNUP_GRANT_EXPIRES_DAYS``),
  which stands in for the signup month's monthly grant. It opens on
  ``auth.user_registered`` or on the first operation that needs it, whichever
  comes first; an erased user's account never reopens.
- A paid plan is bought for one period of ``PLAN_PERIOD_DAYS`` from the
  payment (buying the current plan again extends it): the plan's
  ``monthly_grant`` is granted at once (``order:<id>:grant``), expiring with
  the period. When the period ends a timer returns the account to the
  default plan (:func:`end_expired_plan`), and the free monthly grant
  resumes for the month.
- Every plan change dispatches ``billing.plan_changed`` (storage keeps the
  plan's retention for the user's objects).

Everything here runs in the caller's transaction and the caller commits. The
timers' sweeps are a query for the candidates (:func:`due_grants`,
:func:`expired_plans`) and a step for one account (:func:`grant_month`,
:func:`end_expired_plan`), which the service runs one account per transaction.
"""

from __future__ import annotations

import logging
import uuid
from datetime import UTC, datetime, timedelta

from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from services.billing import ledger
from services.billing.models import Account, ErasedAccount, Order
from services.billing.settings import BillingSettings, Plan
from services.common.errors import not_found
from services.common.ids import pseudonym
from services.common.messaging import Dispatch

log = logging.getLogger(__name__)


# ---------------------------------------------------------------- periods


def period_bounds(now: datetime) -> tuple[datetime, datetime]:
    """[start, end) of the UTC calendar month containing ``now``."""
    now = now.astimezone(UTC)
    start = datetime(now.year, now.month, 1, tzinfo=UTC)
    end = datetime(now.year + (now.month == 12), now.month % 12 + 1, 1, tzinfo=UTC)
    return start, end


def period_key(now: datetime) -> str:
    now = now.astimezone(UTC)
    return f"{now.year:04d}-{now.month:02d}"


def plan_period_end(settings: BillingSettings, start: datetime) -> datetime:
    return start + timedelta(days=settings.plan_period_days)


def grant_expiry(settings: BillingSettings, period_end: datetime) -> datetime | None:
    return period_end if settings.grants_expire_at_period_end else None


def effective_plan(settings: BillingSettings, account: Account, now: datetime) -> Plan:
    """The plan in force: a paid plan past its period (the timer has not run
    yet) counts as the default plan; a plan removed from config too."""
    plan = settings.plans.get(account.plan)
    if plan is None or (account.plan_expires_at is not None and account.plan_expires_at <= now):
        return settings.free_plan
    return plan


def balance(db: Session, settings: BillingSettings, account: Account, now: datetime) -> dict:
    """The account's balance (``billing.get_balance``): its credits, its plan
    in force, and what was granted and used in the current period."""
    start, end = period_bounds(now)
    plan = effective_plan(settings, account, now)
    return {**ledger.balance(db, account, now), "plan": plan.id,
            "plan_expires_at": account.plan_expires_at if plan.paid else None,
            "period_start": start, "period_end": end,
            **ledger.period_totals(db, account.user_id, start, end)}


def listed(settings: BillingSettings) -> list[Plan]:
    """The plans as ``billing.list_plans`` shows them: the cheapest first."""
    return sorted(settings.plans.values(), key=lambda p: (p.price_amount or 0, p.id))


# ---------------------------------------------------------------- accounts


def is_erased(db: Session, settings: BillingSettings, user_id: uuid.UUID) -> bool:
    return db.get(ErasedAccount, pseudonym(settings.pseudonym_key.encode(), user_id)) is not None


def plan_changed(dispatch: Dispatch, user_id: uuid.UUID, plan: Plan) -> None:
    dispatch("plan_changed", {"user_id": str(user_id), "plan": plan.id,
                              "retention_days": plan.retention_days})


def open_account(db: Session, settings: BillingSettings, user_id: uuid.UUID, now: datetime,
                 dispatch: Dispatch) -> Account | None:
    """The user's account, opened with the signup grant if it does not exist;
    None for an erased user. Two openings racing: one fails on the primary
    key at the commit (the event is retried, the RPC repeated)."""
    account = db.get(Account, user_id)
    if account is not None:
        return account
    if is_erased(db, settings, user_id):
        return None
    plan = settings.free_plan
    account = Account(user_id=user_id, plan=plan.id, plan_expires_at=None, available=0, held=0,
                      entry_seq=0, granted_period=period_key(now), created_at=now, updated_at=now)
    db.add(account)
    db.flush()
    expires = (now + timedelta(days=settings.signup_grant_expires_days)
               if settings.signup_grant_expires_days else None)
    ledger.credit(db, account, kind="grant", key=f"grant:signup:{user_id}",
                  credits=plan.signup_grant, now=now, expires_at=expires, reason="signup")
    plan_changed(dispatch, user_id, plan)
    log.info("account opened", extra={"user_id": str(user_id), "plan": plan.id})
    return account


def locked_account(db: Session, settings: BillingSettings, user_id: uuid.UUID, now: datetime,
                   dispatch: Dispatch) -> Account | None:
    """Open if need be, then lock: the start of every balance-changing operation."""
    user_id = uuid.UUID(str(user_id))  # an event's id is a string: one identity for the session
    if open_account(db, settings, user_id, now, dispatch) is None:
        return None
    return ledger.lock_account(db, user_id)


def require_account(db: Session, settings: BillingSettings, user_id: uuid.UUID, now: datetime,
                    dispatch: Dispatch) -> Account:
    account = locked_account(db, settings, user_id, now, dispatch)
    if account is None:
        raise not_found("account")
    return account


# ---------------------------------------------------------------- grants and plan periods


def due_grants(db: Session, now: datetime, limit: int) -> list[uuid.UUID]:
    """Up to ``limit`` accounts that have not had this month's grant and are
    not on a paid period (whose grant came with the payment)."""
    period = period_key(now)
    return list(db.scalars(
        select(Account.user_id).where(
            or_(Account.granted_period.is_(None), Account.granted_period != period),
            # paid plans always have an end; their grant came with the payment
            or_(Account.plan_expires_at.is_(None), Account.plan_expires_at <= now),
        ).order_by(Account.user_id).limit(limit)
    ))


def grant_month(db: Session, settings: BillingSettings, user_id: uuid.UUID, now: datetime) -> int:
    """Give the account this month's grant if its plan has no price and it
    has not had it (key ``grant:monthly:<user>:<YYYY-MM>``); locks the
    account. Returns 1 if granted, else 0: running it twice grants nothing more."""
    period = period_key(now)
    account = ledger.lock_account(db, user_id)
    if account is None or account.granted_period == period:
        return 0
    plan = effective_plan(settings, account, now)
    if plan.paid:  # bought since: the plan's own grant covers the period
        return 0
    ledger.expire_lots(db, account, now)
    _, end = period_bounds(now)
    _, created = ledger.credit(
        db, account, kind="grant", key=f"grant:monthly:{user_id}:{period}",
        credits=plan.monthly_grant, now=now, expires_at=grant_expiry(settings, end),
        reason=f"monthly {plan.id} {period}",
    )
    account.granted_period = period
    return int(created)


def activate_plan(db: Session, settings: BillingSettings, account: Account, order: Order,
                  now: datetime, dispatch: Dispatch) -> None:
    """A paid plan order was paid: the plan for one period (extending the
    current one if it is the same plan) and its grant, expiring with it."""
    plan = settings.plans.get(order.item_id)
    if plan is None:  # removed from config after the sale: honour it with the order's terms
        log.error("paid order for a plan no longer configured", extra={"order_id": str(order.id)})
        plan = Plan(id=order.item_id, name=order.description, price_amount=order.amount,
                    currency=order.currency, signup_grant=0, monthly_grant=int(order.credits),
                    retention_days=settings.free_plan.retention_days, priority=0)
    current = effective_plan(settings, account, now)
    start = now
    if current.id == plan.id and account.plan_expires_at and account.plan_expires_at > now:
        start = account.plan_expires_at
    account.plan, account.plan_expires_at = plan.id, plan_period_end(settings, start)
    account.updated_at = now
    ledger.credit(
        db, account, kind="grant", key=f"order:{order.id}:grant", credits=int(order.credits),
        now=now, expires_at=grant_expiry(settings, account.plan_expires_at),
        order_id=order.id, reason=f"plan {plan.id}",
    )
    plan_changed(dispatch, account.user_id, plan)


def end_plan(settings: BillingSettings, account: Account, now: datetime, dispatch: Dispatch) -> None:
    free = settings.free_plan
    account.plan, account.plan_expires_at, account.updated_at = free.id, None, now
    plan_changed(dispatch, account.user_id, free)


def expired_plans(db: Session, now: datetime, limit: int) -> list[uuid.UUID]:
    """Up to ``limit`` accounts whose paid period is over, the oldest first."""
    return list(db.scalars(
        select(Account.user_id).where(Account.plan_expires_at.is_not(None),
                                      Account.plan_expires_at <= now)
        .order_by(Account.plan_expires_at).limit(limit)
    ))


def end_expired_plan(db: Session, settings: BillingSettings, user_id: uuid.UUID, now: datetime,
                     dispatch: Dispatch) -> int:
    """Return the account to the default plan if its paid period is over
    (locks it; expired lots are settled). Returns 1 if it ended, else 0."""
    account = ledger.lock_account(db, user_id)
    if account is None or account.plan_expires_at is None or account.plan_expires_at > now:
        return 0
    old = account.plan
    end_plan(settings, account, now, dispatch)
    ledger.expire_lots(db, account, now)
    log.info("paid plan ended", extra={"user_id": str(user_id), "plan": old})
    return 1
