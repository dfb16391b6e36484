"""A user's billing data: export, erasure, and the payment records' retention.

- :func:`export_user`: everything billing holds about the user.
- :func:`erase_user`: deletes the account, its ledger, lots, lot movements
  and holds; orders and payments are payment records the law makes us keep
  (``PAYMENT_RETENTION_YEARS``, 5) so they are pseudonymised instead: their
  ``user_ref`` becomes ``psn:`` + HMAC-SHA256(``PSEUDONYM_KEY``, user id).
  Billing never stores an email or a name, so nothing else identifies the
  person; with the key an operator can still answer "which payments were
  this user's" for an auditor. The pseudonym is also kept in
  ``erased_accounts`` so a late event cannot reopen the account. Idempotent:
  a second erasure finds nothing and counts zeros.
- :func:`purge_payment_records`: a daily timer deletes payments and orders
  past their ``retain_until`` (paid_at + 5 years; unpaid orders: created_at
  + 5 years).
"""

from __future__ import annotations

import hashlib
import hmac
import uuid
from datetime import datetime

from sqlalchemy import delete, or_, select, update
from sqlalchemy.orm import Session

from services.billing import ledger, orders
from services.billing.models import (
    Account,
    ErasedAccount,
    Hold,
    LedgerEntry,
    Lot,
    LotMovement,
    Order,
    Payment,
)
from services.billing.settings import BillingSettings
from services.common.ids import isoformat

PSEUDONYM_PREFIX = "psn:"
RETENTION_NOTE = (
    "Orders and payment records are kept for {years} years after the payment, as the law "
    "requires of accounting records; when you ask for erasure they are pseudonymised (your "
    "user id is replaced by a keyed hash) rather than deleted, and deleted when that period ends. "
    "Billing stores no email address or name."
)
ABOUT = (
    "Your credits and payments: the account (plan, balance), every ledger entry (grants, "
    "purchases, holds and captures for generation jobs, releases, refunds, expiries, "
    "adjustments), credit lots, holds, orders and payments."
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
    return items


def pseudonym(settings: BillingSettings, user_id) -> str:
    digest = hmac.new(settings.pseudonym_key.encode(), str(user_id).encode(), hashlib.sha256)
    return PSEUDONYM_PREFIX + digest.hexdigest()


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


def export_user(db: Session, settings: BillingSettings, user_id: uuid.UUID) -> dict:
    """JSON-able dicts of every row about the user (nothing is written)."""
    account = db.get(Account, user_id)
    entries = db.scalars(select(LedgerEntry).where(LedgerEntry.user_id == user_id)
                         .order_by(LedgerEntry.seq)).all()
    lots = db.scalars(select(Lot).where(Lot.user_id == user_id).order_by(Lot.created_at)).all()
    holds = db.scalars(select(Hold).where(Hold.user_id == user_id).order_by(Hold.created_at)).all()
    user_orders = db.scalars(select(Order).where(Order.user_ref == str(user_id))
                             .order_by(Order.created_at)).all()
    payments = db.scalars(select(Payment).where(Payment.user_ref == str(user_id))
                          .order_by(Payment.created_at)).all()
    order_columns = [c for c in _columns(Order) if c not in ("request_hash",)]
    return {
        "user_id": str(user_id),
        "account": _row(account, _columns(Account)) if account else None,
        "ledger": [_row(e, _columns(LedgerEntry)) for e in entries],
        "lots": [_row(lot, _columns(Lot)) for lot in lots],
        "holds": [_row(h, _columns(Hold)) for h in holds],
        "orders": [_row(o, order_columns) for o in user_orders],
        "payments": [_row(p, _columns(Payment)) for p in payments],
        "retention": RETENTION_NOTE.format(years=settings.payment_retention_years),
    }


def erase_user(db: Session, settings: BillingSettings, user_id: uuid.UUID,
               now: datetime) -> dict:
    """Delete the user's credit data and pseudonymise their payment records,
    in one transaction (the caller commits)."""
    deleted, pseudonymised = erase_user_tables(db, settings, user_id, now)
    return {"rows_deleted": sum(deleted.values()),
            "rows_pseudonymised": sum(pseudonymised.values())}


def erase_user_tables(db: Session, settings: BillingSettings, user_id: uuid.UUID,
                      now: datetime) -> tuple[dict[str, int], dict[str, int]]:
    """:func:`erase_user`, counted per table: (rows deleted, rows pseudonymised)."""
    ledger.lock_account(db, user_id)  # no balance change may run alongside
    deleted = {}
    for model in (LotMovement, LedgerEntry, Lot, Hold, Account):
        deleted[model.__tablename__] = db.execute(
            delete(model).where(model.user_id == user_id)
            .execution_options(synchronize_session=False)
        ).rowcount
    ref, alias = str(user_id), pseudonym(settings, user_id)
    pseudonymised = {}
    for model in (Order, Payment):
        pseudonymised[model.__tablename__] = db.execute(
            update(model).where(model.user_ref == ref)
            .values(user_ref=alias, pseudonymised_at=now)
            .execution_options(synchronize_session=False)
        ).rowcount
    if db.get(ErasedAccount, alias) is None:
        db.add(ErasedAccount(pseudonym=alias, erased_at=now))
    db.flush()
    db.expire_all()
    return deleted, pseudonymised


def purge_payment_records(db: Session, settings: BillingSettings, now: datetime) -> dict:
    """Delete payments and orders whose retention is over; the caller commits."""
    payments = db.execute(
        delete(Payment).where(Payment.retain_until <= now)
        .execution_options(synchronize_session=False)
    ).rowcount
    cutoff = orders.add_years(now, -settings.payment_retention_years)
    done = db.execute(
        delete(Order).where(
            or_(Order.retain_until <= now,
                Order.retain_until.is_(None) & (Order.created_at <= cutoff)),
            ~Order.id.in_(select(Payment.order_id)),
        ).execution_options(synchronize_session=False)
    ).rowcount
    return {"payments": payments, "orders": done}
