"""Retention: when objects expire, the purge that deletes them, the orphan
sweep, and the report.

- Uploads and outputs expire ``RETENTION_DAYS`` after their creation, or after
  the owner's plan retention once ``billing.plan_changed`` has told us one
  (:func:`apply_plan_change` also moves the expiry of the owner's live
  objects); export archives after ``EXPORT_RETENTION_DAYS``.
- :func:`purge_batch` deletes one batch of expired objects in one
  transaction: rows locked with ``FOR UPDATE SKIP LOCKED`` (two instances
  never take the same row) and tombstoned, their bytes deleted in bulk, an
  audit row written, ``storage.objects_purged`` dispatched, commit. A crash
  before the commit leaves the rows as they were: the next batch selects them
  again and deleting keys already gone is a no-op. Keys the store failed to
  delete keep their rows live for a later batch.
- :func:`sweep_orphans` deletes bytes no row accounts for (a crash between an
  upload and its commit, outputs never committed, stale staging uploads) once
  they are older than ``ORPHAN_GRACE_SECONDS``.

Every function takes the time as ``now``: tests drive them with a fixed clock.
"""

from __future__ import annotations

import logging
import math
import time
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy import case, delete, func, insert, select, update
from sqlalchemy.orm import Session

from services.common import metrics
from services.common.db import aware, locked
from services.common.ids import new_id, parse_uuid
from services.common.messaging import Dispatch
from services.common.timers import try_xact_lock
from services.storage.backends.base import Backend, ObjectInfo
from services.storage.backends.keys import PUBLIC_PREFIX, stored_keys
from services.storage.models import (
    COMMITTED,
    PENDING,
    OwnerRetention,
    PurgeBatch,
    StoredObject,
    UploadSlot,
)
from services.storage.settings import StorageSettings

log = logging.getLogger(__name__)

# Kinds whose retention follows the owner's plan.
PLAN_KINDS = ("upload", "output")
# The timer purges at most this many batches per tick; an RPC call at most
# MAX_BATCHES_PER_CALL (the rest waits for the next tick or call).
MAX_BATCHES_PER_TICK = 100
MAX_BATCHES_PER_CALL = 1000
# Listing and lookups of the orphan sweep go in chunks of this many keys.
SWEEP_CHUNK = 1000
SWEEP_LOCK = "storage.orphan_sweep"  # one orphan sweep at a time (its timer or the RPC)

AGE_BUCKETS = (("0-7", 7), ("7-30", 30), ("30+", None))


# ---------------------------------------------------------------- expiry


def retention_days(db: Session, settings: StorageSettings, owner_id: uuid.UUID, kind: str) -> int:
    if kind == "export":
        return settings.export_retention_days
    own = db.get(OwnerRetention, owner_id)
    return own.retention_days if own is not None else settings.retention_days


def expiry(db: Session, settings: StorageSettings, owner_id: uuid.UUID, kind: str,
           created_at: datetime) -> datetime:
    return created_at + timedelta(days=retention_days(db, settings, owner_id, kind))


def longest_plan_retention(db: Session) -> int | None:
    return db.execute(select(func.max(OwnerRetention.retention_days))).scalar_one_or_none()


def apply_plan_change(db: Session, owner_id: uuid.UUID, plan: str, days: int,
                      occurred_at: datetime) -> int | None:
    """Record the owner's plan retention and move the expiry of their live
    uploads and outputs to ``created_at + days``. An event older than the
    one already applied changes nothing (returns None); otherwise returns
    how many objects got a new expiry."""
    own = locked(db, OwnerRetention, owner_id)
    if own is not None and own.updated_at > occurred_at:
        return None
    if own is None:
        own = OwnerRetention(owner_id=owner_id)
        db.add(own)
    own.plan, own.retention_days, own.updated_at = plan, days, occurred_at
    rows = db.execute(
        select(StoredObject.id, StoredObject.created_at).where(
            StoredObject.owner_id == owner_id,
            StoredObject.kind.in_(PLAN_KINDS),
            StoredObject.status == COMMITTED,
            StoredObject.deleted_at.is_(None),
        )
    ).all()
    if rows:
        db.execute(
            update(StoredObject),
            [{"id": r.id, "expires_at": r.created_at + timedelta(days=days)} for r in rows],
        )
    return len(rows)


# ---------------------------------------------------------------- purge


@dataclass
class BatchResult:
    batch_id: uuid.UUID | None
    selected: int
    object_ids: list[uuid.UUID] = field(default_factory=list)
    bytes: int = 0
    failed_keys: list[str] = field(default_factory=list)

    @property
    def objects(self) -> int:
        return len(self.object_ids)


def _expired(now: datetime):
    return (
        StoredObject.status == COMMITTED,
        StoredObject.deleted_at.is_(None),
        StoredObject.expires_at <= now,
    )


def purge_batch(db: Session, backend: Backend, settings: StorageSettings, now: datetime,
                batch_size: int | None, dispatch: Dispatch) -> BatchResult | None:
    """Purge up to ``batch_size`` expired objects, oldest expiry first, and
    commit. Returns None when nothing is expired (or everything expired is
    locked by another instance's batch).

    One transaction: the batch's rows are locked and tombstoned first (not
    visible to anyone before the commit), then their bytes deleted; rows
    whose keys the store failed to delete are put back as they were."""
    started = time.monotonic()
    objects = StoredObject.__table__  # Core statements: no ORM bookkeeping per row
    batch = (
        select(objects.c.id)
        .where(*_expired(now))
        .order_by(objects.c.expires_at)
        .limit(batch_size or settings.purge_batch_size)
        .with_for_update(skip_locked=True)
    )
    if db.get_bind().dialect.name == "postgresql":
        # a CTE: PostgreSQL selects and locks the batch exactly once
        batch_ids = select(batch.cte("batch").c.id)
    else:
        # (pysqlite opens no transaction for a statement that starts with WITH)
        batch_ids = batch.scalar_subquery()
    try:
        rows = db.execute(
            update(objects)
            .where(objects.c.id.in_(batch_ids))
            .values(deleted_at=now)
            .returning(objects.c.id, objects.c.key, objects.c.size, objects.c.public_id)
        ).all()
        if not rows:
            db.rollback()
            return None
        # the object's bytes and its public copy, if it has one
        failed_keys = set(backend.delete_many([k for r in rows for k in stored_keys(r)]))
        failed = {r.key for r in rows if failed_keys & set(stored_keys(r))}
        done = [r for r in rows if r.key not in failed] if failed else rows
        result = BatchResult(None, len(rows), [r.id for r in done], sum(r.size for r in done),
                             sorted(failed))
        if not done:
            db.rollback()
            metrics.PURGED_OBJECTS.labels("failed").inc(len(rows))
            log.warning("purge batch: the store deleted none of %d keys", len(rows))
            return result
        if failed:
            db.execute(
                update(objects)
                .where(objects.c.id.in_([r.id for r in rows if r.key in failed]))
                .values(deleted_at=None)
            )
        result.batch_id = new_id()
        db.execute(insert(PurgeBatch.__table__).values(
            id=result.batch_id, reason="retention", started_at=now,
            finished_at=now + timedelta(seconds=time.monotonic() - started),
            objects=result.objects, bytes=result.bytes,
        ))
        dispatch("objects_purged", {
            "object_ids": result.object_ids,
            "count": result.objects,
            "bytes": result.bytes,
            "batch_id": result.batch_id,
        })
        db.commit()
    except BaseException:
        db.rollback()
        raise
    metrics.PURGED_OBJECTS.labels("purged").inc(result.objects)
    if failed:
        metrics.PURGED_OBJECTS.labels("failed").inc(len(failed))
        log.warning("purge batch: %d key(s) not deleted, left for a later batch", len(failed))
    return result


def purge_expired(db: Session, backend: Backend, settings: StorageSettings, now: datetime,
                  dispatch: Dispatch, batch_size: int | None = None, dry_run: bool = False,
                  max_batches: int = MAX_BATCHES_PER_CALL) -> dict:
    """Purge batches until nothing expired is left (at most ``max_batches``).
    ``dry_run`` only counts what would be purged."""
    size = batch_size or settings.purge_batch_size
    if dry_run:
        objects, nbytes = db.execute(
            select(func.count(), func.coalesce(func.sum(StoredObject.size), 0)).where(*_expired(now))
        ).one()
        return {"dry_run": True, "batches": math.ceil(objects / size), "objects": objects,
                "bytes": int(nbytes)}
    totals = {"dry_run": False, "batches": 0, "objects": 0, "bytes": 0}
    while totals["batches"] < max_batches:
        result = purge_batch(db, backend, settings, now, size, dispatch)
        if result is None or not result.objects:
            break
        totals["batches"] += 1
        totals["objects"] += result.objects
        totals["bytes"] += result.bytes
        if result.selected < size:
            break
    return totals


# ---------------------------------------------------------------- orphans


@dataclass
class SweepResult:
    batch_id: uuid.UUID | None = None
    keys: list[str] = field(default_factory=list)
    bytes: int = 0
    failed_keys: list[str] = field(default_factory=list)
    stale_pending: int = 0
    expired_slots: int = 0

    @property
    def objects(self) -> int:
        return len(self.keys)


def _chunks(items: Iterable[ObjectInfo], size: int) -> Iterator[list[ObjectInfo]]:
    chunk: list[ObjectInfo] = []
    for item in items:
        chunk.append(item)
        if len(chunk) >= size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _uuid_at(key: str, index: int) -> uuid.UUID | None:
    parts = key.split("/")
    return parse_uuid(parts[index]) if len(parts) > index else None


def _orphaned_objects(db: Session, infos: list[ObjectInfo]) -> list[ObjectInfo]:
    """Keys under ``objects/`` without a live row (committed, or pending and
    young: old pending rows were tombstoned before the listing)."""
    ids = {i for i in (_uuid_at(info.key, 2) for info in infos) if i is not None}
    live = set(db.execute(
        select(StoredObject.key).where(StoredObject.id.in_(ids), StoredObject.deleted_at.is_(None))
    ).scalars()) if ids else set()
    return [info for info in infos if info.key not in live]


def _orphaned_public(db: Session, infos: list[ObjectInfo]) -> list[ObjectInfo]:
    """Public copies (``public/<public_id>``) of no live public object: what a
    crash between the copy and the commit of a publication left."""
    ids = {info.key[len(PUBLIC_PREFIX):] for info in infos}
    live = set(db.execute(
        select(StoredObject.public_id).where(StoredObject.public_id.in_(ids),
                                             StoredObject.visibility == "public",
                                             StoredObject.deleted_at.is_(None))
    ).scalars()) if ids else set()
    return [info for info in infos if info.key[len(PUBLIC_PREFIX):] not in live]


def _orphaned_staging(db: Session, infos: list[ObjectInfo], now: datetime) -> list[ObjectInfo]:
    """Staging keys whose slot is unknown, finished or expired."""
    ids = {i for i in (_uuid_at(info.key, 1) for info in infos) if i is not None}
    open_slots = set(db.execute(
        select(UploadSlot.key).where(
            UploadSlot.id.in_(ids), UploadSlot.finished_at.is_(None), UploadSlot.expires_at > now
        )
    ).scalars()) if ids else set()
    return [info for info in infos if info.key not in open_slots]


def sweep_orphans(db: Session, backend: Backend, settings: StorageSettings,
                  now: datetime) -> SweepResult | None:
    """Delete bytes older than the grace period that no row accounts for,
    tombstone output slots never committed, forget expired upload slots;
    audit what was deleted; commit. Returns None when another instance is
    sweeping."""
    started = time.monotonic()
    cutoff = now - timedelta(seconds=settings.orphan_grace_seconds)
    result = SweepResult()
    try:
        if not try_xact_lock(db, SWEEP_LOCK):
            db.rollback()
            return None
        # Outputs whose slot was issued more than the grace period ago and never
        # committed: tombstoned first (row locks on PostgreSQL), so a commit
        # racing with the sweep either wins before (row committed, bytes kept)
        # or finds the row gone.
        result.stale_pending = db.execute(
            update(StoredObject)
            .where(StoredObject.status == PENDING, StoredObject.deleted_at.is_(None),
                   StoredObject.created_at <= cutoff)
            .values(deleted_at=now)
        ).rowcount or 0
        doomed: list[ObjectInfo] = []
        old = (info for info in backend.list("objects/") if info.last_modified <= cutoff)
        for chunk in _chunks(old, SWEEP_CHUNK):
            doomed += _orphaned_objects(db, chunk)
        old = (info for info in backend.list("staging/") if info.last_modified <= cutoff)
        for chunk in _chunks(old, SWEEP_CHUNK):
            doomed += _orphaned_staging(db, chunk, now)
        old = (info for info in backend.list(PUBLIC_PREFIX) if info.last_modified <= cutoff)
        for chunk in _chunks(old, SWEEP_CHUNK):
            doomed += _orphaned_public(db, chunk)
        failed: set[str] = set()
        for start in range(0, len(doomed), SWEEP_CHUNK):
            failed |= set(backend.delete_many([i.key for i in doomed[start:start + SWEEP_CHUNK]]))
        deleted = [i for i in doomed if i.key not in failed]
        result.keys = [i.key for i in deleted]
        result.bytes = sum(i.size for i in deleted)
        result.failed_keys = sorted(failed)
        # Slots expired for longer than the grace period: their staging bytes
        # were deleted above (or will be, as keys of unknown slots, next time).
        result.expired_slots = db.execute(
            delete(UploadSlot).where(UploadSlot.expires_at <= cutoff)
        ).rowcount or 0
        if deleted:
            batch = PurgeBatch(
                reason="orphan", started_at=now,
                finished_at=now + timedelta(seconds=time.monotonic() - started),
                objects=result.objects, bytes=result.bytes,
            )
            db.add(batch)
            db.flush()
            result.batch_id = batch.id
        db.commit()
    except BaseException:
        db.rollback()
        raise
    if deleted or result.stale_pending or failed:
        log.info("orphan sweep", extra={
            "deleted": result.objects, "bytes": result.bytes, "failed": len(failed),
            "stale_pending": result.stale_pending, "expired_slots": result.expired_slots,
        })
    return result


# ---------------------------------------------------------------- report


def state_metrics(engine, now: datetime) -> list[metrics.Sample]:
    """The purge's backlog, read at each scrape (services.common.metrics):
    expired objects not yet purged, and how long the oldest has waited."""
    with Session(engine) as db:
        count, oldest = db.execute(
            select(func.count(), func.min(StoredObject.expires_at)).where(*_expired(now))
        ).one()
    waited = (now - aware(oldest)).total_seconds() if oldest is not None else 0.0
    return [("darkroom_purge_backlog_objects", {}, float(count)),
            ("darkroom_purge_backlog_seconds", {}, max(waited, 0.0))]



def _counts(db: Session, *where) -> dict:
    objects, nbytes = db.execute(
        select(func.count(), func.coalesce(func.sum(StoredObject.size), 0)).where(*where)
    ).one()
    return {"objects": int(objects), "bytes": int(nbytes)}


def report(db: Session, now: datetime) -> dict:
    """Counts and bytes of the stored (committed, not deleted) objects by kind
    and by age, what is expired and waiting for the purge, and tombstones."""
    live = (StoredObject.status == COMMITTED, StoredObject.deleted_at.is_(None))
    by_kind = {
        kind: {"objects": int(n), "bytes": int(b)}
        for kind, n, b in db.execute(
            select(StoredObject.kind, func.count(), func.coalesce(func.sum(StoredObject.size), 0))
            .where(*live)
            .group_by(StoredObject.kind)
        )
    }
    bucket = case(
        *[(StoredObject.created_at > now - timedelta(days=days), label)
          for label, days in AGE_BUCKETS if days is not None],
        else_=AGE_BUCKETS[-1][0],
    )
    # grouped outside a subquery: PostgreSQL cannot match a GROUP BY
    # expression with bound parameters to the same one in the select list
    aged = select(bucket.label("bucket"), StoredObject.size).where(*live).subquery()
    by_age = {label: {"objects": 0, "bytes": 0} for label, _ in AGE_BUCKETS}
    for label, n, b in db.execute(
        select(aged.c.bucket, func.count(), func.coalesce(func.sum(aged.c.size), 0))
        .group_by(aged.c.bucket)
    ):
        by_age[label] = {"objects": int(n), "bytes": int(b)}
    deleted = db.execute(
        select(func.count()).select_from(StoredObject).where(StoredObject.deleted_at.is_not(None))
    ).scalar_one()
    return {
        "by_kind": by_kind,
        "by_age_days": by_age,
        "expired_pending": _counts(db, *_expired(now)),
        "deleted": {"objects": int(deleted)},
    }
