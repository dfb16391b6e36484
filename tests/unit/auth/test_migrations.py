from __future__ import annotations

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect

from services.auth.models import Base
from services.common.db import make_engine
from services.common.migrations import SERVICES_DIR, alembic_config, upgrade

MIGRATIONS = SERVICES_DIR / "auth" / "migrations"


def test_migration_creates_exactly_the_models_tables_on_sqlite(tmp_path):
    url = f"sqlite:///{tmp_path / 'auth.db'}"
    upgrade(MIGRATIONS, url)
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            assert compare_metadata(MigrationContext.configure(conn), Base.metadata) == []
        command.downgrade(alembic_config(MIGRATIONS, url), "base")
        assert set(inspect(engine).get_table_names()) == {"alembic_version"}
    finally:
        engine.dispose()


def test_webhook_secrets_are_rewritten_in_standard_base64_with_the_same_key(tmp_path):
    import base64
    import uuid

    from sqlalchemy import text

    url = f"sqlite:///{tmp_path / 'auth.db'}"
    config = alembic_config(MIGRATIONS, url)
    command.upgrade(config, "0003")
    key = b"\xfb\xef\xff" * 10 + b"\xfe\xff"  # 32 bytes whose base64url has - and _
    old = "whsec_" + base64.urlsafe_b64encode(key).decode().rstrip("=")
    assert "-" in old or "_" in old
    user = uuid.uuid4()
    engine = make_engine(url)
    try:
        with engine.begin() as conn:
            conn.execute(text("PRAGMA foreign_keys=OFF"))
            conn.execute(text("INSERT INTO webhook_secrets (user_id, secret, created_at) "
                              "VALUES (:u, :s, '2026-01-01 00:00:00.000000')"),
                         {"u": user.hex, "s": old})
        command.upgrade(config, "0004")
        with engine.connect() as conn:
            new = conn.execute(text("SELECT secret FROM webhook_secrets")).scalar_one()
        assert new.startswith("whsec_") and base64.b64decode(new[6:], validate=True) == key
        command.downgrade(config, "0003")
        with engine.connect() as conn:
            assert conn.execute(text("SELECT secret FROM webhook_secrets")).scalar_one() == old
    finally:
        engine.dispose()
