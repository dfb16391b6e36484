"""The engine factory's per-dialect connection settings, and what the
worker's session does with what a worker left uncommitted."""

from __future__ import annotations

import logging

import pytest
from sqlalchemy import Column, Integer, MetaData, String, Table, insert, select, text
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from services.common.db import Database, locked
from services.common.engine import make_engine, normalise_url

things = Table("things", MetaData(), Column("id", Integer, primary_key=True))


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


# ---------------------------------------------------------------- the worker's session


class _Entrypoint:
    method_name = "do_work"


class _WorkerCtx:  # weak-referenceable, as nameko's WorkerContext
    entrypoint = _Entrypoint()


@pytest.fixture
def database(tmp_path):
    from sqlalchemy.orm import sessionmaker

    database = Database()
    database.engine = make_engine(f"sqlite:///{tmp_path}/worker.db")
    database.sessionmaker = sessionmaker(bind=database.engine, expire_on_commit=False)
    with database.engine.begin() as conn:
        conn.execute(text("CREATE TABLE things (id INTEGER PRIMARY KEY)"))
    yield database
    database.stop()


def _count(database) -> int:
    with database.engine.connect() as conn:
        return conn.execute(text("SELECT count(*) FROM things")).scalar()


def _run(database, work, exc_info=None):
    ctx = _WorkerCtx()
    session = database.get_dependency(ctx)
    work(session)
    database.worker_result(ctx, exc_info=exc_info)
    database.worker_teardown(ctx)


@pytest.mark.parametrize("write", [
    lambda s: s.execute(text("INSERT INTO things (id) VALUES (1)")),  # plain SQL
    lambda s: s.execute(insert(things).values(id=1)),  # a Core statement
    lambda s: (s.execute(insert(things).values(id=1)), s.flush()),
])
def test_what_a_worker_left_uncommitted_is_rolled_back(database, write, caplog):
    caplog.set_level(logging.WARNING, logger="services.common.db")
    _run(database, write)
    assert _count(database) == 0


def test_leftover_writes_are_named_in_a_warning(database, caplog):
    caplog.set_level(logging.WARNING, logger="services.common.db")
    _run(database, lambda s: s.execute(insert(things).values(id=1)))
    assert _count(database) == 0
    assert [r.getMessage() for r in caplog.records] == [
        "do_work left uncommitted changes; rolled back (service code commits before it returns)"]


def test_committed_work_stays_and_reads_warn_of_nothing(database, caplog):
    caplog.set_level(logging.WARNING, logger="services.common.db")

    def work(session):
        session.execute(insert(things).values(id=1))
        session.commit()
        session.execute(select(things.c.id)).all()  # a read after the commit

    _run(database, work)
    assert _count(database) == 1
    assert caplog.records == []


def test_a_worker_that_raised_is_rolled_back_without_a_warning(database, caplog):
    caplog.set_level(logging.WARNING, logger="services.common.db")
    _run(database, lambda s: s.execute(insert(things).values(id=1)),
         exc_info=(ValueError, ValueError("boom"), None))
    assert _count(database) == 0
    assert caplog.records == []


def test_locked_reads_a_row_afresh_although_the_session_holds_it(tmp_path):
    class Base(DeclarativeBase):
        pass

    class Row(Base):
        __tablename__ = "rows"
        id: Mapped[int] = mapped_column(primary_key=True)
        status: Mapped[str] = mapped_column(String(20))

    engine = make_engine(f"sqlite:///{tmp_path / 'locked.db'}")
    Base.metadata.create_all(engine)
    with Session(engine, expire_on_commit=False) as mine, Session(engine) as theirs:
        mine.add(Row(id=1, status="pending"))
        mine.commit()
        assert mine.get(Row, 1).status == "pending"  # the session keeps this copy
        theirs.get(Row, 1).status = "claimed"
        theirs.commit()
        # a check made after waiting for the lock must see what was committed meanwhile
        assert locked(mine, Row, 1).status == "claimed"
        assert locked(mine, Row, 2) is None


KEYS = "k1:QUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUE="  # 32 bytes, base64


def test_a_service_migrates_in_a_child_process_with_its_keys(tmp_path):
    """Database's setup migrates through upgrade_in_child: the schema and the
    alembic head are there afterwards (issue 15: alembic is never loaded in
    the service); what is not JSON in the config is not sent."""
    from services.common import fieldcrypt
    from services.common.migrations import SERVICES_DIR, upgrade_in_child

    url = f"sqlite:///{tmp_path}/auth.db"
    upgrade_in_child(SERVICES_DIR / "auth" / "migrations",
                     {"DATABASE_URL": url, fieldcrypt.ENV_VAR: KEYS,
                      fieldcrypt.INDEX_ENV_VAR: "an-index-key-of-32-characters..", "UNRELATED": object()})
    engine = make_engine(url)
    try:
        with engine.connect() as connection:
            head = connection.execute(text("SELECT version_num FROM alembic_version")).scalar()
            tables = {row[0] for row in connection.execute(
                text("SELECT name FROM sqlite_master WHERE type = 'table'"))}
    finally:
        engine.dispose()
    assert head and "users" in tables


def test_a_failed_child_migration_stops_the_start_with_its_output(tmp_path):
    from services.common.migrations import upgrade_in_child

    with pytest.raises(RuntimeError, match="migrations in .*missing failed") as raised:
        upgrade_in_child(tmp_path / "missing", {"DATABASE_URL": f"sqlite:///{tmp_path}/x.db"})
    assert "missing" in str(raised.value).split("failed", 1)[1]  # the child's own error follows


def test_the_child_migrates_with_the_field_keys_of_the_service(tmp_path):
    """The keys reach the child (on its stdin): one it cannot use stops the start."""
    from services.common import fieldcrypt
    from services.common.migrations import SERVICES_DIR, upgrade_in_child

    with pytest.raises(RuntimeError, match=fieldcrypt.INDEX_ENV_VAR):
        upgrade_in_child(SERVICES_DIR / "auth" / "migrations",
                         {"DATABASE_URL": f"sqlite:///{tmp_path}/auth.db",
                          fieldcrypt.ENV_VAR: KEYS, fieldcrypt.INDEX_ENV_VAR: "short"})
