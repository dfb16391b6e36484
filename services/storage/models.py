"""The storage service's tables.

An ``objects`` row describes one stored file (an upload, a job's output, an
export archive) under the key ``objects/<owner_id>/<id>``. A public object
also has a copy under ``public/<public_id>``: ``public_id`` is random, made
anew each time the object is made public, and unrelated to the owner and the
object id, so its URLs link nothing together. A row is
``pending`` from the moment an output slot is issued until its bytes are
verified (``commit_objects``), then ``committed`` with its ``expires_at``.
Deleting (by the owner, by the retention purge, by an erasure) removes the
bytes first and then sets ``deleted_at``: the row stays as a tombstone.
"""

from __future__ import annotations

import uuid
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column

from services.common.db import UtcDateTime, processed_events_table
from services.common.models import IdMixin, service_base
from services.common.outbox import outbox_table

PENDING = "pending"
COMMITTED = "committed"


Base = service_base()


class StoredObject(IdMixin, Base):
    __tablename__ = "objects"
    __table_args__ = (
        # The gallery: an owner's objects, newest first (keyset pagination).
        sa.Index("ix_objects_owner_id_created_at_id", "owner_id", "created_at", "id"),
        # The purge: live rows by expiry.
        sa.Index(
            "ix_objects_expires_at_live",
            "expires_at",
            postgresql_where=sa.text("deleted_at IS NULL"),
            sqlite_where=sa.text("deleted_at IS NULL"),
        ),
    )

    owner_id: Mapped[uuid.UUID] = mapped_column(sa.Uuid)
    kind: Mapped[str] = mapped_column(sa.String(16))  # upload | output | export
    status: Mapped[str] = mapped_column(sa.String(16))  # pending | committed
    content_type: Mapped[str] = mapped_column(sa.String(100))
    size: Mapped[int] = mapped_column(sa.BigInteger)
    sha256: Mapped[str] = mapped_column(sa.String(64))
    width: Mapped[int | None] = mapped_column(sa.Integer)
    height: Mapped[int | None] = mapped_column(sa.Integer)
    job_id: Mapped[uuid.UUID | None] = mapped_column(sa.Uuid)
    visibility: Mapped[str] = mapped_column(
        sa.String(16), default="private", server_default="private"
    )
    public_id: Mapped[str | None] = mapped_column(sa.String(64), unique=True)  # while public
    key: Mapped[str] = mapped_column(sa.String(255))
    created_at: Mapped[datetime] = mapped_column(UtcDateTime())
    committed_at: Mapped[datetime | None] = mapped_column(UtcDateTime())
    expires_at: Mapped[datetime | None] = mapped_column(UtcDateTime())
    deleted_at: Mapped[datetime | None] = mapped_column(UtcDateTime())


class UploadSlot(IdMixin, Base):
    """Where a user's upload waits (``staging/<id>``) until ``finish_upload``
    validates it; ``object_id`` is what it became."""

    __tablename__ = "upload_slots"

    owner_id: Mapped[uuid.UUID] = mapped_column(sa.Uuid, index=True)
    key: Mapped[str] = mapped_column(sa.String(255))
    created_at: Mapped[datetime] = mapped_column(UtcDateTime())
    expires_at: Mapped[datetime] = mapped_column(UtcDateTime(), index=True)
    finished_at: Mapped[datetime | None] = mapped_column(UtcDateTime())
    object_id: Mapped[uuid.UUID | None] = mapped_column(sa.Uuid)


class OwnerRetention(Base):
    """The retention a user's plan grants (from ``billing.plan_changed``);
    owners without a row get ``STORAGE.RETENTION_DAYS``."""

    __tablename__ = "owner_retention"

    owner_id: Mapped[uuid.UUID] = mapped_column(sa.Uuid, primary_key=True)
    plan: Mapped[str] = mapped_column(sa.String(64))
    retention_days: Mapped[int] = mapped_column(sa.Integer)
    # When billing said so (the event's occurred_at): an older event never
    # overrides a newer one.
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime())


class PurgeBatch(IdMixin, Base):
    """The audit trail of deletions by the service itself: one row per batch
    of the retention purge (``reason`` "retention") or per orphan sweep
    ("orphan")."""

    __tablename__ = "purge_batches"

    reason: Mapped[str] = mapped_column(sa.String(16))
    started_at: Mapped[datetime] = mapped_column(UtcDateTime(), index=True)
    finished_at: Mapped[datetime] = mapped_column(UtcDateTime())
    objects: Mapped[int] = mapped_column(sa.Integer)
    bytes: Mapped[int] = mapped_column(sa.BigInteger)


# Events consumed (idempotency on event id) and events waiting to be published.
processed_events = processed_events_table(Base.metadata)
outbox = outbox_table(Base.metadata)
