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
