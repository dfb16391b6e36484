"""The generation service's tables.

A ``jobs`` row is one generation job from submit to its final state. The
saga (docs/design.md §4) moves it ``queued → reserved → running → succeeded |
failed``, or to ``rejected`` (no credits) or ``cancelled`` (the states are
``JobState`` in services/common/contracts/generation.py). ``attempt`` counts
its runs: ``darkroom-ops jobs replay`` starts attempt 2 of a failed job, and
every event of the saga carries the attempt so a late event of an earlier
attempt changes nothing.

A running job holds a lease (``lease_token``, ``lease_expires_at``) renewed
while it runs; only the lease holder may finish it, and a lease that runs
out (a worker killed mid-job) puts the job back to ``reserved`` for another
worker: a job finishes exactly once.
"""

from __future__ import annotations

import uuid
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column

from services.common.db import UtcDateTime, processed_events_table
from services.common.models import IdMixin, service_base
from services.common.outbox import outbox_table

Base = service_base()


class Job(IdMixin, Base):
    __tablename__ = "jobs"
    __table_args__ = (
        # a user's jobs, newest first (keyset pagination)
        sa.Index("ix_jobs_user_id_created_at_id", "user_id", "created_at", "id"),
        # a user's active jobs (the queue cap's count at each submit): only those read
        sa.Index("ix_jobs_user_id_status", "user_id", "status"),
        # the run queue: reserved jobs by priority, then age
        sa.Index("ix_jobs_status_priority_reserved_at", "status", "priority", "reserved_at"),
        # Idempotency-Key: one job per user and key
        sa.UniqueConstraint("user_id", "idempotency_key"),
    )

    user_id: Mapped[uuid.UUID] = mapped_column(sa.Uuid)
    type: Mapped[str] = mapped_column(sa.String(32))
    status: Mapped[str] = mapped_column(sa.String(16))  # a contracts.generation.JobState
    attempt: Mapped[int] = mapped_column(sa.Integer, default=1)
    # what the user asked for: prompt and parameters (n, size, seed, strength,
    # source_image_id, template, inputs, duration_s); the prompts are redacted
    # when the job is final if GENERATION.PROMPT_RETENTION is "redact"
    prompt: Mapped[str | None] = mapped_column(sa.Text)
    negative_prompt: Mapped[str | None] = mapped_column(sa.Text)
    params: Mapped[dict] = mapped_column(sa.JSON)
    shots: Mapped[list | None] = mapped_column(sa.JSON)  # a storyboard video's shots
    prompt_redacted: Mapped[bool] = mapped_column(default=False)
    price: Mapped[int] = mapped_column(sa.Integer)
    priority: Mapped[int] = mapped_column(sa.Integer, default=0)
    progress: Mapped[float] = mapped_column(sa.Float, default=0.0)
    stage: Mapped[str] = mapped_column(sa.String(32))
    provider: Mapped[str | None] = mapped_column(sa.String(64))
    error_code: Mapped[str | None] = mapped_column(sa.String(100))
    error_message: Mapped[str | None] = mapped_column(sa.String(2000))
    output_ids: Mapped[list] = mapped_column(sa.JSON, default=list)
    webhook_url: Mapped[str | None] = mapped_column(sa.String(2000))
    # the events the webhook is sent on (contracts WEBHOOK_EVENTS); null: all
    webhook_events: Mapped[list | None] = mapped_column(sa.JSON)
    idempotency_key: Mapped[str | None] = mapped_column(sa.String(200))
    request_hash: Mapped[str | None] = mapped_column(sa.String(64))
    lease_token: Mapped[str | None] = mapped_column(sa.String(36))
    lease_expires_at: Mapped[datetime | None] = mapped_column(UtcDateTime())
    created_at: Mapped[datetime] = mapped_column(UtcDateTime())
    reserved_at: Mapped[datetime | None] = mapped_column(UtcDateTime())
    # when billing releases this attempt's hold (``billing.credits_reserved``):
    # the job is not claimed after it, and fails ``hold_expired``
    hold_expires_at: Mapped[datetime | None] = mapped_column(UtcDateTime())
    started_at: Mapped[datetime | None] = mapped_column(UtcDateTime())
    finished_at: Mapped[datetime | None] = mapped_column(UtcDateTime())
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime())


class WebhookDelivery(IdMixin, Base):
    """One POST of a job's event (its start or final state) to its
    ``webhook_url``, retried with backoff until it succeeds or runs out of
    attempts. ``job_status`` is the state the event was sent on."""

    __tablename__ = "webhook_deliveries"
    __table_args__ = (
        sa.Index("ix_webhook_deliveries_status_next_attempt_at", "status", "next_attempt_at"),
        sa.UniqueConstraint("job_id", "attempt", "job_status"),
    )

    job_id: Mapped[uuid.UUID] = mapped_column(sa.Uuid)
    user_id: Mapped[uuid.UUID] = mapped_column(sa.Uuid, index=True)
    attempt: Mapped[int] = mapped_column(sa.Integer)  # the job's attempt
    job_status: Mapped[str] = mapped_column(sa.String(16))
    url: Mapped[str] = mapped_column(sa.String(2000))
    # the URL's origin (scheme://host:port): what per-receiver limits and backoff key on
    receiver: Mapped[str | None] = mapped_column(sa.String(300))
    body: Mapped[str] = mapped_column(sa.Text)
    status: Mapped[str] = mapped_column(sa.String(16))  # pending | delivered | failed
    tries: Mapped[int] = mapped_column(sa.Integer, default=0)
    last_error: Mapped[str | None] = mapped_column(sa.String(500))
    response_status: Mapped[int | None] = mapped_column(sa.Integer)  # the last answer's
    next_attempt_at: Mapped[datetime] = mapped_column(UtcDateTime())
    created_at: Mapped[datetime] = mapped_column(UtcDateTime())
    last_attempt_at: Mapped[datetime | None] = mapped_column(UtcDateTime())
    delivered_at: Mapped[datetime | None] = mapped_column(UtcDateTime())


class WebhookReceiver(Base):
    """A receiver (an origin) that keeps failing: its deliveries wait until
    ``blocked_until`` once ``failures`` in a row reach the threshold. The row
    exists only while the receiver fails; a success deletes it."""

    __tablename__ = "webhook_receivers"

    receiver: Mapped[str] = mapped_column(sa.String(300), primary_key=True)
    failures: Mapped[int] = mapped_column(sa.Integer, default=0)
    blocked_until: Mapped[datetime | None] = mapped_column(UtcDateTime())
    last_error: Mapped[str | None] = mapped_column(sa.String(500))
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime())


class SubmitLock(Base):
    """A user's submit lock: :func:`services.generation.jobs.submit` inserts
    the user's row, counts the active jobs, adds the new one and deletes the
    row again, all in its transaction. A second submit of the same user
    waits on the row's primary key until the first commits, so the count
    and the new job are one decision. The row never outlives a transaction:
    nothing is kept here."""

    __tablename__ = "submit_locks"

    user_id: Mapped[uuid.UUID] = mapped_column(sa.Uuid, primary_key=True)


class RestrictedUser(Base):
    """The privacy service's processing restriction of an account, as of its
    newest ``privacy.restriction_changed`` event: while ``restricted``,
    ``submit`` refuses new jobs (403 ``processing_restricted``)."""

    __tablename__ = "restricted_users"

    user_id: Mapped[uuid.UUID] = mapped_column(sa.Uuid, primary_key=True)
    restricted: Mapped[bool] = mapped_column(default=False)
    changed_at: Mapped[datetime] = mapped_column(UtcDateTime())


class ErasurePending(Base):
    """An erasure of the account asked for and not cancelled, as of the
    newest ``privacy.erasure_scheduled`` / ``privacy.erasure_cancelled``:
    while ``pending``, ``submit`` refuses new jobs (403 ``erasure_pending``).
    The erasure keeps the row (and sets it) until its recheck, when the
    account is gone."""

    __tablename__ = "erasure_pending"

    user_id: Mapped[uuid.UUID] = mapped_column(sa.Uuid, primary_key=True)
    pending: Mapped[bool] = mapped_column(default=True)
    changed_at: Mapped[datetime] = mapped_column(UtcDateTime())


class RefusedRegions(Base):
    """The regions the user refuses processing in, as of the newest
    ``privacy.consent_changed`` that carried them: routes skip providers
    there, and ``submit`` refuses a job no provider is left for (409
    ``no_provider_for_region``)."""

    __tablename__ = "refused_regions"

    user_id: Mapped[uuid.UUID] = mapped_column(sa.Uuid, primary_key=True)
    regions: Mapped[list] = mapped_column(sa.JSON, default=list)
    changed_at: Mapped[datetime] = mapped_column(UtcDateTime())


class Disclosure(IdMixin, Base):
    """One request that left for a model vendor (services/generation/disclosures.py):
    whose, for which job, to which provider and region, which categories of
    data, when, and how it went. Deleted by the user's erasure."""

    __tablename__ = "disclosures"
    __table_args__ = (
        # a user's disclosures, newest first (keyset pagination)
        sa.Index("ix_disclosures_user_id_created_at_id", "user_id", "created_at", "id"),
    )

    user_id: Mapped[uuid.UUID] = mapped_column(sa.Uuid)
    job_id: Mapped[uuid.UUID] = mapped_column(sa.Uuid)
    attempt: Mapped[int] = mapped_column(sa.Integer)  # the job's attempt
    provider: Mapped[str] = mapped_column(sa.String(64))
    region: Mapped[str | None] = mapped_column(sa.String(64))
    categories: Mapped[list] = mapped_column(sa.JSON)  # prompt, negative_prompt, ...
    outcome: Mapped[str] = mapped_column(sa.String(16))  # succeeded | failed | refused
    error_code: Mapped[str | None] = mapped_column(sa.String(100))
    created_at: Mapped[datetime] = mapped_column(UtcDateTime())


# Events consumed (idempotency on event id) and events waiting to be published.
processed_events = processed_events_table(Base.metadata)
outbox = outbox_table(Base.metadata)
