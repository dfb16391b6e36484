"""Alembic, per service.

Each service keeps its migrations in ``services/<name>/migrations`` with an
``env.py`` that calls :func:`run_env` with its metadata. :func:`upgrade` applies
them (``python -m services.common.migrations <service>``, the tests' helpers);
on PostgreSQL an advisory lock lets several replicas start at once. A service
starting migrates in a child process (:func:`upgrade_in_child`), so that
alembic and its templates are never resident in the service (issue 15): this
module imports alembic only inside the functions that use it.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import zlib
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy import text

from services.common import fieldcrypt
from services.common.config import config_path, load_config
from services.common.engine import make_engine, normalise_url

SERVICES_DIR = Path(__file__).resolve().parents[1]


def alembic_config(migrations: str | Path, url: str):
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(migrations))
    cfg.set_main_option("sqlalchemy.url", normalise_url(url).replace("%", "%%"))
    return cfg


def upgrade(migrations: str | Path, url: str, revision: str = "head") -> None:
    from alembic import command

    command.upgrade(alembic_config(migrations, url), revision)


# what the child needs of the service's config: the database and the keys a
# migration encrypts personal fields with (services/common/fieldcrypt.py)
CHILD_KEYS = ("DATABASE_URL", fieldcrypt.ENV_VAR, fieldcrypt.INDEX_ENV_VAR)
log = logging.getLogger(__name__)


def upgrade_in_child(migrations: str | Path, config) -> None:
    """:func:`upgrade` in a fresh interpreter (``python -m
    services.common.migrations --child <migrations>``, the settings as JSON on
    its stdin, never in its arguments or environment), waited for as long as
    it takes; its output (alembic's "Running upgrade" lines) is logged, and
    raised with when it fails."""
    settings = {key: config[key] for key in CHILD_KEYS if key in config}
    done = subprocess.run(
        [sys.executable, "-m", "services.common.migrations", "--child", str(migrations)],
        input=json.dumps(settings), capture_output=True, text=True,
        cwd=str(SERVICES_DIR.parent),
        env={**os.environ, "PYTHONPATH": os.pathsep.join(
            filter(None, [str(SERVICES_DIR.parent), os.environ.get("PYTHONPATH")]))})
    if done.returncode != 0:
        raise RuntimeError(f"migrations in {migrations} failed (exit {done.returncode}):\n"
                           f"{(done.stdout + done.stderr)[-4000:]}")
    if done.stderr.strip():
        log.info("migrations in %s:\n%s", migrations, done.stderr.strip()[-4000:])


def _child(migrations: str) -> int:
    logging.basicConfig(level=logging.INFO, format="%(name)s %(levelname)s %(message)s")
    settings = json.loads(sys.stdin.read())
    fieldcrypt.configure_from(settings)
    upgrade(migrations, settings["DATABASE_URL"])
    return 0


def run_env(target_metadata) -> None:
    """The body of every service's ``migrations/env.py``."""
    from alembic import context

    cfg = context.config
    url = cfg.get_main_option("sqlalchemy.url")
    if context.is_offline_mode():
        context.configure(url=url, target_metadata=target_metadata, literal_binds=True)
        with context.begin_transaction():
            context.run_migrations()
        return
    engine = make_engine(url)
    lock_key = zlib.crc32(cfg.get_main_option("script_location").encode())
    try:
        with engine.connect() as connection:
            postgres = connection.dialect.name == "postgresql"
            if postgres:
                connection.execute(text("SELECT pg_advisory_lock(:k)"), {"k": lock_key})
                connection.commit()
            try:
                context.configure(
                    connection=connection,
                    target_metadata=target_metadata,
                    render_as_batch=connection.dialect.name == "sqlite",
                )
                with context.begin_transaction():
                    context.run_migrations()
                connection.commit()
            finally:
                if postgres:
                    connection.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": lock_key})
                    connection.commit()
    finally:
        engine.dispose()


def encrypt_columns(table: str, columns: dict, key: tuple[str, ...] = ("id",)) -> None:
    """In a migration: make ``columns`` (name → (purpose, type before)) of
    ``table`` encrypted personal fields (services/common/fieldcrypt.py): text
    columns, their rows encrypted with the process's keys."""
    from alembic import op

    with op.batch_alter_table(table) as batch:
        for name, (_, before) in columns.items():
            batch.alter_column(name, type_=sa.Text(), existing_type=before,
                               postgresql_using=f"{name}::text")
    fieldcrypt.convert_rows(op.get_bind(), table, list(key),
                            {name: purpose for name, (purpose, _) in columns.items()},
                            fieldcrypt.encrypt_value)


def decrypt_columns(table: str, columns: dict, key: tuple[str, ...] = ("id",)) -> None:
    """The downgrade of :func:`encrypt_columns`: plaintext in the types of before."""
    from alembic import op

    fieldcrypt.convert_rows(op.get_bind(), table, list(key),
                            {name: purpose for name, (purpose, _) in columns.items()},
                            fieldcrypt.decrypt_value)
    with op.batch_alter_table(table) as batch:
        for name, (_, before) in columns.items():
            cast = "json" if isinstance(before, sa.JSON) else f"varchar({before.length})"
            batch.alter_column(name, type_=before, existing_type=sa.Text(),
                               postgresql_using=f"{name}::{cast}")


OUTBOX_BODY = {"body": "outbox.body"}  # services/common/outbox.py


def encrypt_outbox() -> None:
    """In a migration: the bodies of events still in the service's outbox
    encrypted, as :func:`services.common.outbox.outbox_table` now stores them."""
    from alembic import op

    fieldcrypt.convert_rows(op.get_bind(), "outbox", ["event_id"], OUTBOX_BODY,
                            fieldcrypt.encrypt_value)


def decrypt_outbox() -> None:
    """The downgrade of :func:`encrypt_outbox`."""
    from alembic import op

    fieldcrypt.convert_rows(op.get_bind(), "outbox", ["event_id"], OUTBOX_BODY,
                            fieldcrypt.decrypt_value)


def main(argv: list[str] | None = None) -> int:
    """``python -m services.common.migrations auth [notifications ...]``"""
    names = argv if argv is not None else sys.argv[1:]
    if len(names) == 2 and names[0] == "--child":  # upgrade_in_child
        return _child(names[1])
    if not names:
        print("usage: python -m services.common.migrations <service> [...]", file=sys.stderr)
        return 2
    for name in names:
        config = load_config(config_path(name))
        fieldcrypt.configure_from(config)  # a migration may encrypt personal fields
        upgrade(SERVICES_DIR / name / "migrations", config["DATABASE_URL"])
        print(f"{name}: migrated")
    return 0


if __name__ == "__main__":
    sys.exit(main())
