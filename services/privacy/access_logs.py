"""Access logs: the facts of the gateway's ``gateway.requests_logged``
events, kept ``ACCESS_LOG_RETENTION_DAYS`` (180) and included in the user's
exports.

An event carries a batch of facts; :func:`store_all` keeps a batch with one
query for the ids already stored, one for the users already erased and one
multi-row INSERT (an ORM object per fact and the driver's executemany, one
round trip per row with pg8000, were most of privacy's CPU under load). A log
of a user whose erasure has completed is dropped, never stored: the gateway
publishes asynchronously, and a request made just before the erasure can
arrive after it. The row id is the fact's id, so a redelivered event stores
each fact once.
"""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta

from sqlalchemy import delete, insert, select
from sqlalchemy.orm import Session

from services.common.ids import pseudonym, trusted_id
from services.privacy.models import AccessLog, ErasedSubject

PURGE_BATCH = 5000


def erased_users(db: Session, key: bytes, user_ids) -> set[uuid.UUID]:
    """Which of ``user_ids`` have been erased, in one query."""
    by_subject = {pseudonym(key, u): u for u in user_ids}
    if not by_subject:
        return set()
    found = db.scalars(select(ErasedSubject.subject)
                       .where(ErasedSubject.subject.in_(list(by_subject))))
    return {by_subject[s] for s in found}


def store_all(db: Session, key: bytes, facts: list[dict]) -> int:
    """Add a batch of access-log facts to the session (the caller commits);
    returns how many were added. A fact kept before (its id is a row's id) or
    of an erased user is left out."""
    fresh: dict[uuid.UUID, dict] = {}
    for entry in facts:
        fresh.setdefault(trusted_id(entry["id"], "id"), entry)
    if not fresh:
        return 0
    existing = set(db.scalars(select(AccessLog.id).where(AccessLog.id.in_(list(fresh)))))
    users = {trusted_id(e["user_id"]) for i, e in fresh.items()
             if i not in existing and e.get("user_id") is not None}
    erased = erased_users(db, key, users)
    rows = []
    for fact_id, entry in fresh.items():
        user_id = trusted_id(entry["user_id"]) if entry.get("user_id") is not None else None
        if fact_id in existing or user_id in erased:
            continue
        rows.append({"id": fact_id, "user_id": user_id, "at": entry["at"],
                     "method": entry["method"], "route": entry["route"],
                     "status": entry["status"], "network": entry.get("network")})
    if not rows:
        return 0
    # RETURNING makes SQLAlchemy send the rows as one multi-row statement,
    # compiled once ("insertmanyvalues"), not an execute per row
    table = AccessLog.__table__
    return len(db.execute(insert(table).returning(table.c.id), rows).all())


def store(db: Session, key: bytes, entry: dict) -> bool:
    """Keep one access-log fact; False when it was kept before or its user is erased."""
    return store_all(db, key, [entry]) == 1


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
