"""OpenID Connect sign-in (identities, flows, one-time codes) and the age gate
(users.minimum_age_met_at)

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-04
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from services.common.db import UtcDateTime

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _user_id(nullable: bool) -> sa.Column:
    return sa.Column("user_id", sa.Uuid(), sa.ForeignKey("users.id", ondelete="CASCADE"),
                     nullable=nullable)


def upgrade() -> None:
    op.add_column("users", sa.Column("minimum_age_met_at", UtcDateTime(), nullable=True))
    op.create_table(
        "identities",
        sa.Column("id", sa.Uuid(), primary_key=True),
        _user_id(False),
        sa.Column("provider", sa.String(32), nullable=False),
        sa.Column("subject", sa.String(255), nullable=False),
        sa.Column("email", sa.String(254), nullable=True),
        sa.Column("email_verified", sa.Boolean(), server_default=sa.false(), nullable=False),
        sa.Column("created_at", UtcDateTime(), nullable=False),
        sa.UniqueConstraint("provider", "subject"),
    )
    op.create_index("ix_identities_user_id", "identities", ["user_id"])
    op.create_table(
        "oidc_flows",
        sa.Column("id", sa.Uuid(), primary_key=True),
        sa.Column("state_hash", sa.String(64), nullable=False, unique=True),
        sa.Column("provider", sa.String(32), nullable=False),
        sa.Column("nonce", sa.String(64), nullable=False),
        sa.Column("code_verifier", sa.String(128), nullable=False),
        sa.Column("redirect_uri", sa.String(2000), nullable=False),
        _user_id(True),
        sa.Column("created_at", UtcDateTime(), nullable=False),
        sa.Column("expires_at", UtcDateTime(), nullable=False),
    )
    op.create_index("ix_oidc_flows_user_id", "oidc_flows", ["user_id"])
    op.create_index("ix_oidc_flows_expires_at", "oidc_flows", ["expires_at"])
    op.create_table(
        "oidc_codes",
        sa.Column("id", sa.Uuid(), primary_key=True),
        sa.Column("code_hash", sa.String(64), nullable=False, unique=True),
        _user_id(True),
        sa.Column("provider", sa.String(32), nullable=False),
        sa.Column("subject", sa.String(255), nullable=False),
        sa.Column("email", sa.String(254), nullable=True),
        sa.Column("email_verified", sa.Boolean(), server_default=sa.false(), nullable=False),
        sa.Column("created_at", UtcDateTime(), nullable=False),
        sa.Column("expires_at", UtcDateTime(), nullable=False),
    )
    op.create_index("ix_oidc_codes_user_id", "oidc_codes", ["user_id"])
    op.create_index("ix_oidc_codes_expires_at", "oidc_codes", ["expires_at"])


def downgrade() -> None:
    op.drop_table("oidc_codes")
    op.drop_table("oidc_flows")
    op.drop_table("identities")
    op.drop_column("users", "minimum_age_met_at")
