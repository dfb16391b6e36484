"""erasure grace period: the cancel link's token and the credentials' revocation

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
    with op.batch_alter_table("privacy_requests") as batch:
        batch.add_column(sa.Column("cancel_token_hash", sa.String(length=64), nullable=True))
        batch.add_column(sa.Column("revoked_at", UtcDateTime(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("privacy_requests") as batch:
        batch.drop_column("revoked_at")
        batch.drop_column("cancel_token_hash")
