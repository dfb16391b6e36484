"""The retention of billing's payment records: a daily timer deletes
payments and orders past their ``retain_until`` (paid_at + 5 years,
``PAYMENT_RETENTION_YEARS``; unpaid orders: created_at + 5 years). An
erasure pseudonymises them before that (:mod:`privacy`); this is the only
time-based deletion billing does.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import delete, or_, select
from sqlalchemy.orm import Session

from services.billing.models import Order, Payment
from services.billing.settings import BillingSettings
from services.common.ids import add_years


def purge_payment_records(db: Session, settings: BillingSettings, now: datetime) -> dict:
    """Delete payments and orders whose retention is over; the caller commits."""
    payments = db.execute(
        delete(Payment).where(Payment.retain_until <= now)
        .execution_options(synchronize_session=False)
    ).rowcount
    cutoff = add_years(now, -settings.payment_retention_years)
    done = db.execute(
        delete(Order).where(
            or_(Order.retain_until <= now,
                Order.retain_until.is_(None) & (Order.created_at <= cutoff)),
            ~Order.id.in_(select(Payment.order_id)),
        ).execution_options(synchronize_session=False)
    ).rowcount
    return {"payments": payments, "orders": done}
