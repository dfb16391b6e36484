"""The lock of services/common/timers.py on PostgreSQL: two connections (two
replicas) asking for one task's lock at once; only one holds it, until it is
done; the transaction-level lock ends with the transaction."""

from __future__ import annotations

import pytest
from sqlalchemy.orm import Session

from services.common import timers
from services.common.db import make_engine

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def engine(make_database):
    engine = make_engine(make_database("timer_locks"))
    yield engine
    engine.dispose()


def test_a_second_replica_is_refused_while_the_first_holds_the_task(engine):
    with timers.held(engine, "billing.grants") as first:
        assert first
        with timers.held(engine, "billing.grants") as second:
            assert not second
        with timers.held(engine, "billing.housekeeping") as other_task:
            assert other_task  # one lock per task
    with timers.held(engine, "billing.grants") as after:
        assert after  # released when the first was done


def test_the_lock_is_released_when_the_work_fails(engine):
    with pytest.raises(RuntimeError), timers.held(engine, "storage.purge") as mine:
        assert mine
        raise RuntimeError("the tick failed")
    with timers.held(engine, "storage.purge") as again:
        assert again


def test_the_transaction_lock_lasts_until_commit(engine):
    with Session(engine) as one, Session(engine) as two:
        assert timers.try_xact_lock(one, "storage.orphan_sweep")
        assert not timers.try_xact_lock(two, "storage.orphan_sweep")
        two.rollback()
        with timers.held(engine, "storage.orphan_sweep") as session_level:
            assert not session_level  # the same key for both kinds of lock
        one.commit()
        assert timers.try_xact_lock(two, "storage.orphan_sweep")
        two.rollback()
