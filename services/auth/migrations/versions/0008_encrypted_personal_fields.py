"""personal fields encrypted (FIELD_ENCRYPTION_KEYS); addresses found by a
blind index (FIELD_INDEX_KEY)

Existing rows are converted with the keys the service (or ``python -m
services.common.migrations auth``) configured: services/common/fieldcrypt.py.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-04
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from services.common import fieldcrypt
from services.common.contracts.auth import BIO_MAX, DISPLAY_NAME_MAX, EMAIL_MAX
from services.common.migrations import decrypt_columns, encrypt_columns

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

LIVE = "used_at IS NULL AND superseded_at IS NULL"
# table -> {column: (purpose, type before)}
FIELDS = {
    "users": {"email": ("users.email", sa.String(EMAIL_MAX)),
              "display_name": ("users.display_name", sa.String(DISPLAY_NAME_MAX)),
              "bio": ("users.bio", sa.String(BIO_MAX))},
    "email_verifications": {"email": ("email_verifications.email", sa.String(EMAIL_MAX))},
    "sessions": {"user_agent": ("sessions.user_agent", sa.String(300)),
                 "network": ("sessions.network", sa.String(64))},
    "account_changes": {"changes": ("account_changes.changes", sa.JSON())},
    # the addresses OpenID providers gave (0007)
    "identities": {"email": ("identities.email", sa.String(EMAIL_MAX))},
    "oidc_codes": {"email": ("oidc_codes.email", sa.String(EMAIL_MAX))},
}


def _fill_email_index(table: str) -> None:
    rows = sa.table(table, sa.column("id"), sa.column("email"), sa.column("email_index"))
    bind = op.get_bind()
    for row_id, email in bind.execute(sa.select(rows.c.id, rows.c.email)).all():
        bind.execute(sa.update(rows).where(rows.c.id == row_id)
                     .values(email_index=fieldcrypt.email_index(email)))


def upgrade() -> None:
    op.drop_index("uq_email_verifications_live", table_name="email_verifications",
                  postgresql_where=sa.text(LIVE), sqlite_where=sa.text(LIVE))
    op.drop_index("ix_email_verifications_email", table_name="email_verifications")
    for table in ("users", "email_verifications"):
        with op.batch_alter_table(table) as batch:
            batch.add_column(sa.Column("email_index", sa.String(64), nullable=True))
            if table == "users":
                batch.drop_constraint("uq_users_email", type_="unique")
        _fill_email_index(table)
    for table, columns in FIELDS.items():
        encrypt_columns(table, columns)
    with op.batch_alter_table("users") as batch:
        batch.alter_column("email_index", existing_type=sa.String(64), nullable=False)
        batch.create_unique_constraint("uq_users_email_index", ["email_index"])
    with op.batch_alter_table("email_verifications") as batch:
        batch.alter_column("email_index", existing_type=sa.String(64), nullable=False)
    op.create_index("ix_email_verifications_email_index", "email_verifications",
                    ["email_index"])
    op.create_index("uq_email_verifications_live", "email_verifications",
                    ["user_id", "email_index"], unique=True,
                    postgresql_where=sa.text(LIVE), sqlite_where=sa.text(LIVE))


def downgrade() -> None:
    op.drop_index("uq_email_verifications_live", table_name="email_verifications",
                  postgresql_where=sa.text(LIVE), sqlite_where=sa.text(LIVE))
    op.drop_index("ix_email_verifications_email_index", table_name="email_verifications")
    for table, columns in FIELDS.items():
        decrypt_columns(table, columns)
    with op.batch_alter_table("users") as batch:
        batch.drop_constraint("uq_users_email_index", type_="unique")
        batch.drop_column("email_index")
        batch.create_unique_constraint("uq_users_email", ["email"])
    with op.batch_alter_table("email_verifications") as batch:
        batch.drop_column("email_index")
    op.create_index("ix_email_verifications_email", "email_verifications", ["email"])
    op.create_index("uq_email_verifications_live", "email_verifications", ["user_id", "email"],
                    unique=True, postgresql_where=sa.text(LIVE), sqlite_where=sa.text(LIVE))
