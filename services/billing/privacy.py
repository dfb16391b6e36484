"""The billing service's part of a pending erasure: while an erasure of the
account waits out its grace period (``privacy.erasure_scheduled``, until
``privacy.erasure_cancelled``) no credit is held for a job, so nothing is
spent: ``generation.job_requested`` is answered ``billing.credits_insufficient``
(``available`` 0) and the job is refused. Generation refuses such jobs
already at submit; this covers a job submitted before its event arrived.

The export and erasure of the credit data are in :mod:`retention`; the
erasure deletes this record too (:func:`erase`).
"""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import delete
from sqlalchemy.orm import Session

from services.billing import saga
from services.billing.models import ErasurePending
from services.billing.settings import BillingSettings
from services.common.privacy_parts import record_newest


def _uuid(value) -> uuid.UUID:
    return value if isinstance(value, uuid.UUID) else uuid.UUID(str(value))


def apply_erasure_pending(db: Session, user_id, pending: bool, at: datetime) -> bool:
    """Record ``privacy.erasure_scheduled`` (True) or ``erasure_cancelled``
    (False) unless a newer one was; the caller commits."""
    return record_newest(db, ErasurePending, user_id, "pending", pending, at)


def erasure_pending(db: Session, user_id) -> bool:
    row = db.get(ErasurePending, _uuid(user_id))
    return bool(row and row.pending)


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


def erase(db: Session, user_id) -> dict[str, int]:
    """The record, deleted with the account's other rows; the caller commits."""
    deleted = db.execute(delete(ErasurePending).where(ErasurePending.user_id == _uuid(user_id))
                         .execution_options(synchronize_session=False)).rowcount or 0
    return {"erasure_pending": deleted}
