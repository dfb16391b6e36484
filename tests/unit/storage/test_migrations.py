from __future__ import annotations

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect

from services.common.db import make_engine
from services.common.migrations import SERVICES_DIR, alembic_config, upgrade
from services.storage.models import Base

MIGRATIONS = SERVICES_DIR / "storage" / "migrations"


def test_migration_creates_exactly_the_models_tables_on_sqlite(tmp_path):
    url = f"sqlite:///{tmp_path / 'storage.db'}"
    upgrade(MIGRATIONS, url)
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            assert compare_metadata(MigrationContext.configure(conn), Base.metadata) == []
        indexes = {i["name"] for i in inspect(engine).get_indexes("objects")}
        assert {"ix_objects_owner_id_created_at_id", "ix_objects_expires_at_live"} <= indexes
        command.downgrade(alembic_config(MIGRATIONS, url), "base")
        assert set(inspect(engine).get_table_names()) == {"alembic_version"}
    finally:
        engine.dispose()


def test_objects_public_before_opaque_ids_are_made_private(tmp_path):
    """Their public links named the owner; they get no public copy, so they
    are private again until their owner publishes them anew."""
    import uuid as uuid_module

    from sqlalchemy import text

    url = f"sqlite:///{tmp_path / 'storage.db'}"
    command.upgrade(alembic_config(MIGRATIONS, url), "0001")
    engine = make_engine(url)
    try:
        with engine.begin() as conn:
            for visibility in ("public", "private"):
                oid = uuid_module.uuid4()
                conn.execute(text(
                    "INSERT INTO objects (id, owner_id, kind, status, content_type, size, sha256, "
                    "visibility, key, created_at) VALUES (:id, :owner, 'upload', 'committed', "
                    "'image/png', 1, :sha, :visibility, :key, '2026-01-01 00:00:00')"),
                    {"id": oid.hex, "owner": uuid_module.uuid4().hex, "sha": "0" * 64,
                     "visibility": visibility, "key": f"objects/x/{oid}"})
        upgrade(MIGRATIONS, url)
        with engine.connect() as conn:
            rows = conn.execute(text("SELECT visibility, public_id FROM objects")).all()
        assert sorted(rows) == [("private", None), ("private", None)]
    finally:
        engine.dispose()
