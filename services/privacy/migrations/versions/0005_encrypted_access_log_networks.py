"""access logs' networks encrypted (FIELD_ENCRYPTION_KEYS)

Existing rows are converted with the keys the service (or ``python -m
services.common.migrations privacy``) configured:
services/common/fieldcrypt.py.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-04
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from services.common import fieldcrypt

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

PURPOSE = {"network": "access_logs.network"}


def upgrade() -> None:
    with op.batch_alter_table("access_logs") as batch:
        batch.alter_column("network", type_=sa.Text(), existing_type=sa.String(64))
    fieldcrypt.convert_rows(op.get_bind(), "access_logs", ["id"], PURPOSE,
                            fieldcrypt.encrypt_value)


def downgrade() -> None:
    fieldcrypt.convert_rows(op.get_bind(), "access_logs", ["id"], PURPOSE,
                            fieldcrypt.decrypt_value)
    with op.batch_alter_table("access_logs") as batch:
        batch.alter_column("network", type_=sa.String(64), existing_type=sa.Text())
