"""The billing service's tables.

- ``accounts``: one row per user: plan, plan expiry, and the cached
  ``available`` and ``held`` balances, which must always equal the sums of the
  user's ledger entries. ``entry_seq`` numbers the user's entries (1, 2, ...);
  every balance-changing operation locks this row first.
- ``ledger_entries``: append-only. ``amount`` is the signed change to
  available, ``held_change`` to held, ``balance_after``/``held_after`` the
  balances after the entry; ``idempotency_key`` is UNIQUE: the natural key of
  the fact (``job:<job>:<attempt>:hold``, ``grant:signup:<user>``, ...).
- ``lots``: where available credits sit: a grant, a purchase or a positive
  adjustment, with ``expires_at`` and ``remaining``; ``frozen`` while the
  payment of the lot's order is disputed (nothing is drawn from it).
- ``lot_movements``: how each entry changed each lot (a hold takes from the
  lots expiring first, its release gives back to the same lots): the
  per-lot allocation, and what makes lot remainders auditable.
- ``holds``: the credits reserved for one attempt of one job.
- ``orders`` and ``payments``: purchases and the provider's payments; kept 5
  years, pseudonymised (``user_ref``) on erasure.
- ``subscriptions``: a paid plan renewing through Stripe: its Stripe ids,
  status, period end, cancel at period end, dunning grace; ``user_id`` is
  NULL once the account is erased, until Stripe has cancelled it.
- ``webhook_events``: Stripe events already handled (idempotency on their id).
- ``erased_accounts``: keyed hashes of erased users, so a late event cannot
  reopen an account (and hand out a second signup grant).
"""

from __future__ import annotations

import uuid
from datetime import datetime
from enum import StrEnum

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column

from services.common.db import UtcDateTime, processed_events_table
from services.common.models import IdMixin, service_base
from services.common.outbox import outbox_table


class HoldStatus(StrEnum):
    """A hold's ``status``: ``open`` until its job's attempt ends, then
    ``captured`` (the credits are spent) or ``released`` (given back)."""

    OPEN = "open"
    CAPTURED = "captured"
    RELEASED = "released"


Base = service_base()


class Account(Base):
    __tablename__ = "accounts"

    user_id: Mapped[uuid.UUID] = mapped_column(sa.Uuid, primary_key=True)
    plan: Mapped[str] = mapped_column(sa.String(64))
    # End of a paid plan's period (then back to the default plan); None for free.
    plan_expires_at: Mapped[datetime | None] = mapped_column(UtcDateTime(), index=True)
    available: Mapped[int] = mapped_column(sa.BigInteger)
    held: Mapped[int] = mapped_column(sa.BigInteger)
    entry_seq: Mapped[int] = mapped_column(sa.Integer)
    # The last calendar month ("YYYY-MM") whose monthly grant was given (or
    # skipped: the signup month, months on a paid plan).
    granted_period: Mapped[str | None] = mapped_column(sa.String(7))
    created_at: Mapped[datetime] = mapped_column(UtcDateTime())
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime())


class LedgerEntry(IdMixin, Base):
    __tablename__ = "ledger_entries"
    __table_args__ = (
        sa.UniqueConstraint("user_id", "seq"),
        sa.UniqueConstraint("idempotency_key"),
        sa.Index("ix_ledger_entries_user_id_created_at", "user_id", "created_at"),
    )

    user_id: Mapped[uuid.UUID] = mapped_column(sa.Uuid)
    seq: Mapped[int] = mapped_column(sa.Integer)
    # grant | purchase | hold | capture | release | refund | expire | adjustment
    kind: Mapped[str] = mapped_column(sa.String(16))
    idempotency_key: Mapped[str] = mapped_column(sa.String(255))
    amount: Mapped[int] = mapped_column(sa.BigInteger)
    held_change: Mapped[int] = mapped_column(sa.BigInteger)
    balance_after: Mapped[int] = mapped_column(sa.BigInteger)
    held_after: Mapped[int] = mapped_column(sa.BigInteger)
    job_id: Mapped[uuid.UUID | None] = mapped_column(sa.Uuid, index=True)
    attempt: Mapped[int | None] = mapped_column(sa.Integer)
    hold_id: Mapped[uuid.UUID | None] = mapped_column(sa.Uuid)
    lot_id: Mapped[uuid.UUID | None] = mapped_column(sa.Uuid)
    order_id: Mapped[uuid.UUID | None] = mapped_column(sa.Uuid)
    expires_at: Mapped[datetime | None] = mapped_column(UtcDateTime())
    reason: Mapped[str | None] = mapped_column(sa.String(500))
    created_at: Mapped[datetime] = mapped_column(UtcDateTime())


class Lot(IdMixin, Base):
    __tablename__ = "lots"
    __table_args__ = (sa.Index("ix_lots_user_id_expires_at", "user_id", "expires_at"),)

    user_id: Mapped[uuid.UUID] = mapped_column(sa.Uuid)
    source: Mapped[str] = mapped_column(sa.String(16))  # grant | purchase | adjustment
    credits: Mapped[int] = mapped_column(sa.BigInteger)
    remaining: Mapped[int] = mapped_column(sa.BigInteger)
    expires_at: Mapped[datetime | None] = mapped_column(UtcDateTime())
    order_id: Mapped[uuid.UUID | None] = mapped_column(sa.Uuid, index=True)
    # The payment of the lot's order is disputed: its credits cannot be spent.
    frozen: Mapped[bool] = mapped_column(default=False, server_default=sa.false())
    created_at: Mapped[datetime] = mapped_column(UtcDateTime())


class LotMovement(Base):
    __tablename__ = "lot_movements"

    entry_id: Mapped[uuid.UUID] = mapped_column(sa.Uuid, primary_key=True)
    lot_id: Mapped[uuid.UUID] = mapped_column(sa.Uuid, primary_key=True, index=True)
    user_id: Mapped[uuid.UUID] = mapped_column(sa.Uuid, index=True)
    amount: Mapped[int] = mapped_column(sa.BigInteger)


class Hold(IdMixin, Base):
    __tablename__ = "holds"
    __table_args__ = (
        sa.UniqueConstraint("job_id", "attempt"),
        sa.Index("ix_holds_status_created_at", "status", "created_at"),
    )

    user_id: Mapped[uuid.UUID] = mapped_column(sa.Uuid, index=True)
    job_id: Mapped[uuid.UUID] = mapped_column(sa.Uuid)
    attempt: Mapped[int] = mapped_column(sa.Integer)
    amount: Mapped[int] = mapped_column(sa.BigInteger)
    status: Mapped[str] = mapped_column(sa.String(16))  # open | captured | released
    release_reason: Mapped[str | None] = mapped_column(sa.String(16))
    plan: Mapped[str] = mapped_column(sa.String(64))
    priority: Mapped[int] = mapped_column(sa.Integer)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime())
    closed_at: Mapped[datetime | None] = mapped_column(UtcDateTime())


class Order(IdMixin, Base):
    __tablename__ = "orders"
    __table_args__ = (
        sa.UniqueConstraint("user_ref", "idempotency_key"),
        sa.Index("ix_orders_user_ref_created_at_id", "user_ref", "created_at", "id"),
        sa.Index("ix_orders_status_created_at", "status", "created_at"),
    )

    # The user id as a string, or "psn:<HMAC-SHA256 hex>" once erased.
    user_ref: Mapped[str] = mapped_column(sa.String(80))
    kind: Mapped[str] = mapped_column(sa.String(8))  # pack | plan
    item_id: Mapped[str] = mapped_column(sa.String(64))
    description: Mapped[str] = mapped_column(sa.String(200))
    credits: Mapped[int] = mapped_column(sa.BigInteger)
    # A pack's lot expiry, as sold (config may change before the payment).
    lot_expires_days: Mapped[int | None] = mapped_column(sa.Integer)
    amount: Mapped[int] = mapped_column(sa.BigInteger)  # minor units
    currency: Mapped[str] = mapped_column(sa.String(3))
    status: Mapped[str] = mapped_column(sa.String(24))
    idempotency_key: Mapped[str | None] = mapped_column(sa.String(200))
    request_hash: Mapped[str | None] = mapped_column(sa.String(64))
    provider: Mapped[str] = mapped_column(sa.String(16), default="stripe", server_default="stripe")
    provider_session_id: Mapped[str | None] = mapped_column(sa.String(255), index=True)
    checkout_url: Mapped[str | None] = mapped_column(sa.Text)
    payment_intent_id: Mapped[str | None] = mapped_column(sa.String(255), index=True)
    amount_refunded: Mapped[int] = mapped_column(sa.BigInteger, default=0, server_default="0")
    credits_reversed: Mapped[int] = mapped_column(sa.BigInteger, default=0, server_default="0")
    # Credits a refund or a lost dispute called for that were held by jobs at
    # the time: taken when those holds are released (a capture keeps them).
    credits_pending: Mapped[int] = mapped_column(sa.BigInteger, default=0, server_default="0")
    # The payment's dispute (chargeback): Stripe's id, its last status
    # (open, won, lost, warning_closed, prevented) and the amount lost.
    dispute_id: Mapped[str | None] = mapped_column(sa.String(255), index=True)
    dispute_status: Mapped[str | None] = mapped_column(sa.String(32))
    amount_charged_back: Mapped[int] = mapped_column(sa.BigInteger, default=0, server_default="0")
    disputed_at: Mapped[datetime | None] = mapped_column(UtcDateTime())
    dispute_closed_at: Mapped[datetime | None] = mapped_column(UtcDateTime())
    failure_reason: Mapped[str | None] = mapped_column(sa.String(200))
    created_at: Mapped[datetime] = mapped_column(UtcDateTime())
    paid_at: Mapped[datetime | None] = mapped_column(UtcDateTime())
    refunded_at: Mapped[datetime | None] = mapped_column(UtcDateTime())
    retain_until: Mapped[datetime | None] = mapped_column(UtcDateTime(), index=True)
    pseudonymised_at: Mapped[datetime | None] = mapped_column(UtcDateTime())


class Payment(IdMixin, Base):
    """One provider payment: the record the law says to keep (5 years)."""

    __tablename__ = "payments"

    order_id: Mapped[uuid.UUID] = mapped_column(sa.Uuid, index=True)
    user_ref: Mapped[str] = mapped_column(sa.String(80), index=True)
    provider: Mapped[str] = mapped_column(sa.String(16))
    provider_session_id: Mapped[str | None] = mapped_column(sa.String(255))
    payment_intent_id: Mapped[str | None] = mapped_column(sa.String(255), index=True)
    amount: Mapped[int] = mapped_column(sa.BigInteger)
    currency: Mapped[str] = mapped_column(sa.String(3))
    amount_refunded: Mapped[int] = mapped_column(sa.BigInteger, default=0, server_default="0")
    status: Mapped[str] = mapped_column(sa.String(24))  # paid | partially_refunded | refunded
    created_at: Mapped[datetime] = mapped_column(UtcDateTime())
    paid_at: Mapped[datetime] = mapped_column(UtcDateTime())
    refunded_at: Mapped[datetime | None] = mapped_column(UtcDateTime())
    retain_until: Mapped[datetime] = mapped_column(UtcDateTime(), index=True)
    pseudonymised_at: Mapped[datetime | None] = mapped_column(UtcDateTime())


class Subscription(Base):
    """A plan renewing through Stripe (services/billing/subscriptions.py)."""

    __tablename__ = "subscriptions"

    id: Mapped[str] = mapped_column(sa.String(255), primary_key=True)  # Stripe's sub_...
    # NULL: the account was erased and the subscription awaits its cancellation at Stripe.
    user_id: Mapped[uuid.UUID | None] = mapped_column(sa.Uuid, index=True)
    customer_id: Mapped[str | None] = mapped_column(sa.String(255))
    plan: Mapped[str] = mapped_column(sa.String(64))
    order_id: Mapped[uuid.UUID | None] = mapped_column(sa.Uuid)
    # Stripe's status: incomplete, active, past_due, unpaid, canceled, ...
    status: Mapped[str] = mapped_column(sa.String(32))
    cancel_at_period_end: Mapped[bool] = mapped_column(default=False,
                                                       server_default=sa.false())
    current_period_end: Mapped[datetime | None] = mapped_column(UtcDateTime())
    # A renewal failed: the plan stays until then, unless an invoice is paid.
    grace_until: Mapped[datetime | None] = mapped_column(UtcDateTime())
    last_invoice_id: Mapped[str | None] = mapped_column(sa.String(255))
    # When Stripe made the newest subscription event applied: an older one,
    # delivered late, changes nothing.
    stripe_seen_at: Mapped[datetime | None] = mapped_column(UtcDateTime())
    created_at: Mapped[datetime] = mapped_column(UtcDateTime())
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime())
    ended_at: Mapped[datetime | None] = mapped_column(UtcDateTime())


class WebhookEvent(Base):
    __tablename__ = "webhook_events"

    id: Mapped[str] = mapped_column(sa.String(255), primary_key=True)
    provider: Mapped[str] = mapped_column(sa.String(16))
    type: Mapped[str] = mapped_column(sa.String(100))
    outcome: Mapped[str] = mapped_column(sa.String(100))
    received_at: Mapped[datetime] = mapped_column(UtcDateTime(), index=True)


class ErasedAccount(Base):
    __tablename__ = "erased_accounts"

    pseudonym: Mapped[str] = mapped_column(sa.String(80), primary_key=True)
    erased_at: Mapped[datetime] = mapped_column(UtcDateTime())


# Events consumed (idempotency on event id) and events waiting to be published.
class ErasurePending(Base):
    """An erasure of the account asked for and not cancelled, as of the
    newest ``privacy.erasure_scheduled`` / ``privacy.erasure_cancelled``:
    while ``pending`` no credit is held for a job (the job is refused as
    not payable). Deleted with the account's other rows at the erasure."""

    __tablename__ = "erasure_pending"

    user_id: Mapped[uuid.UUID] = mapped_column(sa.Uuid, primary_key=True)
    pending: Mapped[bool] = mapped_column(sa.Boolean, default=True)
    changed_at: Mapped[datetime] = mapped_column(UtcDateTime())


processed_events = processed_events_table(Base.metadata)
outbox = outbox_table(Base.metadata)
