"""initial privacy schema

Revision ID: 0001
Revises:
Create Date: 2026-11-22
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from services.common.db import UtcDateTime

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "access_logs",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("user_id", sa.Uuid(), nullable=True),
        sa.Column("at", UtcDateTime(), nullable=False),
        sa.Column("method", sa.String(length=10), nullable=False),
        sa.Column("route", sa.String(length=200), nullable=False),
        sa.Column("status", sa.Integer(), nullable=False),
        sa.Column("network", sa.String(length=64), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_access_logs")),
    )
    op.create_index(op.f("ix_access_logs_at"), "access_logs", ["at"], unique=False)
    op.create_index("ix_access_logs_user_id_at", "access_logs", ["user_id", "at"], unique=False)

    op.create_table(
        "consent_changes",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("user_id", sa.Uuid(), nullable=False),
        sa.Column("purpose", sa.String(length=32), nullable=False),
        sa.Column("granted", sa.Boolean(), nullable=False),
        sa.Column("source", sa.String(length=32), nullable=False),
        sa.Column("policy_version", sa.String(length=32), nullable=True),
        sa.Column("created_at", UtcDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_consent_changes")),
    )
    op.create_index("ix_consent_changes_user_id_created_at", "consent_changes", ["user_id", "created_at"], unique=False)

    op.create_table(
        "erased_subjects",
        sa.Column("subject", sa.String(length=80), nullable=False),
        sa.Column("erased_at", UtcDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("subject", name=op.f("pk_erased_subjects")),
    )
    op.create_table(
        "outbox",
        sa.Column("event_id", sa.String(length=36), nullable=False),
        sa.Column("routing_key", sa.String(length=200), nullable=False),
        sa.Column("body", sa.Text(), nullable=False),
        sa.Column("headers", sa.Text(), nullable=False),
        sa.Column("created_at", UtcDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("event_id", name=op.f("pk_outbox")),
    )
    op.create_index(op.f("ix_outbox_created_at"), "outbox", ["created_at"], unique=False)

    op.create_table(
        "policy_acceptances",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("user_id", sa.Uuid(), nullable=False),
        sa.Column("version", sa.String(length=32), nullable=False),
        sa.Column("accepted_at", UtcDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_policy_acceptances")),
        sa.UniqueConstraint("user_id", "version", name=op.f("uq_policy_acceptances_user_id_version")),
    )
    op.create_index(op.f("ix_policy_acceptances_user_id"), "policy_acceptances", ["user_id"], unique=False)

    op.create_table(
        "policy_versions",
        sa.Column("version", sa.String(length=32), nullable=False),
        sa.Column("material", sa.Boolean(), nullable=False),
        sa.Column("summary", sa.Text(), nullable=False),
        sa.Column("published_at", UtcDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("version", name=op.f("pk_policy_versions")),
    )
    op.create_index(op.f("ix_policy_versions_published_at"), "policy_versions", ["published_at"], unique=False)

    op.create_table(
        "privacy_requests",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("user_id", sa.Uuid(), nullable=True),
        sa.Column("type", sa.String(length=20), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("open_type", sa.String(length=20), nullable=True),
        sa.Column("phase", sa.Integer(), nullable=False),
        sa.Column("created_at", UtcDateTime(), nullable=False),
        sa.Column("due_at", UtcDateTime(), nullable=False),
        sa.Column("starts_at", UtcDateTime(), nullable=True),
        sa.Column("started_at", UtcDateTime(), nullable=True),
        sa.Column("completed_at", UtcDateTime(), nullable=True),
        sa.Column("cancelled_at", UtcDateTime(), nullable=True),
        sa.Column("failed_at", UtcDateTime(), nullable=True),
        sa.Column("export_object_id", sa.Uuid(), nullable=True),
        sa.Column("export_expires_at", UtcDateTime(), nullable=True),
        sa.Column("export_size", sa.BigInteger(), nullable=True),
        sa.Column("assembly_attempts", sa.Integer(), nullable=False),
        sa.Column("assembling_until", UtcDateTime(), nullable=True),
        sa.Column("last_error", sa.String(length=500), nullable=True),
        sa.Column("updated_at", UtcDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_privacy_requests")),
        sa.UniqueConstraint("user_id", "open_type", name=op.f("uq_privacy_requests_user_id_open_type")),
    )
    op.create_index("ix_privacy_requests_status_due_at", "privacy_requests", ["status", "due_at"], unique=False)
    op.create_index("ix_privacy_requests_user_id_created_at_id", "privacy_requests", ["user_id", "created_at", "id"], unique=False)

    op.create_table(
        "request_log",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("request_id", sa.Uuid(), nullable=False),
        sa.Column("at", UtcDateTime(), nullable=False),
        sa.Column("action", sa.String(length=40), nullable=False),
        sa.Column("service", sa.String(length=32), nullable=True),
        sa.Column("detail", sa.String(length=500), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_request_log")),
    )
    op.create_index(op.f("ix_request_log_request_id"), "request_log", ["request_id"], unique=False)

    op.create_table(
        "restrictions",
        sa.Column("user_id", sa.Uuid(), nullable=False),
        sa.Column("restricted", sa.Boolean(), nullable=False),
        sa.Column("changed_at", UtcDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("user_id", name=op.f("pk_restrictions")),
    )
    op.create_table(
        "request_parts",
        sa.Column("request_id", sa.Uuid(), nullable=False),
        sa.Column("service", sa.String(length=32), nullable=False),
        sa.Column("phase", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("published_at", UtcDateTime(), nullable=True),
        sa.Column("completed_at", UtcDateTime(), nullable=True),
        sa.Column("started_at", UtcDateTime(), nullable=True),
        sa.Column("finished_at", UtcDateTime(), nullable=True),
        sa.Column("rows_deleted", sa.BigInteger(), nullable=True),
        sa.Column("rows_pseudonymised", sa.BigInteger(), nullable=True),
        sa.Column("objects_deleted", sa.BigInteger(), nullable=True),
        sa.Column("bytes_deleted", sa.BigInteger(), nullable=True),
        sa.Column("tables", sa.JSON(), nullable=True),
        sa.Column("data", sa.Text(), nullable=True),
        sa.Column("object_id", sa.Uuid(), nullable=True),
        sa.Column("about", sa.Text(), nullable=True),
        sa.Column("withheld", sa.JSON(), nullable=True),
        sa.ForeignKeyConstraint(["request_id"], ["privacy_requests.id"], name=op.f("fk_request_parts_request_id_privacy_requests"), ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("request_id", "service", name=op.f("pk_request_parts")),
    )
    op.create_index("ix_request_parts_status_published_at", "request_parts", ["status", "published_at"], unique=False)



def downgrade() -> None:
    op.drop_index("ix_request_parts_status_published_at", table_name="request_parts")

    op.drop_table("request_parts")
    op.drop_table("restrictions")
    op.drop_index(op.f("ix_request_log_request_id"), table_name="request_log")

    op.drop_table("request_log")
    op.drop_index("ix_privacy_requests_user_id_created_at_id", table_name="privacy_requests")
    op.drop_index("ix_privacy_requests_status_due_at", table_name="privacy_requests")

    op.drop_table("privacy_requests")
    op.drop_index(op.f("ix_policy_versions_published_at"), table_name="policy_versions")

    op.drop_table("policy_versions")
    op.drop_index(op.f("ix_policy_acceptances_user_id"), table_name="policy_acceptances")

    op.drop_table("policy_acceptances")
    op.drop_index(op.f("ix_outbox_created_at"), table_name="outbox")

    op.drop_table("outbox")
    op.drop_table("erased_subjects")
    op.drop_index("ix_consent_changes_user_id_created_at", table_name="consent_changes")

    op.drop_table("consent_changes")
    op.drop_index("ix_access_logs_user_id_at", table_name="access_logs")
    op.drop_index(op.f("ix_access_logs_at"), table_name="access_logs")

    op.drop_table("access_logs")
