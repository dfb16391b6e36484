from __future__ import annotations

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect

from services.billing.models import Base
from services.common.db import make_engine
from services.common.migrations import SERVICES_DIR, alembic_config, upgrade

MIGRATIONS = SERVICES_DIR / "billing" / "migrations"


def test_migration_creates_exactly_the_models_tables_on_sqlite(tmp_path):
    url = f"sqlite:///{tmp_path / 'billing.db'}"
    upgrade(MIGRATIONS, url)
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            assert compare_metadata(MigrationContext.configure(conn), Base.metadata) == []
        uniques = {u["name"] for u in inspect(engine).get_unique_constraints("ledger_entries")}
        assert {"uq_ledger_entries_idempotency_key", "uq_ledger_entries_user_id_seq"} <= uniques
        command.downgrade(alembic_config(MIGRATIONS, url), "base")
        assert set(inspect(engine).get_table_names()) == {"alembic_version"}
    finally:
        engine.dispose()
