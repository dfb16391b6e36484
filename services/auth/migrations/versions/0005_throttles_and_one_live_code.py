"""throttles (atomic attempt counting) replace login_failures and login_lockouts;
one live verification code per account and address

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-03
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from services.common.db import UtcDateTime

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

LIVE = "used_at IS NULL AND superseded_at IS NULL"


def upgrade() -> None:
    op.create_table(
        "throttles",
        sa.Column("subject", sa.String(length=64), nullable=False),
        sa.Column("attempts", sa.Integer(), server_default="0", nullable=False),
        sa.Column("window_started_at", UtcDateTime(), nullable=False),
        sa.Column("locked_until", UtcDateTime(), nullable=True),
        sa.PrimaryKeyConstraint("subject", name=op.f("pk_throttles")),
    )
    # Failures and lockouts in flight are forgotten: at worst a locked
    # subject gets its budget back once, at the upgrade.
    op.drop_index("ix_login_failures_subject_created_at", table_name="login_failures")
    op.drop_table("login_failures")
    op.drop_index("ix_login_lockouts_subject_locked_until", table_name="login_lockouts")
    op.drop_table("login_lockouts")
    # Codes left live side by side by earlier versions: keep the newest of each
    # account and address.
    op.execute(sa.text(f"""
        UPDATE email_verifications SET superseded_at = created_at
        WHERE {LIVE} AND EXISTS (
            SELECT 1 FROM email_verifications newer
            WHERE newer.user_id = email_verifications.user_id
              AND newer.email = email_verifications.email
              AND newer.used_at IS NULL AND newer.superseded_at IS NULL
              AND (newer.created_at > email_verifications.created_at
                   OR (newer.created_at = email_verifications.created_at
                       AND newer.id > email_verifications.id)))
    """))
    op.create_index("uq_email_verifications_live", "email_verifications", ["user_id", "email"],
                    unique=True, postgresql_where=sa.text(LIVE), sqlite_where=sa.text(LIVE))


def downgrade() -> None:
    op.drop_index("uq_email_verifications_live", table_name="email_verifications",
                  postgresql_where=sa.text(LIVE), sqlite_where=sa.text(LIVE))
    op.create_table(
        "login_lockouts",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("subject", sa.String(length=64), nullable=False),
        sa.Column("locked_until", UtcDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_login_lockouts")),
    )
    op.create_index("ix_login_lockouts_subject_locked_until", "login_lockouts",
                    ["subject", "locked_until"], unique=False)
    op.create_table(
        "login_failures",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("subject", sa.String(length=64), nullable=False),
        sa.Column("created_at", UtcDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_login_failures")),
    )
    op.create_index("ix_login_failures_subject_created_at", "login_failures",
                    ["subject", "created_at"], unique=False)
    op.drop_table("throttles")
