"""breach incidents, their affected subjects and audit log

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-03
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from services.common.db import UtcDateTime

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "breach_incidents",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("summary", sa.Text(), nullable=False),
        sa.Column("categories", sa.JSON(), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("detected_at", UtcDateTime(), nullable=False),
        sa.Column("opened_at", UtcDateTime(), nullable=False),
        sa.Column("deadline_at", UtcDateTime(), nullable=False),
        sa.Column("window_from", UtcDateTime(), nullable=True),
        sa.Column("window_to", UtcDateTime(), nullable=True),
        sa.Column("affected_at", UtcDateTime(), nullable=True),
        sa.Column("affected_count", sa.Integer(), nullable=False),
        sa.Column("records_count", sa.BigInteger(), nullable=False),
        sa.Column("sources", sa.JSON(), nullable=True),
        sa.Column("notified_at", UtcDateTime(), nullable=True),
        sa.Column("reported_at", UtcDateTime(), nullable=True),
        sa.Column("report", sa.JSON(), nullable=True),
        sa.Column("updated_at", UtcDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_breach_incidents")),
    )
    op.create_index("ix_breach_incidents_state_detected_at", "breach_incidents",
                    ["state", "detected_at"])
    op.create_table(
        "breach_subjects",
        sa.Column("incident_id", sa.Uuid(), nullable=False),
        sa.Column("subject", sa.String(length=80), nullable=False),
        sa.Column("user_id", sa.Uuid(), nullable=True),
        sa.Column("sources", sa.JSON(), nullable=False),
        sa.Column("records", sa.Integer(), nullable=False),
        sa.Column("notice", sa.String(length=16), nullable=False),
        sa.Column("notice_at", UtcDateTime(), nullable=True),
        sa.ForeignKeyConstraint(["incident_id"], ["breach_incidents.id"],
                                name=op.f("fk_breach_subjects_incident_id_breach_incidents")),
        sa.PrimaryKeyConstraint("incident_id", "subject", name=op.f("pk_breach_subjects")),
    )
    op.create_index("ix_breach_subjects_incident_id_notice", "breach_subjects",
                    ["incident_id", "notice"])
    op.create_table(
        "breach_log",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("incident_id", sa.Uuid(), nullable=False),
        sa.Column("at", UtcDateTime(), nullable=False),
        sa.Column("action", sa.String(length=40), nullable=False),
        sa.Column("detail", sa.String(length=500), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_breach_log")),
    )
    op.create_index(op.f("ix_breach_log_incident_id"), "breach_log", ["incident_id"])


def downgrade() -> None:
    op.drop_index(op.f("ix_breach_log_incident_id"), table_name="breach_log")
    op.drop_table("breach_log")
    op.drop_index("ix_breach_subjects_incident_id_notice", table_name="breach_subjects")
    op.drop_table("breach_subjects")
    op.drop_index("ix_breach_incidents_state_detected_at", table_name="breach_incidents")
    op.drop_table("breach_incidents")
