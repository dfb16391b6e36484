"""the outbox's event bodies encrypted (FIELD_ENCRYPTION_KEYS)

Events can carry an address or a name; a body waiting in the outbox is now
stored encrypted like a personal field (services/common/outbox.py). Rows left
unpublished are converted with the keys the service configured.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-04
"""

from collections.abc import Sequence

from services.common.migrations import decrypt_outbox, encrypt_outbox

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    encrypt_outbox()


def downgrade() -> None:
    decrypt_outbox()
