"""The privacy service's tables.

- ``privacy_requests`` and ``request_parts``: data-subject requests and each
  service's part of them. When an erasure completes, the user id is removed
  from every request of that user: what stays (types, statuses, times,
  per-service counts, ``request_log``) is the audit trail, with no personal
  data in it. ``open_type`` is the request's type while it is open and NULL
  after; a unique key on ``(user_id, open_type)`` keeps one open request of
  each type per user, even under concurrent requests.
- ``consent_changes`` (every change kept), ``region_refusals`` (every change
  of the refused regions kept, the newest row is the current list),
  ``policy_versions``,
  ``policy_acceptances``, ``restrictions``.
- ``access_logs``: the gateway's ``gateway.requests_logged`` facts, purged
  after ``ACCESS_LOG_RETENTION_DAYS``; the row id is the fact id, so a
  redelivered event is stored once.
- ``erased_subjects``: a keyed hash (``psn:`` + HMAC) of each erased user's
  id, so access logs still on their way when the erasure completed are
  dropped instead of stored. It cannot be turned back into the id.
- ``breach_incidents``, ``breach_subjects`` and ``breach_log``: personal-data
  breaches (services/privacy/breaches.py). Kept for the legal obligation to
  document breaches, so a user's erasure does not delete them: a subject is
  its keyed hash (``psn:``), and its user id only until the notice is sent or
  the user is erased. ``breach_log`` has an audit row per change.
"""


from __future__ import annotations

import uuid
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column

from services.common.db import UtcDateTime
from services.common.fieldcrypt import Encrypted
from services.common.models import IdMixin, service_base
from services.common.outbox import outbox_table

Base = service_base()


class PrivacyRequest(IdMixin, Base):
    __tablename__ = "privacy_requests"
    __table_args__ = (
        sa.UniqueConstraint("user_id", "open_type"),
        sa.Index("ix_privacy_requests_user_id_created_at_id", "user_id", "created_at", "id"),
        sa.Index("ix_privacy_requests_status_due_at", "status", "due_at"),
    )

    user_id: Mapped[uuid.UUID | None] = mapped_column(sa.Uuid)  # NULL once erased
    type: Mapped[str] = mapped_column(sa.String(20))
    status: Mapped[str] = mapped_column(sa.String(16))
    open_type: Mapped[str | None] = mapped_column(sa.String(20))
    phase: Mapped[int] = mapped_column(sa.Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime())
    due_at: Mapped[datetime] = mapped_column(UtcDateTime())
    # an erasure: its grace period ends then (cancellable until then); the
    # account's credentials are revoked then (revoked_at) and it starts the
    # settle time after that (longer than the gateways' credential cache)
    starts_at: Mapped[datetime | None] = mapped_column(UtcDateTime())
    revoked_at: Mapped[datetime | None] = mapped_column(UtcDateTime())
    # SHA-256 of the mailed cancel link's token (single use: the request is
    # no longer pending once it is used)
    cancel_token_hash: Mapped[str | None] = mapped_column(sa.String(64))
    started_at: Mapped[datetime | None] = mapped_column(UtcDateTime())
    completed_at: Mapped[datetime | None] = mapped_column(UtcDateTime())
    cancelled_at: Mapped[datetime | None] = mapped_column(UtcDateTime())
    failed_at: Mapped[datetime | None] = mapped_column(UtcDateTime())
    # an export: the archive (a storage object of the user's), and its assembly
    export_object_id: Mapped[uuid.UUID | None] = mapped_column(sa.Uuid)
    export_expires_at: Mapped[datetime | None] = mapped_column(UtcDateTime())
    export_size: Mapped[int | None] = mapped_column(sa.BigInteger)
    assembly_attempts: Mapped[int] = mapped_column(sa.Integer, default=0)
    assembling_until: Mapped[datetime | None] = mapped_column(UtcDateTime())
    last_error: Mapped[str | None] = mapped_column(sa.String(500))
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime())


class RequestPart(Base):
    """One service's part of a request. An export part's JSON (``data``) or
    stored object (``object_id``) is kept only until the archive is built."""

    __tablename__ = "request_parts"
    __table_args__ = (sa.Index("ix_request_parts_status_published_at", "status", "published_at"),)

    request_id: Mapped[uuid.UUID] = mapped_column(
        sa.Uuid, sa.ForeignKey("privacy_requests.id", ondelete="CASCADE"), primary_key=True)
    service: Mapped[str] = mapped_column(sa.String(32), primary_key=True)
    phase: Mapped[int] = mapped_column(sa.Integer)
    status: Mapped[str] = mapped_column(sa.String(16))
    attempts: Mapped[int] = mapped_column(sa.Integer, default=0)  # times the request was published
    published_at: Mapped[datetime | None] = mapped_column(UtcDateTime())
    completed_at: Mapped[datetime | None] = mapped_column(UtcDateTime())
    # an erasure part: what the service reports (counts and times, no personal data)
    started_at: Mapped[datetime | None] = mapped_column(UtcDateTime())
    finished_at: Mapped[datetime | None] = mapped_column(UtcDateTime())
    rows_deleted: Mapped[int | None] = mapped_column(sa.BigInteger)
    rows_pseudonymised: Mapped[int | None] = mapped_column(sa.BigInteger)
    objects_deleted: Mapped[int | None] = mapped_column(sa.BigInteger)
    bytes_deleted: Mapped[int | None] = mapped_column(sa.BigInteger)
    tables: Mapped[dict | None] = mapped_column(sa.JSON)
    # an export part
    data: Mapped[str | None] = mapped_column(sa.Text)
    object_id: Mapped[uuid.UUID | None] = mapped_column(sa.Uuid)
    about: Mapped[str | None] = mapped_column(sa.Text)
    withheld: Mapped[list | None] = mapped_column(sa.JSON)


class RequestLog(IdMixin, Base):
    """The audit trail of a request: what happened when. No personal data."""

    __tablename__ = "request_log"

    request_id: Mapped[uuid.UUID] = mapped_column(sa.Uuid, index=True)
    at: Mapped[datetime] = mapped_column(UtcDateTime())
    action: Mapped[str] = mapped_column(sa.String(40))
    service: Mapped[str | None] = mapped_column(sa.String(32))
    detail: Mapped[str | None] = mapped_column(sa.String(500))


class ConsentChange(IdMixin, Base):
    __tablename__ = "consent_changes"
    __table_args__ = (sa.Index("ix_consent_changes_user_id_created_at", "user_id", "created_at"),)

    user_id: Mapped[uuid.UUID] = mapped_column(sa.Uuid)
    purpose: Mapped[str] = mapped_column(sa.String(32))
    granted: Mapped[bool] = mapped_column(sa.Boolean)
    source: Mapped[str] = mapped_column(sa.String(32))
    policy_version: Mapped[str | None] = mapped_column(sa.String(32))
    created_at: Mapped[datetime] = mapped_column(UtcDateTime())


class RegionRefusal(IdMixin, Base):
    """The regions a user refuses processing in, from this change on."""

    __tablename__ = "region_refusals"
    __table_args__ = (sa.Index("ix_region_refusals_user_id_created_at", "user_id", "created_at"),)

    user_id: Mapped[uuid.UUID] = mapped_column(sa.Uuid)
    regions: Mapped[list] = mapped_column(sa.JSON)
    source: Mapped[str] = mapped_column(sa.String(32))
    policy_version: Mapped[str | None] = mapped_column(sa.String(32))
    created_at: Mapped[datetime] = mapped_column(UtcDateTime())


class PolicyVersion(Base):
    __tablename__ = "policy_versions"

    version: Mapped[str] = mapped_column(sa.String(32), primary_key=True)
    material: Mapped[bool] = mapped_column(sa.Boolean)
    summary: Mapped[str] = mapped_column(sa.Text)
    published_at: Mapped[datetime] = mapped_column(UtcDateTime(), index=True)


class PolicyAcceptance(IdMixin, Base):
    __tablename__ = "policy_acceptances"
    __table_args__ = (sa.UniqueConstraint("user_id", "version"),)

    user_id: Mapped[uuid.UUID] = mapped_column(sa.Uuid, index=True)
    version: Mapped[str] = mapped_column(sa.String(32))
    accepted_at: Mapped[datetime] = mapped_column(UtcDateTime())


class Restriction(Base):
    __tablename__ = "restrictions"

    user_id: Mapped[uuid.UUID] = mapped_column(sa.Uuid, primary_key=True)
    restricted: Mapped[bool] = mapped_column(sa.Boolean)
    changed_at: Mapped[datetime] = mapped_column(UtcDateTime())


class AccessLog(Base):
    __tablename__ = "access_logs"
    __table_args__ = (sa.Index("ix_access_logs_user_id_at", "user_id", "at"),)

    id: Mapped[uuid.UUID] = mapped_column(sa.Uuid, primary_key=True)  # the fact id
    user_id: Mapped[uuid.UUID | None] = mapped_column(sa.Uuid)
    at: Mapped[datetime] = mapped_column(UtcDateTime(), index=True)
    method: Mapped[str] = mapped_column(sa.String(10))
    route: Mapped[str] = mapped_column(sa.String(200))
    status: Mapped[int] = mapped_column(sa.Integer)
    # the client's network (/24, /48), encrypted (services/common/fieldcrypt.py)
    network: Mapped[str | None] = mapped_column(Encrypted("access_logs.network"))


class ErasedSubject(Base):
    __tablename__ = "erased_subjects"

    subject: Mapped[str] = mapped_column(sa.String(80), primary_key=True)
    erased_at: Mapped[datetime] = mapped_column(UtcDateTime())


class BreachIncident(IdMixin, Base):
    """A personal-data breach and its 72-hour regulator clock (from ``detected_at``)."""

    __tablename__ = "breach_incidents"
    __table_args__ = (sa.Index("ix_breach_incidents_state_detected_at", "state", "detected_at"),)

    summary: Mapped[str] = mapped_column(sa.Text)
    categories: Mapped[list] = mapped_column(sa.JSON)
    state: Mapped[str] = mapped_column(sa.String(16))  # open, reported
    detected_at: Mapped[datetime] = mapped_column(UtcDateTime())
    opened_at: Mapped[datetime] = mapped_column(UtcDateTime())
    deadline_at: Mapped[datetime] = mapped_column(UtcDateTime())
    # the window the affected users were computed for, and when
    window_from: Mapped[datetime | None] = mapped_column(UtcDateTime())
    window_to: Mapped[datetime | None] = mapped_column(UtcDateTime())
    affected_at: Mapped[datetime | None] = mapped_column(UtcDateTime())
    affected_count: Mapped[int] = mapped_column(sa.Integer, default=0)
    records_count: Mapped[int] = mapped_column(sa.BigInteger, default=0)
    sources: Mapped[dict | None] = mapped_column(sa.JSON)  # users found per source, last run
    notified_at: Mapped[datetime | None] = mapped_column(UtcDateTime())
    reported_at: Mapped[datetime | None] = mapped_column(UtcDateTime())
    report: Mapped[dict | None] = mapped_column(sa.JSON)
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime())


class BreachSubject(Base):
    """One affected user of an incident, and their notice."""

    __tablename__ = "breach_subjects"
    __table_args__ = (sa.Index("ix_breach_subjects_incident_id_notice", "incident_id", "notice"),)

    incident_id: Mapped[uuid.UUID] = mapped_column(
        sa.Uuid, sa.ForeignKey("breach_incidents.id"), primary_key=True)
    subject: Mapped[str] = mapped_column(sa.String(80), primary_key=True)  # psn: keyed hash
    user_id: Mapped[uuid.UUID | None] = mapped_column(sa.Uuid)  # until notified or erased
    sources: Mapped[list] = mapped_column(sa.JSON)
    records: Mapped[int] = mapped_column(sa.Integer, default=0)
    notice: Mapped[str] = mapped_column(sa.String(16))  # pending, sent, skipped_erased
    notice_at: Mapped[datetime | None] = mapped_column(UtcDateTime())


class BreachLog(IdMixin, Base):
    """The audit trail of an incident: an entry per change. No personal data."""

    __tablename__ = "breach_log"

    incident_id: Mapped[uuid.UUID] = mapped_column(sa.Uuid, index=True)
    at: Mapped[datetime] = mapped_column(UtcDateTime())
    action: Mapped[str] = mapped_column(sa.String(40))
    detail: Mapped[str | None] = mapped_column(sa.String(500))


outbox = outbox_table(Base.metadata)
