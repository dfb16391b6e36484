"""Access logs: the gateway's ``gateway.request_logged`` facts, kept
``ACCESS_LOG_RETENTION_DAYS`` (180) and included in the user's exports.

A log of a user whose erasure has completed is dropped, never stored: the
gateway publishes asynchronously, and a request made just before the erasure
can arrive after it. The row id is the event id, so a redelivered event is
stored once.
"""

from __future__ import annotations

import hashlib
import hmac
import uuid
from datetime import datetime, timedelta

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from services.privacy.models import AccessLog, ErasedSubject

PSEUDONYM_PREFIX = "psn:"
PURGE_BATCH = 5000


def subject(key: bytes, user_id: uuid.UUID) -> str:
    """A keyed hash of a user id (it cannot be turned back into the id)."""
    return PSEUDONYM_PREFIX + hmac.new(key, str(user_id).encode(), hashlib.sha256).hexdigest()


def is_erased(db: Session, key: bytes, user_id: uuid.UUID) -> bool:
    return db.get(ErasedSubject, subject(key, user_id)) is not None


def store(db: Session, key: bytes, event: dict) -> bool:
    """Keep one access-log fact; False when it was kept before or its user is erased."""
    event_id = uuid.UUID(str(event["event_id"]))
    if db.get(AccessLog, event_id) is not None:
        return False
    user_id = event.get("user_id")
    if user_id is not None and is_erased(db, key, user_id):
        return False
    db.add(AccessLog(id=event_id, user_id=user_id, at=event["at"], method=event["method"],
                     route=event["route"], status=event["status"], network=event.get("network")))
    return True


def purge(db: Session, now: datetime, retention_days: int, batch: int = PURGE_BATCH) -> int:
    """Delete one batch of logs older than the retention; the caller commits
    and calls again while it returns a full batch."""
    cutoff = now - timedelta(days=retention_days)
    ids = db.scalars(select(AccessLog.id).where(AccessLog.at < cutoff).limit(batch)).all()
    if ids:
        db.execute(delete(AccessLog).where(AccessLog.id.in_(ids)))
    return len(ids)


def for_user(db: Session, user_id: uuid.UUID) -> list[AccessLog]:
    return list(db.scalars(select(AccessLog).where(AccessLog.user_id == user_id)
                           .order_by(AccessLog.at, AccessLog.id)))
