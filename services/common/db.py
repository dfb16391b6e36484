"""SQLAlchemy 2 for nameko services.

- :class:`Database` is a dependency provider: one session per worker, rolled
  back when the worker raised, committed otherwise, closed at teardown; the
  engine is disposed when the container stops. Service code commits explicitly
  (``self.db.commit()``) before it dispatches events or returns, so a failed
  commit is the worker's failure, never a silent loss.
- PostgreSQL URLs are driven by pg8000, a pure-Python driver: under eventlet its
  sockets are green, so a slow query never stalls the hub.
- Each service owns its database and its alembic migrations
  (``services/<name>/migrations``); :class:`Database` applies them at start
  unless ``DB_MIGRATE_ON_START`` is false (``make migrate`` does it by hand).
"""

from __future__ import annotations

import logging
import socket
from datetime import UTC, datetime
from pathlib import Path
from weakref import WeakKeyDictionary

from nameko.extensions import DependencyProvider
from sqlalchemy import Column, DateTime, String, Table, create_engine, event, select, types
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.orm import Session, sessionmaker

from services.common.ids import utcnow

log = logging.getLogger(__name__)


# Deterministic constraint names, so alembic migrations can refer to them.
NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class UtcDateTime(types.TypeDecorator):
    """Timezone-aware UTC datetimes on every backend (SQLite stores naive ones)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value, dialect):
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UtcDateTime column")
        return value.astimezone(UTC)

    def process_result_value(self, value, dialect):
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


def normalise_url(url: str) -> str:
    """Use the pure-Python pg8000 driver for plain ``postgresql://`` URLs."""
    parsed = make_url(url)
    if parsed.drivername in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql+pg8000")
    return parsed.render_as_string(hide_password=False)


def make_engine(url: str, **kwargs) -> Engine:
    url = normalise_url(url)
    if url.startswith("sqlite"):
        path = make_url(url).database
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        kwargs.setdefault("connect_args", {"check_same_thread": False})
    else:
        kwargs.setdefault("pool_pre_ping", True)
        kwargs.setdefault("pool_size", 10)
    engine = create_engine(url, **kwargs)
    if engine.dialect.driver == "pg8000":
        event.listen(engine, "connect", _tcp_nodelay)
    elif engine.dialect.name == "sqlite":
        event.listen(engine, "connect", _sqlite_pragmas)
    return engine


def _sqlite_pragmas(dbapi_connection, _record) -> None:
    """The laptop database: write-ahead logging so readers do not block the
    writer (several workers, ``make migrate`` beside a running service),
    ``synchronous=NORMAL`` (durable across a process crash; WAL's usual
    setting, an fsync per checkpoint rather than per commit) and a busy
    timeout instead of an immediate "database is locked"."""
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA busy_timeout=5000")
    finally:
        cursor.close()


def _tcp_nodelay(dbapi_connection, _record) -> None:
    """pg8000 leaves Nagle's algorithm on: a statement larger than a TCP
    segment (an outbox row with a long event) then waits for the server's
    delayed ACK, about 40 ms per statement."""
    sock = getattr(dbapi_connection, "_usock", None)
    if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def processed_events_table(metadata) -> Table:
    """The table that makes a service's event consumers idempotent on event id."""
    return Table(
        "processed_events",
        metadata,
        Column("event_id", String(36), primary_key=True),
        Column("consumer", String(200), primary_key=True),
        Column("processed_at", UtcDateTime(), nullable=False),
    )


def claim_event(session: Session, table: Table, event_id: str, consumer: str) -> bool:
    """Record that ``consumer`` handles ``event_id`` in the current transaction.

    Returns False when it was handled before (the caller then does nothing).
    Two concurrent deliveries race on the primary key: the loser's commit
    fails, its message is retried, and the retry sees the row and stops.
    """
    seen = session.execute(
        select(table.c.event_id).where(
            table.c.event_id == str(event_id), table.c.consumer == consumer
        )
    ).first()
    if seen:
        return False
    session.execute(
        table.insert().values(event_id=str(event_id), consumer=consumer, processed_at=utcnow())
    )
    return True


class Database(DependencyProvider):
    """Inject a SQLAlchemy session per worker.

    ``migrations`` is the service's alembic directory; config keys:
    ``DATABASE_URL`` (required) and ``DB_MIGRATE_ON_START`` (default true).
    """

    def __init__(self, migrations: str | Path | None = None):
        self.migrations = str(migrations) if migrations else None
        self.engine: Engine | None = None
        self.sessionmaker: sessionmaker | None = None
        self.sessions: WeakKeyDictionary = WeakKeyDictionary()

    def setup(self):
        config = self.container.config
        url = config["DATABASE_URL"]
        if self.migrations and config.get("DB_MIGRATE_ON_START", True):
            from services.common.migrations import upgrade

            upgrade(self.migrations, url)
        self.engine = make_engine(url)
        self.sessionmaker = sessionmaker(bind=self.engine, expire_on_commit=False)

    def stop(self):
        if self.engine is not None:
            self.engine.dispose()
            self.engine = None

    def kill(self):
        self.stop()

    def get_dependency(self, worker_ctx):
        session = self.sessionmaker()
        self.sessions[worker_ctx] = session
        return session

    def worker_result(self, worker_ctx, result=None, exc_info=None):
        session = self.sessions.get(worker_ctx)
        if session is None:
            return
        if exc_info is not None:
            session.rollback()
            return
        if session.new or session.dirty or session.deleted:
            try:
                session.commit()
            except Exception:  # the worker already answered: say so loudly
                log.exception("commit after %s failed", worker_ctx.entrypoint.method_name)
                session.rollback()

    def worker_teardown(self, worker_ctx):
        session = self.sessions.pop(worker_ctx, None)
        if session is not None:
            session.close()


def aware(dt: datetime | None) -> datetime | None:
    """Treat a naive datetime as UTC (values read back from SQLite)."""
    if dt is not None and dt.tzinfo is None:
        return dt.replace(tzinfo=UTC)
    return dt
