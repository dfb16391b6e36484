"""initial billing schema

Revision ID: 0001
Revises:
Create Date: 2026-11-22
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from services.common.db import UtcDateTime

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table("accounts",
        sa.Column("user_id", sa.Uuid(), nullable=False),
        sa.Column("plan", sa.String(length=64), nullable=False),
        sa.Column("plan_expires_at", UtcDateTime(), nullable=True),
        sa.Column("available", sa.BigInteger(), nullable=False),
        sa.Column("held", sa.BigInteger(), nullable=False),
        sa.Column("entry_seq", sa.Integer(), nullable=False),
        sa.Column("granted_period", sa.String(length=7), nullable=True),
        sa.Column("created_at", UtcDateTime(), nullable=False),
        sa.Column("updated_at", UtcDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("user_id", name=op.f("pk_accounts"))
    )
    op.create_index(op.f("ix_accounts_plan_expires_at"), "accounts", ["plan_expires_at"], unique=False)
    op.create_table("erased_accounts",
        sa.Column("pseudonym", sa.String(length=80), nullable=False),
        sa.Column("erased_at", UtcDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("pseudonym", name=op.f("pk_erased_accounts"))
    )
    op.create_table("holds",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("user_id", sa.Uuid(), nullable=False),
        sa.Column("job_id", sa.Uuid(), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("amount", sa.BigInteger(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("release_reason", sa.String(length=16), nullable=True),
        sa.Column("plan", sa.String(length=64), nullable=False),
        sa.Column("priority", sa.Integer(), nullable=False),
        sa.Column("created_at", UtcDateTime(), nullable=False),
        sa.Column("closed_at", UtcDateTime(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_holds")),
        sa.UniqueConstraint("job_id", "attempt", name=op.f("uq_holds_job_id_attempt"))
    )
    op.create_index("ix_holds_status_created_at", "holds", ["status", "created_at"], unique=False)
    op.create_index(op.f("ix_holds_user_id"), "holds", ["user_id"], unique=False)
    op.create_table("ledger_entries",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("user_id", sa.Uuid(), nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("idempotency_key", sa.String(length=255), nullable=False),
        sa.Column("amount", sa.BigInteger(), nullable=False),
        sa.Column("held_change", sa.BigInteger(), nullable=False),
        sa.Column("balance_after", sa.BigInteger(), nullable=False),
        sa.Column("held_after", sa.BigInteger(), nullable=False),
        sa.Column("job_id", sa.Uuid(), nullable=True),
        sa.Column("attempt", sa.Integer(), nullable=True),
        sa.Column("hold_id", sa.Uuid(), nullable=True),
        sa.Column("lot_id", sa.Uuid(), nullable=True),
        sa.Column("order_id", sa.Uuid(), nullable=True),
        sa.Column("expires_at", UtcDateTime(), nullable=True),
        sa.Column("reason", sa.String(length=500), nullable=True),
        sa.Column("created_at", UtcDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_ledger_entries")),
        sa.UniqueConstraint("idempotency_key", name=op.f("uq_ledger_entries_idempotency_key")),
        sa.UniqueConstraint("user_id", "seq", name=op.f("uq_ledger_entries_user_id_seq"))
    )
    op.create_index(op.f("ix_ledger_entries_job_id"), "ledger_entries", ["job_id"], unique=False)
    op.create_index("ix_ledger_entries_user_id_created_at", "ledger_entries", ["user_id", "created_at"], unique=False)
    op.create_table("lot_movements",
        sa.Column("entry_id", sa.Uuid(), nullable=False),
        sa.Column("lot_id", sa.Uuid(), nullable=False),
        sa.Column("user_id", sa.Uuid(), nullable=False),
        sa.Column("amount", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("entry_id", "lot_id", name=op.f("pk_lot_movements"))
    )
    op.create_index(op.f("ix_lot_movements_lot_id"), "lot_movements", ["lot_id"], unique=False)
    op.create_index(op.f("ix_lot_movements_user_id"), "lot_movements", ["user_id"], unique=False)
    op.create_table("lots",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("user_id", sa.Uuid(), nullable=False),
        sa.Column("source", sa.String(length=16), nullable=False),
        sa.Column("credits", sa.BigInteger(), nullable=False),
        sa.Column("remaining", sa.BigInteger(), nullable=False),
        sa.Column("expires_at", UtcDateTime(), nullable=True),
        sa.Column("order_id", sa.Uuid(), nullable=True),
        sa.Column("created_at", UtcDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_lots"))
    )
    op.create_index(op.f("ix_lots_order_id"), "lots", ["order_id"], unique=False)
    op.create_index("ix_lots_user_id_expires_at", "lots", ["user_id", "expires_at"], unique=False)
    op.create_table("orders",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("user_ref", sa.String(length=80), nullable=False),
        sa.Column("kind", sa.String(length=8), nullable=False),
        sa.Column("item_id", sa.String(length=64), nullable=False),
        sa.Column("description", sa.String(length=200), nullable=False),
        sa.Column("credits", sa.BigInteger(), nullable=False),
        sa.Column("lot_expires_days", sa.Integer(), nullable=True),
        sa.Column("amount", sa.BigInteger(), nullable=False),
        sa.Column("currency", sa.String(length=3), nullable=False),
        sa.Column("status", sa.String(length=24), nullable=False),
        sa.Column("idempotency_key", sa.String(length=200), nullable=True),
        sa.Column("request_hash", sa.String(length=64), nullable=True),
        sa.Column("provider", sa.String(length=16), server_default="stripe", nullable=False),
        sa.Column("provider_session_id", sa.String(length=255), nullable=True),
        sa.Column("checkout_url", sa.Text(), nullable=True),
        sa.Column("payment_intent_id", sa.String(length=255), nullable=True),
        sa.Column("amount_refunded", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("credits_reversed", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("failure_reason", sa.String(length=200), nullable=True),
        sa.Column("created_at", UtcDateTime(), nullable=False),
        sa.Column("paid_at", UtcDateTime(), nullable=True),
        sa.Column("refunded_at", UtcDateTime(), nullable=True),
        sa.Column("retain_until", UtcDateTime(), nullable=True),
        sa.Column("pseudonymised_at", UtcDateTime(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_orders")),
        sa.UniqueConstraint("user_ref", "idempotency_key", name=op.f("uq_orders_user_ref_idempotency_key"))
    )
    op.create_index(op.f("ix_orders_payment_intent_id"), "orders", ["payment_intent_id"], unique=False)
    op.create_index(op.f("ix_orders_provider_session_id"), "orders", ["provider_session_id"], unique=False)
    op.create_index(op.f("ix_orders_retain_until"), "orders", ["retain_until"], unique=False)
    op.create_index("ix_orders_status_created_at", "orders", ["status", "created_at"], unique=False)
    op.create_index("ix_orders_user_ref_created_at_id", "orders", ["user_ref", "created_at", "id"], unique=False)
    op.create_table("outbox",
        sa.Column("event_id", sa.String(length=36), nullable=False),
        sa.Column("routing_key", sa.String(length=200), nullable=False),
        sa.Column("body", sa.Text(), nullable=False),
        sa.Column("headers", sa.Text(), nullable=False),
        sa.Column("created_at", UtcDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("event_id", name=op.f("pk_outbox"))
    )
    op.create_index(op.f("ix_outbox_created_at"), "outbox", ["created_at"], unique=False)
    op.create_table("payments",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("order_id", sa.Uuid(), nullable=False),
        sa.Column("user_ref", sa.String(length=80), nullable=False),
        sa.Column("provider", sa.String(length=16), nullable=False),
        sa.Column("provider_session_id", sa.String(length=255), nullable=True),
        sa.Column("payment_intent_id", sa.String(length=255), nullable=True),
        sa.Column("amount", sa.BigInteger(), nullable=False),
        sa.Column("currency", sa.String(length=3), nullable=False),
        sa.Column("amount_refunded", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("status", sa.String(length=24), nullable=False),
        sa.Column("created_at", UtcDateTime(), nullable=False),
        sa.Column("paid_at", UtcDateTime(), nullable=False),
        sa.Column("refunded_at", UtcDateTime(), nullable=True),
        sa.Column("retain_until", UtcDateTime(), nullable=False),
        sa.Column("pseudonymised_at", UtcDateTime(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_payments"))
    )
    op.create_index(op.f("ix_payments_order_id"), "payments", ["order_id"], unique=False)
    op.create_index(op.f("ix_payments_payment_intent_id"), "payments", ["payment_intent_id"], unique=False)
    op.create_index(op.f("ix_payments_retain_until"), "payments", ["retain_until"], unique=False)
    op.create_index(op.f("ix_payments_user_ref"), "payments", ["user_ref"], unique=False)
    op.create_table("processed_events",
        sa.Column("event_id", sa.String(length=36), nullable=False),
        sa.Column("consumer", sa.String(length=200), nullable=False),
        sa.Column("processed_at", UtcDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("event_id", "consumer", name=op.f("pk_processed_events"))
    )
    op.create_table("webhook_events",
        sa.Column("id", sa.String(length=255), nullable=False),
        sa.Column("provider", sa.String(length=16), nullable=False),
        sa.Column("type", sa.String(length=100), nullable=False),
        sa.Column("outcome", sa.String(length=100), nullable=False),
        sa.Column("received_at", UtcDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_webhook_events"))
    )
    op.create_index(op.f("ix_webhook_events_received_at"), "webhook_events", ["received_at"], unique=False)


def downgrade() -> None:
    op.drop_index(op.f("ix_webhook_events_received_at"), table_name="webhook_events")
    op.drop_table("webhook_events")
    op.drop_table("processed_events")
    op.drop_index(op.f("ix_payments_user_ref"), table_name="payments")
    op.drop_index(op.f("ix_payments_retain_until"), table_name="payments")
    op.drop_index(op.f("ix_payments_payment_intent_id"), table_name="payments")
    op.drop_index(op.f("ix_payments_order_id"), table_name="payments")
    op.drop_table("payments")
    op.drop_index(op.f("ix_outbox_created_at"), table_name="outbox")
    op.drop_table("outbox")
    op.drop_index("ix_orders_user_ref_created_at_id", table_name="orders")
    op.drop_index("ix_orders_status_created_at", table_name="orders")
    op.drop_index(op.f("ix_orders_retain_until"), table_name="orders")
    op.drop_index(op.f("ix_orders_provider_session_id"), table_name="orders")
    op.drop_index(op.f("ix_orders_payment_intent_id"), table_name="orders")
    op.drop_table("orders")
    op.drop_index("ix_lots_user_id_expires_at", table_name="lots")
    op.drop_index(op.f("ix_lots_order_id"), table_name="lots")
    op.drop_table("lots")
    op.drop_index(op.f("ix_lot_movements_user_id"), table_name="lot_movements")
    op.drop_index(op.f("ix_lot_movements_lot_id"), table_name="lot_movements")
    op.drop_table("lot_movements")
    op.drop_index("ix_ledger_entries_user_id_created_at", table_name="ledger_entries")
    op.drop_index(op.f("ix_ledger_entries_job_id"), table_name="ledger_entries")
    op.drop_table("ledger_entries")
    op.drop_index(op.f("ix_holds_user_id"), table_name="holds")
    op.drop_index("ix_holds_status_created_at", table_name="holds")
    op.drop_table("holds")
    op.drop_table("erased_accounts")
    op.drop_index(op.f("ix_accounts_plan_expires_at"), table_name="accounts")
    op.drop_table("accounts")
