"""SQLAlchemy 2 for nameko services.

- :class:`Database` is a dependency provider: one session per worker, closed
  at teardown; the engine is disposed when the container stops. Service code
  commits explicitly (``self.db.commit()``) before it returns, after it has
  dispatched its events (they are written to the outbox in the same
  transaction and published by the commit), so a failed commit is the
  worker's failure, never a silent loss. What a worker leaves uncommitted is
  rolled back, with a warning naming the entrypoint: nameko has answered the
  caller (or acked the event) before the provider sees the result, so a commit
  there could fail after "done" was said.
- Engines come from :mod:`services.common.engine` (pg8000 for PostgreSQL).
- A worker that meets a database outage (the server restarting or down, a
  connection cut, no connection to be had from the pool) fails; an RPC caller
  gets 503 ``service_unavailable`` (``details.cause: database``) instead of a
  bare internal error (:func:`outage_error`, applied by
  :class:`services.common.queues.Rpc`), and an event handler's message is
  retried through the retry queues (services/common/messaging.py). The pool
  pings a connection before lending it (services/common/engine.py), so the
  first worker after a restart does not get a dead one.
- Each service owns its database and its alembic migrations
  (``services/<name>/migrations``); :class:`Database` applies them at start
  unless ``DB_MIGRATE_ON_START`` is false (``make migrate`` does it by hand).
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from pathlib import Path
from weakref import WeakKeyDictionary

from nameko.extensions import DependencyProvider
from sqlalchemy import Column, DateTime, String, Table, event, select, types
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker

from services.common import fieldcrypt
from services.common.engine import make_engine, normalise_url  # noqa: F401 (imported from here too)
from services.common.errors import DomainError, service_unavailable
from services.common.ids import utcnow
from services.common.migrations import upgrade_in_child

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


def processed_events_table(metadata) -> Table:
    """The table that makes a service's event consumers idempotent on event id."""
    return Table(
        "processed_events",
        metadata,
        Column("event_id", String(36), primary_key=True),
        Column("consumer", String(200), primary_key=True),
        Column("processed_at", UtcDateTime(), nullable=False),
    )


def locked(session: Session, model, key):
    """The row of ``model`` with primary key ``key``, locked (``SELECT ... FOR
    UPDATE``) until the transaction ends and read afresh, or None.

    A check made after waiting for the lock must see what the transaction it
    waited for committed, although the session may hold the row from before
    (sessions keep objects across commits): ``populate_existing`` says so
    explicitly rather than relying on how a SQLAlchemy version treats a
    locking ``get`` of a row already in the identity map."""
    return session.get(model, key, with_for_update=True, populate_existing=True)


def insert_for(session: Session, target):
    """An ``INSERT`` into ``target`` in the dialect of the session's database
    (PostgreSQL's or SQLite's), which has ``on_conflict_do_nothing``."""
    if session.get_bind().dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    else:
        from sqlalchemy.dialects.sqlite import insert
    return insert(target)


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
    A service with encrypted personal fields passes its ``metadata`` and has
    ``FIELD_ENCRYPTION_KEYS``/``FIELD_INDEX_KEY`` in its config: the keys are
    configured before the migrations run, and the service refuses to start
    when they cannot read what the database holds
    (services/common/fieldcrypt.py).
    """

    def __init__(self, migrations: str | Path | None = None, metadata=None):
        self.migrations = str(migrations) if migrations else None
        self.metadata = metadata
        self.engine: Engine | None = None
        self.sessionmaker: sessionmaker | None = None
        self.sessions: WeakKeyDictionary = WeakKeyDictionary()

    def setup(self):
        config = self.container.config
        url = config["DATABASE_URL"]
        fieldcrypt.configure_from(config)
        if self.migrations and config.get("DB_MIGRATE_ON_START", True):
            upgrade_in_child(self.migrations, config)  # alembic never loaded here
        self.engine = make_engine(url)
        if self.metadata is not None:
            with self.engine.connect() as connection:
                fieldcrypt.check_readable(connection, self.metadata)
        self.sessionmaker = sessionmaker(bind=self.engine, expire_on_commit=False)

    def stop(self):
        if self.engine is not None:
            self.engine.dispose()
            self.engine = None

    def kill(self):
        self.stop()

    def get_dependency(self, worker_ctx):
        session = self.sessionmaker()
        _track_writes(session)
        self.sessions[worker_ctx] = session
        return session

    def worker_result(self, worker_ctx, result=None, exc_info=None):
        """Roll back whatever the worker left uncommitted; a worker that
        succeeded yet left writes behind is a bug, and is named."""
        session = self.sessions.get(worker_ctx)
        if session is None:
            return
        if exc_info is None and uncommitted_writes(session):
            log.warning("%s left uncommitted changes; rolled back (service code commits "
                        "before it returns)", worker_ctx.entrypoint.method_name)
        session.rollback()

    def worker_teardown(self, worker_ctx):
        session = self.sessions.pop(worker_ctx, None)
        if session is not None:
            session.close()


_WROTE = "darkroom_uncommitted_writes"


def _track_writes(session: Session) -> None:
    """Note in ``session.info`` whether the open transaction has written."""

    def wrote(*_args):
        session.info[_WROTE] = True

    def on_execute(state):
        if state.is_insert or state.is_update or state.is_delete:
            wrote()

    def ended(sess, *_args):
        if not sess.in_nested_transaction():  # a savepoint's end leaves the outer writes
            sess.info.pop(_WROTE, None)

    event.listen(session, "after_flush", wrote)
    event.listen(session, "do_orm_execute", on_execute)
    event.listen(session, "after_commit", ended)
    event.listen(session, "after_rollback", ended)


def uncommitted_writes(session: Session) -> bool:
    """True when the session holds changes not yet committed (pending objects,
    or ORM and Core statements flushed or executed since the last commit)."""
    return bool(session.new or session.dirty or session.deleted or session.info.get(_WROTE))


# SQLAlchemy's names for "the database could not be reached or the connection
# died" (pg8000's network errors arrive as InterfaceError; a pool with no free
# connection as TimeoutError)
OUTAGE_ERRORS = (sa_exc.OperationalError, sa_exc.InterfaceError, sa_exc.DisconnectionError,
                 sa_exc.TimeoutError)
# SQLite says OperationalError for mistakes too ("no such table"): of its
# messages only these are "try again"
SQLITE_TRANSIENT = ("database is locked", "unable to open database", "disk i/o error")


# PostgreSQL's SQLSTATE classes and codes of the same: 08 connection
# exceptions, 57 operator intervention (57P01 terminating connection due to
# administrator command, 57P03 the database system is starting up or shutting
# down), 53300 too many connections. pg8000 raises them as ProgrammingError.
OUTAGE_SQLSTATE_CLASSES = ("08", "57")
OUTAGE_SQLSTATES = ("53300",)


def sqlstate(exc: BaseException | None) -> str | None:
    """The SQLSTATE of a PostgreSQL error wrapped by SQLAlchemy (pg8000 puts
    the server's fields in a dict, ``C`` the code; psycopg has ``sqlstate``)."""
    orig = getattr(exc, "orig", None)
    code = getattr(orig, "sqlstate", None) or getattr(orig, "pgcode", None)
    if code is None and orig is not None and orig.args and isinstance(orig.args[0], dict):
        code = orig.args[0].get("C")
    return str(code) if code else None


def is_outage(exc: BaseException | None) -> bool:
    """True when ``exc`` says the database is unreachable, restarting or the
    connection died: a request to try again, not a bug."""
    if isinstance(exc, sa_exc.DBAPIError):
        if exc.connection_invalidated:
            return True
        code = sqlstate(exc)
        if code and (code[:2] in OUTAGE_SQLSTATE_CLASSES or code in OUTAGE_SQLSTATES):
            return True
        if type(exc.orig).__module__ == "sqlite3":
            return any(text in str(exc.orig).lower() for text in SQLITE_TRANSIENT)
    return isinstance(exc, OUTAGE_ERRORS)


def outage_error(exc: BaseException | None) -> DomainError | None:
    """The 503 an RPC caller gets for a database outage, or None for anything else."""
    if not is_outage(exc):
        return None
    return service_unavailable("the database is unavailable, try again shortly",
                               cause="database")


def aware(dt: datetime | None) -> datetime | None:
    """Treat a naive datetime as UTC (values read back from SQLite)."""
    if dt is not None and dt.tzinfo is None:
        return dt.replace(tzinfo=UTC)
    return dt
