"""webhook receivers: the receiver (origin) of each delivery, per-receiver backoff

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-03
"""

from collections.abc import Sequence
from urllib.parse import urlsplit

import sqlalchemy as sa
from alembic import op

from services.common.db import UtcDateTime

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _origin(url: str) -> str | None:
    # a copy of services.generation.webhooks.receiver_of as it was: a migration
    # must not change when the code does
    try:
        parts = urlsplit(url)
        scheme = parts.scheme.lower()
        port = parts.port or (443 if scheme == "https" else 80)
    except ValueError:
        return None
    host = (parts.hostname or "").rstrip(".").lower()
    return f"{scheme}://{host}:{port}"[:300] if host else None


def upgrade() -> None:
    with op.batch_alter_table("webhook_deliveries", schema=None) as batch_op:
        batch_op.add_column(sa.Column("receiver", sa.String(length=300), nullable=True))
    deliveries = sa.table("webhook_deliveries", sa.column("id", sa.Uuid()),
                          sa.column("url", sa.String()), sa.column("receiver", sa.String()),
                          sa.column("status", sa.String()))
    bind = op.get_bind()
    pending = bind.execute(sa.select(deliveries.c.id, deliveries.c.url)
                           .where(deliveries.c.status == "pending")).all()
    for delivery_id, url in pending:
        bind.execute(sa.update(deliveries).where(deliveries.c.id == delivery_id)
                     .values(receiver=_origin(url)))
    op.create_table(
        "webhook_receivers",
        sa.Column("receiver", sa.String(length=300), nullable=False),
        sa.Column("failures", sa.Integer(), nullable=False),
        sa.Column("blocked_until", UtcDateTime(timezone=True), nullable=True),
        sa.Column("last_error", sa.String(length=500), nullable=True),
        sa.Column("updated_at", UtcDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("receiver", name=op.f("pk_webhook_receivers")),
    )


def downgrade() -> None:
    op.drop_table("webhook_receivers")
    with op.batch_alter_table("webhook_deliveries", schema=None) as batch_op:
        batch_op.drop_column("receiver")
