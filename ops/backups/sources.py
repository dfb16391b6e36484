"""Where the state is, and how one database is dumped and restored.

The databases and the object store are read from each service's own config
file (``deploy/config/<service>.yaml``, with the same environment the
service gets), so the backup names the same databases the services use:
``<SERVICE>_DATABASE_URL`` and the ``STORAGE_*`` settings. PostgreSQL is
dumped with ``pg_dump --format=custom`` and restored with ``pg_restore``;
SQLite (``make dev``) is copied with SQLite's online backup API.
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
from pathlib import Path

from sqlalchemy import text
from sqlalchemy.engine import make_url

from services.common.config import config_path, load_config
from services.common.contracts.privacy import PART_SERVICES
from services.common.engine import make_engine

# every service with a database: the ones taking part in privacy requests are all of them
SERVICES: tuple[str, ...] = PART_SERVICES


class DumpError(Exception):
    """pg_dump, pg_restore or SQLite failed; the message says how."""


def service_config(service: str) -> dict:
    return load_config(config_path(service))


def database_urls() -> dict[str, str]:
    """Each service's ``DATABASE_URL``, as the service itself reads it."""
    return {service: str(service_config(service)["DATABASE_URL"]) for service in SERVICES}


def engine_kind(url: str) -> str:
    name = make_url(url).get_backend_name()
    if name not in ("postgresql", "sqlite"):
        raise DumpError(f"cannot back up a {name} database")
    return name


def _libpq(url: str) -> tuple[str, dict[str, str]]:
    """A libpq connection string for pg_dump/pg_restore, and the environment
    carrying the password (never on the command line)."""
    parsed = make_url(url)
    env = dict(os.environ)
    if parsed.password:
        env["PGPASSWORD"] = str(parsed.password)
    plain = parsed.set(drivername="postgresql", password=None)
    return plain.render_as_string(hide_password=False), env


def _run(args: list[str], env: dict | None = None, stdout=None) -> subprocess.CompletedProcess:
    try:
        done = subprocess.run(args, env=env, stdout=stdout if stdout is not None else subprocess.PIPE,
                              stderr=subprocess.PIPE, check=False)
    except FileNotFoundError:
        raise DumpError(f"{args[0]} is not installed (the PostgreSQL client tools)") from None
    if done.returncode != 0:
        raise DumpError(f"{args[0]} failed: {done.stderr.decode(errors='replace').strip()[-500:]}")
    return done


def _sqlite_path(url: str) -> Path:
    database = make_url(url).database
    if not database or database == ":memory:":
        raise DumpError(f"not an SQLite file: {url}")
    return Path(database)


def dump(url: str, target: Path) -> None:
    """The database at ``url`` into the file ``target`` (plaintext; the
    caller encrypts it and deletes it)."""
    if engine_kind(url) == "postgresql":
        conninfo, env = _libpq(url)
        _run(["pg_dump", "--format=custom", "--no-password", f"--file={target}",
              f"--dbname={conninfo}"], env=env)
        return
    _sqlite_copy(_sqlite_path(url), target)


def _sqlite_copy(source_path: Path, target: Path) -> None:
    """SQLite's online backup API: a consistent copy while others write."""
    try:
        source = sqlite3.connect(f"file:{source_path}?mode=ro", uri=True)
    except sqlite3.Error as exc:
        raise DumpError(f"cannot open {source_path}: {exc}") from None
    try:
        copy = sqlite3.connect(target)
        with copy:
            source.backup(copy)
        copy.close()
    except sqlite3.Error as exc:
        raise DumpError(f"cannot copy {source_path}: {exc}") from None
    finally:
        source.close()


def check_dump(kind: str, path: Path) -> str:
    """Proof a dump is restorable without restoring it: ``pg_restore --list``
    reads the whole archive's table of contents; SQLite's integrity check
    reads every page. Returns a one-line summary."""
    if kind == "postgresql":
        listing = _run(["pg_restore", "--list", str(path)]).stdout.decode(errors="replace")
        entries = [line for line in listing.splitlines() if line and not line.startswith(";")]
        return f"{len(entries)} archive entries"
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            result = conn.execute("PRAGMA integrity_check").fetchone()[0]
            tables = conn.execute("SELECT count(*) FROM sqlite_master WHERE type='table'").fetchone()[0]
        finally:
            conn.close()
    except sqlite3.Error as exc:
        raise DumpError(f"not a readable SQLite database: {exc}") from None
    if result != "ok":
        raise DumpError(f"SQLite integrity check: {result}")
    return f"{tables} tables"


def restore(kind: str, path: Path, url: str) -> None:
    """The dump at ``path`` into the database at ``url``, replacing what is
    there. PostgreSQL: objects owned by the role of ``url`` (the dump's
    owners are not kept), in one transaction."""
    if engine_kind(url) != kind:
        raise DumpError(f"a {kind} dump cannot be restored into {engine_kind(url)}")
    if kind == "postgresql":
        conninfo, env = _libpq(url)
        _run(["pg_restore", "--clean", "--if-exists", "--no-owner", "--no-privileges",
              "--single-transaction", "--exit-on-error", "--no-password",
              f"--dbname={conninfo}", str(path)], env=env)
        return
    target = _sqlite_path(url)
    target.parent.mkdir(parents=True, exist_ok=True)
    _sqlite_copy(path, target)


def describe(url: str) -> dict:
    """The migration head (alembic) and server version of a database."""
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            heads = sorted(r[0] for r in conn.execute(text("SELECT version_num FROM alembic_version")))
            if engine.dialect.name == "postgresql":
                version = conn.execute(text("SHOW server_version")).scalar()
            else:
                version = "sqlite " + conn.execute(text("SELECT sqlite_version()")).scalar()
    finally:
        engine.dispose()
    return {"migration_heads": heads, "server_version": str(version)}


def object_backend(storage_config: dict | None = None):
    """The object store the storage service uses (``STORAGE.BACKEND``...)."""
    from services.storage.backends import make_backend

    return make_backend(storage_config if storage_config is not None else service_config("storage"))
