"""erased accounts (digests): no row is written for an erased account

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-03
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from services.common.db import UtcDateTime

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "erased_accounts",
        sa.Column("subject", sa.String(length=64), nullable=False),
        sa.Column("erased_at", UtcDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("subject", name=op.f("pk_erased_accounts")),
    )


def downgrade() -> None:
    op.drop_table("erased_accounts")
