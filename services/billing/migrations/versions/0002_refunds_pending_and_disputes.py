"""refunds taken at hold release, disputes (chargebacks)

orders: credits_pending (a refund's or a lost dispute's credits that were
held by jobs, taken when those holds are released), the dispute's id,
status, lost amount and times; lots: frozen while their order is disputed.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-03
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from services.common.db import UtcDateTime

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("lots") as batch:
        batch.add_column(sa.Column("frozen", sa.Boolean(), server_default=sa.false(),
                                   nullable=False))
    with op.batch_alter_table("orders") as batch:
        batch.add_column(sa.Column("credits_pending", sa.BigInteger(), server_default="0",
                                   nullable=False))
        batch.add_column(sa.Column("dispute_id", sa.String(length=255), nullable=True))
        batch.add_column(sa.Column("dispute_status", sa.String(length=32), nullable=True))
        batch.add_column(sa.Column("amount_charged_back", sa.BigInteger(), server_default="0",
                                   nullable=False))
        batch.add_column(sa.Column("disputed_at", UtcDateTime(), nullable=True))
        batch.add_column(sa.Column("dispute_closed_at", UtcDateTime(), nullable=True))
        batch.create_index(batch.f("ix_orders_dispute_id"), ["dispute_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("orders") as batch:
        batch.drop_index(batch.f("ix_orders_dispute_id"))
        batch.drop_column("dispute_closed_at")
        batch.drop_column("disputed_at")
        batch.drop_column("amount_charged_back")
        batch.drop_column("dispute_status")
        batch.drop_column("dispute_id")
        batch.drop_column("credits_pending")
    with op.batch_alter_table("lots") as batch:
        batch.drop_column("frozen")
