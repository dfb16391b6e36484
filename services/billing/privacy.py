"""The billing service's part of privacy requests (the protocol of
:mod:`services.common.privacy_parts`): what billing holds about a user, in an
export and in an erasure, and the retention schedule it enforces.

- :func:`export`: everything billing holds about the user.
- :func:`erase`: deletes the account, its ledger, lots, lot movements and
  holds; detaches its subscriptions from it (a live one is cancelled at
  Stripe by the ``subscriptions`` maintenance task, then deleted; an ended
  one at once); orders and payments are payment records the law makes us keep
  (``PAYMENT_RETENTION_YEARS``, 5) so they are pseudonymised instead: their
  ``user_ref`` becomes ``psn:`` + HMAC-SHA256(``PSEUDONYM_KEY``, user id)
  (:func:`services.common.ids.pseudonym`). Billing never stores an email or a
  name, so nothing else identifies the person; with the key an operator can
  still answer "which payments were this user's" for an auditor. The
  pseudonym is also kept in ``erased_accounts`` so a late event cannot reopen
  the account. Idempotent: a second erasure finds nothing and counts zeros.
  The payment records are deleted when their retention ends
  (:mod:`retention`).

While an erasure of the account waits out its grace period
(``privacy.erasure_scheduled``, until ``privacy.erasure_cancelled``) no
credit is held for a job, so nothing is spent: ``generation.job_requested``
is answered ``billing.credits_insufficient`` (``available`` 0) and the job is
refused (:func:`job_requested`). Generation refuses such jobs already at
submit; this covers a job submitted before its event arrived. The erasure
deletes that record too.
"""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session

from services.billing import ledger, saga, subscriptions
from services.billing.models import (
    Account,
    ErasedAccount,
    ErasurePending,
    Hold,
    LedgerEntry,
    Lot,
    LotMovement,
    Order,
    Payment,
    Subscription,
)
from services.billing.settings import BillingSettings
from services.common.ids import isoformat, pseudonym, trusted_id
from services.common.privacy_parts import Erasure, record_newest, recorded

RETENTION_NOTE = (
    "Orders and payment records are kept for {years} years after the payment, as the law "
    "requires of accounting records; when you ask for erasure they are pseudonymised (your "
    "user id is replaced by a keyed hash) rather than deleted, and deleted when that period ends. "
    "Billing stores no email address or name."
)
ABOUT = (
    "Your credits and payments: the account (plan, balance), every ledger entry (grants, "
    "purchases, holds and captures for generation jobs, releases, refunds, expiries, "
    "adjustments), credit lots, holds, orders, payments and plan subscriptions."
)
WITHHELD = [
    {"what": "card or bank details", "why": "never stored here: payments are made with Stripe"},
]


def retention_items(settings: BillingSettings) -> list[dict]:
    """What billing keeps, and for how long (GET /v1/privacy/retention)."""
    years = settings.payment_retention_years
    items = [
        {"data": "orders and payment records",
         "kept": f"{years} years after the payment; pseudonymised (not deleted) when the "
                 "account is erased", "days": float(years * 365),
         "enforced_by": "the billing service's daily purge"},
        {"data": "credit account, ledger, lots and holds", "kept": "until the account is erased",
         "days": None, "enforced_by": "erasure (privacy request)"},
    ]
    for plan in settings.plans.values():
        items.append({
            "data": f"uploads and generated outputs of accounts on the {plan.name} plan",
            "kept": f"{plan.retention_days} days", "days": float(plan.retention_days),
            "enforced_by": "the storage service's purge, every minute (billing sends each "
                           "account's plan retention)"})
    items.append({
        "data": "plan subscriptions (Stripe subscription and customer ids, status, period)",
        "kept": "until the account is erased; a live one is then cancelled at Stripe and deleted",
        "days": None,
        "enforced_by": "erasure (privacy request) and the billing service's housekeeping"})
    return items


# ---------------------------------------------------------------- export and erasure


def _row(obj, columns: list[str]) -> dict:
    out = {}
    for name in columns:
        value = getattr(obj, name)
        if isinstance(value, datetime):
            value = isoformat(value)
        elif isinstance(value, uuid.UUID):
            value = str(value)
        out[name] = value
    return out


def _columns(model) -> list[str]:
    return [c.key for c in model.__table__.columns]


def export(db: Session, settings: BillingSettings, user_id) -> dict:
    """JSON-able dicts of every row about the user (nothing is written)."""
    user_id = trusted_id(user_id)
    account = db.get(Account, user_id)
    entries = db.scalars(select(LedgerEntry).where(LedgerEntry.user_id == user_id)
                         .order_by(LedgerEntry.seq)).all()
    lots = db.scalars(select(Lot).where(Lot.user_id == user_id).order_by(Lot.created_at)).all()
    holds = db.scalars(select(Hold).where(Hold.user_id == user_id).order_by(Hold.created_at)).all()
    user_orders = db.scalars(select(Order).where(Order.user_ref == str(user_id))
                             .order_by(Order.created_at)).all()
    payments = db.scalars(select(Payment).where(Payment.user_ref == str(user_id))
                          .order_by(Payment.created_at)).all()
    subs = db.scalars(select(Subscription).where(Subscription.user_id == user_id)
                      .order_by(Subscription.created_at)).all()
    order_columns = [c for c in _columns(Order) if c not in ("request_hash",)]
    return {
        "user_id": str(user_id),
        "account": _row(account, _columns(Account)) if account else None,
        "ledger": [_row(e, _columns(LedgerEntry)) for e in entries],
        "lots": [_row(lot, _columns(Lot)) for lot in lots],
        "holds": [_row(h, _columns(Hold)) for h in holds],
        "orders": [_row(o, order_columns) for o in user_orders],
        "payments": [_row(p, _columns(Payment)) for p in payments],
        "subscriptions": [_row(s, _columns(Subscription)) for s in subs],
        "retention": RETENTION_NOTE.format(years=settings.payment_retention_years),
    }


def erase(db: Session, settings: BillingSettings, user_id, now: datetime,
          recheck: bool = False) -> Erasure:
    """Delete the user's credit data and pending-erasure record, and
    pseudonymise their payment records, in one transaction (the caller
    commits): rows deleted per table, and rows pseudonymised."""
    user_id = trusted_id(user_id)
    ledger.lock_account(db, user_id)  # no balance change may run alongside
    deleted = {}
    for model in (LotMovement, LedgerEntry, Lot, Hold, Account):
        deleted[model.__tablename__] = db.execute(
            delete(model).where(model.user_id == user_id)
            .execution_options(synchronize_session=False)
        ).rowcount
    deleted["subscriptions"] = subscriptions.detach(db, user_id)
    ref, alias = str(user_id), pseudonym(settings.pseudonym_key.encode(), user_id)
    pseudonymised = 0
    for model in (Order, Payment):
        pseudonymised += db.execute(
            update(model).where(model.user_ref == ref)
            .values(user_ref=alias, pseudonymised_at=now)
            .execution_options(synchronize_session=False)
        ).rowcount
    if db.get(ErasedAccount, alias) is None:
        db.add(ErasedAccount(pseudonym=alias, erased_at=now))
    deleted["erasure_pending"] = db.execute(
        delete(ErasurePending).where(ErasurePending.user_id == user_id)
        .execution_options(synchronize_session=False)).rowcount or 0
    db.flush()
    db.expire_all()
    return Erasure(deleted, rows_pseudonymised=pseudonymised)


# ---------------------------------------------------------------- pending erasure


def apply_erasure_pending(db: Session, user_id, pending: bool, at: datetime) -> bool:
    """Record ``privacy.erasure_scheduled`` (True) or ``erasure_cancelled``
    (False) unless a newer one was; the caller commits."""
    return record_newest(db, ErasurePending, user_id, "pending", pending, at)


def erasure_pending(db: Session, user_id) -> bool:
    return recorded(db, ErasurePending, user_id, "pending")


def job_requested(db: Session, settings: BillingSettings, event: dict, now: datetime,
                  dispatch) -> str:
    """``generation.job_requested``: the saga's hold, unless an erasure of
    the account is pending: then the job is answered not payable
    (``credits_insufficient``, ``available`` 0) and nothing is held."""
    if not erasure_pending(db, event["user_id"]):
        return saga.job_requested(db, settings, event, now, dispatch)
    dispatch("credits_insufficient", {
        "job_id": str(event["job_id"]), "user_id": str(event["user_id"]),
        "attempt": int(event["attempt"]), "required": int(event["price"]), "available": 0})
    return "erasure_pending"
