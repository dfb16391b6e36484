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

from services.common.contracts.auth import EMAIL_MAX
from services.common.migrations import decrypt_columns, encrypt_columns

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

COLUMNS = {"recipient": ("notifications.recipient", sa.String(EMAIL_MAX))}


def upgrade() -> None:
    encrypt_columns("notifications", COLUMNS)


def downgrade() -> None:
    decrypt_columns("notifications", COLUMNS)
