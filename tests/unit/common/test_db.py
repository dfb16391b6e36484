"""The engine factory's per-dialect connection settings."""

from __future__ import annotations

from sqlalchemy import text

from services.common.db import make_engine, normalise_url


def test_plain_postgresql_urls_use_pg8000():
    assert normalise_url("postgresql://u:p@db:5432/auth") == "postgresql+pg8000://u:p@db:5432/auth"
    assert normalise_url("sqlite:///var/auth.db") == "sqlite:///var/auth.db"


def test_sqlite_files_use_wal_with_a_busy_timeout(tmp_path):
    engine = make_engine(f"sqlite:///{tmp_path}/nested/dir/service.db")
    try:
        with engine.connect() as conn:
            assert conn.execute(text("PRAGMA journal_mode")).scalar() == "wal"
            assert conn.execute(text("PRAGMA synchronous")).scalar() == 1  # NORMAL
            assert conn.execute(text("PRAGMA busy_timeout")).scalar() == 5000
    finally:
        engine.dispose()
    assert (tmp_path / "nested" / "dir" / "service.db").exists()
