"""SQLAlchemy engines: the URL every service, migration and test uses, and
the per-dialect connection settings.

- PostgreSQL URLs are driven by pg8000, a pure-Python driver: under eventlet its
  sockets are green, so a slow query never stalls the hub. The pool pings a
  connection before lending it (a server restart leaves dead ones behind), and
  a connection attempt cut by a server going down is raised as the driver's
  InterfaceError, like a refused one, so SQLAlchemy wraps it and
  services/common/db.py ``is_outage`` knows it (pg8000 lets a reset socket's
  bare OSError out of its handshake).
- SQLite (the laptop default) runs in write-ahead-logging mode with a busy timeout.
"""

from __future__ import annotations

import socket
from pathlib import Path

from sqlalchemy import create_engine, event
from sqlalchemy.engine import Engine, make_url


def normalise_url(url: str) -> str:
    """Use the pure-Python pg8000 driver for plain ``postgresql://`` URLs."""
    parsed = make_url(url)
    if parsed.drivername in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql+pg8000")
    return parsed.render_as_string(hide_password=False)


#: PostgreSQL connections one process may hold: ``POOL_SIZE`` kept, plus up to
#: ``POOL_OVERFLOW`` more under load. docs/scaling.md's connection budget is
#: built on them (tests/unit/test_observability.py checks compose covers it).
POOL_SIZE = 10
POOL_OVERFLOW = 10


def make_engine(url: str, **kwargs) -> Engine:
    url = normalise_url(url)
    if url.startswith("sqlite"):
        path = make_url(url).database
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        kwargs.setdefault("connect_args", {"check_same_thread": False})
    else:
        kwargs.setdefault("pool_pre_ping", True)
        kwargs.setdefault("pool_size", POOL_SIZE)
        kwargs.setdefault("max_overflow", POOL_OVERFLOW)
    engine = create_engine(url, **kwargs)
    if engine.dialect.driver == "pg8000":
        event.listen(engine, "connect", _tcp_nodelay)
        event.listen(engine, "do_connect", _connect_errors_as_dbapi)
    elif engine.dialect.name == "sqlite":
        event.listen(engine, "connect", _sqlite_pragmas)
    return engine


def _sqlite_pragmas(dbapi_connection, _record) -> None:
    """The laptop database: write-ahead logging so readers do not block the
    writer (several workers, ``make migrate`` beside a running service),
    ``synchronous=NORMAL`` (durable across a process crash; WAL's usual
    setting, an fsync per checkpoint rather than per commit) and a busy
    timeout instead of an immediate "database is locked". ``secure_delete``
    overwrites deleted rows with zeros: an event published from the outbox
    (an address in it) leaves no trace in the file (docs/privacy.md)."""
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA busy_timeout=5000")
        cursor.execute("PRAGMA secure_delete=ON")
    finally:
        cursor.close()


def _tcp_nodelay(dbapi_connection, _record) -> None:
    """pg8000 leaves Nagle's algorithm on: a statement larger than a TCP
    segment (an outbox row with a long event) then waits for the server's
    delayed ACK, about 40 ms per statement."""
    sock = getattr(dbapi_connection, "_usock", None)
    if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def _connect_errors_as_dbapi(dialect, _record, cargs, cparams):
    """Connect; an OSError in pg8000's handshake (the server closing the
    socket as it shuts down or starts) becomes pg8000's InterfaceError."""
    try:
        return dialect.connect(*cargs, **cparams)
    except OSError as exc:
        raise dialect.loaded_dbapi.InterfaceError(
            f"cannot connect to the database: {type(exc).__name__}: {exc}") from exc
