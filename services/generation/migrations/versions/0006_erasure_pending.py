"""erasure pending (privacy: no new job while an erasure of the account is pending)

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-03
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from services.common.db import UtcDateTime

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "erasure_pending",
        sa.Column("user_id", sa.Uuid(), nullable=False),
        sa.Column("pending", sa.Boolean(), nullable=False),
        sa.Column("changed_at", UtcDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("user_id", name=op.f("pk_erasure_pending")),
    )


def downgrade() -> None:
    op.drop_table("erasure_pending")
