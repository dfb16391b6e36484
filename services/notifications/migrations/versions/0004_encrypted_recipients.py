"""the address each mail went to, encrypted (FIELD_ENCRYPTION_KEYS)

Existing rows are converted with the keys the service (or ``python -m
services.common.migrations notifications``) configured:
services/common/fieldcrypt.py.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-04
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from services.common import fieldcrypt
from services.common.contracts.auth import EMAIL_MAX

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

PURPOSE = {"recipient": "notifications.recipient"}


def upgrade() -> None:
    with op.batch_alter_table("notifications") as batch:
        batch.alter_column("recipient", type_=sa.Text(), existing_type=sa.String(EMAIL_MAX))
    fieldcrypt.convert_rows(op.get_bind(), "notifications", ["id"], PURPOSE,
                            fieldcrypt.encrypt_value)


def downgrade() -> None:
    fieldcrypt.convert_rows(op.get_bind(), "notifications", ["id"], PURPOSE,
                            fieldcrypt.decrypt_value)
    with op.batch_alter_table("notifications") as batch:
        batch.alter_column("recipient", type_=sa.String(EMAIL_MAX), existing_type=sa.Text())
