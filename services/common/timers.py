"""Timers that act once across replicas.

Every replica of a service runs its nameko timers. Work a timer does must
not be done twice because two replicas ticked at once (two grants, two
purge audit rows, two ``objects_purged`` events, two mails), so each timer
says how it stays single:

- :func:`timer` with ``once=True`` (the default): the tick runs in at most
  one replica at a time. On PostgreSQL the replica takes a session-level
  advisory lock named after the task (``pg_try_advisory_lock``, on a
  connection of its own held for the tick, so the lock spans the tick's
  commits); a replica that finds it held logs at debug and skips the tick.
  The next tick of whoever comes next finds the work done (every timer's
  work is re-runnable: it selects what is still due). On SQLite there is
  one process per database: no lock.
- ``once=False``: the work is claimed row by row (``FOR UPDATE SKIP
  LOCKED`` or a lease), so replicas share it rather than take turns; or it
  is per replica by nature (a gauge each replica exports).
- :func:`try_xact_lock`: the same lock for the length of one transaction,
  for work done in a single transaction that an RPC can also start
  (storage's orphan sweep).

Session-level advisory locks need a PostgreSQL session per client: behind
PgBouncer, use *session* pooling (transaction pooling would hand the lock's
session to another client; the migration lock has the same need).

Intervals come from the service's config: ``TIMER_INTERVALS`` maps a task's
name to seconds (``{"billing.grants": 2}``; tests shorten them), else the
default given in the code.
"""

from __future__ import annotations

import functools
import hashlib
import logging
from collections.abc import Iterator
from contextlib import contextmanager

from nameko.timer import Timer
from sqlalchemy import text
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

log = logging.getLogger(__name__)


def lock_key(name: str) -> int:
    """A stable signed 64-bit advisory-lock key for a task name."""
    return int.from_bytes(hashlib.sha256(f"darkroom:{name}".encode()).digest()[:8], "big",
                          signed=True)


@contextmanager
def held(engine: Engine, name: str) -> Iterator[bool]:
    """``with held(engine, "billing.grants") as mine:`` ``mine`` is True when
    this process holds the task's lock (always on SQLite), False when another
    session holds it. The lock is released when the block ends."""
    if engine.dialect.name != "postgresql":
        yield True
        return
    key = lock_key(name)
    with engine.connect() as conn:
        mine = bool(conn.execute(text("SELECT pg_try_advisory_lock(:k)"), {"k": key}).scalar())
        conn.commit()
        try:
            yield mine
        finally:
            if mine:
                try:
                    conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": key})
                    conn.commit()
                except Exception:  # the connection is gone, and the lock with it
                    log.warning("releasing the %s lock failed", name, exc_info=True)
                    conn.invalidate()


def try_xact_lock(session: Session, name: str) -> bool:
    """Take the task's lock until the session's transaction ends; False when
    another session holds it (True on SQLite)."""
    if session.get_bind().dialect.name != "postgresql":
        return True
    return bool(session.execute(text("SELECT pg_try_advisory_xact_lock(:k)"),
                                {"k": lock_key(name)}).scalar())


class ConfiguredTimer(Timer):
    """nameko's timer, its interval read from config ``TIMER_INTERVALS[task]``."""

    def __init__(self, task: str, interval: float, eager: bool = False, **kwargs):
        self.task = task
        super().__init__(interval, eager=eager, **kwargs)

    def setup(self):
        intervals = self.container.config.get("TIMER_INTERVALS") or {}
        if self.task in intervals:
            self.interval = float(intervals[self.task])
        super().setup()


def timer(task: str, interval: float, eager: bool = False, once: bool = True):
    """``@timer("billing.grants", 3600, eager=True)`` on a method of a service
    with a ``db`` session dependency: a nameko timer for ``task`` (its
    interval configurable), whose ticks run in one replica at a time unless
    ``once=False``. A tick skipped because another replica holds the lock
    returns None."""

    def decorate(method):
        if not once:
            return ConfiguredTimer.decorator(task, interval, eager=eager)(method)

        @functools.wraps(method)
        def tick(self, *args, **kwargs):
            with held(self.db.get_bind(), task) as mine:
                if not mine:
                    log.debug("%s is running in another replica; this tick skips it", task)
                    return None
                return method(self, *args, **kwargs)

        return ConfiguredTimer.decorator(task, interval, eager=eager)(tick)

    return decorate
