"""services/common/timers.py on SQLite (one process per database: no lock) and
the timer decorator's behaviour; the PostgreSQL lock is in
tests/integration/test_timer_locks.py."""

from __future__ import annotations

from nameko.containers import ServiceContainer
from sqlalchemy import create_engine
from sqlalchemy.orm import Session

from services.common import timers


def test_keys_are_stable_signed_64_bit_and_differ_per_task():
    key = timers.lock_key("billing.grants")
    assert key == timers.lock_key("billing.grants")
    assert -(2**63) <= key < 2**63
    assert len({timers.lock_key(n) for n in ("billing.grants", "billing.housekeeping",
                                             "storage.purge", "auth.retention")}) == 4


def test_sqlite_always_holds_the_lock(tmp_path):
    engine = create_engine(f"sqlite:///{tmp_path}/t.db")
    with timers.held(engine, "x") as first, timers.held(engine, "x") as second:
        assert first and second
    with Session(engine) as session:
        assert timers.try_xact_lock(session, "x")
    engine.dispose()


class Service:
    name = "timed"
    db = None
    ran: list = []

    @timers.timer("timed.once", 3600)
    def once(self):
        self.ran.append("once")
        return "done"

    @timers.timer("timed.shared", 60, once=False)
    def shared(self):
        self.ran.append("shared")


def test_interval_comes_from_timer_intervals_else_the_default():
    container = ServiceContainer(Service, {"TIMER_INTERVALS": {"timed.once": 0.5}})
    for ext in container.entrypoints:
        ext.setup()
    intervals = {ext.method_name: ext.interval for ext in container.entrypoints}
    assert intervals == {"once": 0.5, "shared": 60}
    unset = ServiceContainer(Service, {"TIMER_INTERVALS": None})
    for ext in unset.entrypoints:
        ext.setup()
    assert {ext.method_name: ext.interval for ext in unset.entrypoints} == {
        "once": 3600, "shared": 60}


def test_a_tick_skips_when_another_holds_the_lock(tmp_path, monkeypatch):
    engine = create_engine(f"sqlite:///{tmp_path}/t.db")
    service = Service()
    service.db, service.ran = Session(engine), []
    assert service.once() == "done" and service.ran == ["once"]

    class Busy:
        def __enter__(self):
            return False

        def __exit__(self, *exc):
            return False

    monkeypatch.setattr(timers, "held", lambda engine, name: Busy())
    assert service.once() is None  # another replica has it: nothing done here
    service.shared()  # claimed row by row instead: no lock asked for
    assert service.ran == ["once", "shared"]
    service.db.close()
    engine.dispose()
