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

from services.common.migrations import decrypt_columns, encrypt_columns

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

COLUMNS = {"network": ("access_logs.network", sa.String(64))}


def upgrade() -> None:
    encrypt_columns("access_logs", COLUMNS)


def downgrade() -> None:
    decrypt_columns("access_logs", COLUMNS)
