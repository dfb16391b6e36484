from __future__ import annotations

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect

from services.common.db import make_engine
from services.common.migrations import SERVICES_DIR, alembic_config, upgrade
from services.generation.models import Base

MIGRATIONS = SERVICES_DIR / "generation" / "migrations"


def test_migration_creates_exactly_the_models_tables_on_sqlite(tmp_path):
    url = f"sqlite:///{tmp_path / 'generation.db'}"
    upgrade(MIGRATIONS, url)
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            assert compare_metadata(MigrationContext.configure(conn), Base.metadata) == []
        indexes = {i["name"] for i in inspect(engine).get_indexes("jobs")}
        assert {"ix_jobs_user_id_created_at_id", "ix_jobs_status_priority_reserved_at"} <= indexes
        command.downgrade(alembic_config(MIGRATIONS, url), "base")
        assert set(inspect(engine).get_table_names()) == {"alembic_version"}
    finally:
        engine.dispose()


def test_pending_deliveries_get_their_receiver(tmp_path):
    import uuid

    from sqlalchemy import text

    url = f"sqlite:///{tmp_path / 'generation.db'}"
    config = alembic_config(MIGRATIONS, url)
    command.upgrade(config, "0002")
    engine = make_engine(url)
    try:
        with engine.begin() as conn:
            for status, target in (("pending", "https://Hooks.Example.com/x"),
                                   ("delivered", "https://done.example.com/x")):
                conn.execute(text(
                    "INSERT INTO webhook_deliveries (id, job_id, user_id, attempt, job_status, "
                    "url, body, status, tries, next_attempt_at, created_at) VALUES (:id, :id, "
                    ":id, 1, 'succeeded', :url, '{}', :status, 0, '2026-01-01 00:00:00.000000', "
                    "'2026-01-01 00:00:00.000000')"),
                    {"id": uuid.uuid4().hex, "url": target, "status": status})
        command.upgrade(config, "0003")
        with engine.connect() as conn:
            rows = dict(conn.execute(text("SELECT status, receiver FROM webhook_deliveries")).all())
        assert rows == {"pending": "https://hooks.example.com:443", "delivered": None}
    finally:
        engine.dispose()
