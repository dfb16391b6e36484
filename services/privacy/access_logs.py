"""Access logs: the facts of the gateway's ``gateway.requests_logged``
events, kept ``ACCESS_LOG_RETENTION_DAYS`` (180) and included in the user's
exports.

An event carries a batch of facts; :func:`store_all` keeps a batch with one
query for the users already erased and a multi-row INSERT that skips the ids
already stored (an ORM object per fact and the driver's executemany, one
round trip per row with pg8000, were most of privacy's CPU under load). A log
of a user whose erasure has completed is dropped, never stored: the gateway
publishes asynchronously, and a request made just before the erasure can
arrive after it. The row id is the fact's id, so a redelivered event, or the
same one delivered twice at once, stores each fact once.
"""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from services.common.db import insert_for
from services.common.ids import pseudonym, trusted_id
from services.privacy.models import AccessLog, ErasedSubject

PURGE_BATCH = 5000
# SQLite's driver keeps each connection's last 128 prepared statements by
# their text, and a multi-row INSERT's text changes with its number of rows:
# batches of every size up to 500 left one statement of each in memory
# (privacy's resident set 86 -> 100 MB under the read-path bench,
# docs/scaling.md). On SQLite a batch goes in pages of these sizes only, nine
# texts in all (a batch of 500 in six statements). pg8000 keeps no statement
# by its text: there a batch is one statement.
SQLITE_PAGES = (256, 128, 64, 32, 16, 8, 4, 2, 1)


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
    users = {trusted_id(e["user_id"]) for e in fresh.values() if e.get("user_id") is not None}
    erased = erased_users(db, key, users)
    rows = []
    for fact_id, entry in fresh.items():
        user_id = trusted_id(entry["user_id"]) if entry.get("user_id") is not None else None
        if user_id not in erased:
            rows.append({"id": fact_id, "user_id": user_id, "at": entry["at"],
                         "method": entry["method"], "route": entry["route"],
                         "status": entry["status"], "network": entry.get("network")})
    # one multi-row statement, compiled once (SQLAlchemy's "insertmanyvalues");
    # the database skips an id it holds, committed before or by a concurrent
    # delivery of the same facts (PostgreSQL waits for that one's outcome),
    # and RETURNING names the rows added
    table = AccessLog.__table__
    statement = insert_for(db, table).on_conflict_do_nothing().returning(table.c.id)
    return sum(len(db.execute(statement, page).all())
               for page in _pages(rows, db.get_bind().dialect.name))


def _pages(rows: list[dict], dialect: str):
    if not rows:
        return
    if dialect != "sqlite":
        yield rows
        return
    start = 0
    for size in SQLITE_PAGES:
        while len(rows) - start >= size:
            yield rows[start:start + size]
            start += size


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
