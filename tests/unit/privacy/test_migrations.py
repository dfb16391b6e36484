"""The privacy service's migration builds exactly its models' tables, and
notifications' privacy migration (marketing preferences, outbox) too."""

from __future__ import annotations

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect

from services.common.db import make_engine
from services.common.migrations import SERVICES_DIR, alembic_config, upgrade
from services.notifications.models import Base as NotificationsBase
from services.privacy.models import Base as PrivacyBase


@pytest.mark.parametrize("service, metadata", [
    ("privacy", PrivacyBase.metadata), ("notifications", NotificationsBase.metadata)])
def test_migrations_create_exactly_the_models_tables(tmp_path, service, metadata):
    url = f"sqlite:///{tmp_path / service}.db"
    migrations = SERVICES_DIR / service / "migrations"
    upgrade(migrations, url)
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            assert compare_metadata(MigrationContext.configure(conn), metadata) == []
        command.downgrade(alembic_config(migrations, url), "base")
        assert set(inspect(engine).get_table_names()) == {"alembic_version"}
    finally:
        engine.dispose()
