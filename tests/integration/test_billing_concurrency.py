"""The ledger under real concurrency on PostgreSQL: threads, each with its own
session and connection, hammer one account the way several billing workers
(or replicas) would. Whatever the interleaving, nothing is overdrawn,
nothing is written twice, and the audit finds nothing."""

from __future__ import annotations

import threading
import uuid
from datetime import UTC, datetime

import pytest
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from services.billing import audit, ledger, plans, saga
from services.billing.models import Account, Hold, LedgerEntry
from services.billing.settings import BillingSettings

pytestmark = pytest.mark.integration

THREADS = 12


class Events:
    def __init__(self):
        self.seen = []
        self.lock = threading.Lock()

    def __call__(self, event_type, data):
        with self.lock:
            self.seen.append((event_type, data))


@pytest.fixture(scope="module")
def engine(make_migrated_engine):
    return make_migrated_engine("billing", pool_size=THREADS + 2)


@pytest.fixture
def factory(engine):
    return sessionmaker(bind=engine, expire_on_commit=False)


def run_together(count: int, work) -> list:
    """Start ``count`` threads at one barrier; return their results (or exceptions)."""
    barrier = threading.Barrier(count)
    results: list = [None] * count

    def run(i):
        barrier.wait()
        try:
            results[i] = work(i)
        except Exception as exc:  # collected for the assertions
            results[i] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    return results


def open_user(factory, settings) -> uuid.UUID:
    user = uuid.uuid4()
    with factory() as db:
        plans.open_account(db, settings, user, datetime.now(UTC), Events())
        db.commit()
    return user


def test_parallel_holds_never_overdraw(factory):
    settings = BillingSettings()
    user = open_user(factory, settings)  # 50 credits
    events = Events()

    def hold(i):
        with factory() as db:
            status = saga.job_requested(db, settings, {
                "job_id": uuid.uuid4(), "user_id": user, "attempt": 1,
                "type": "text-to-image", "price": 7}, datetime.now(UTC), events)
            db.commit()
            return status

    results = run_together(THREADS, hold)
    assert sorted(results) == ["insufficient"] * (THREADS - 7) + ["reserved"] * 7
    with factory() as db:
        account = db.get(Account, user)
        assert (account.available, account.held) == (1, 49)
        assert audit.verify_ledger(db, user)["problems"] == []
    reserved = [d for kind, d in events.seen if kind == "credits_reserved"]
    assert len(reserved) == 7


def test_the_same_hold_from_many_workers_is_written_once(factory):
    settings = BillingSettings()
    user = open_user(factory, settings)
    job = uuid.uuid4()
    events = Events()

    def hold(i):
        with factory() as db:
            status = saga.job_requested(db, settings, {
                "job_id": job, "user_id": user, "attempt": 1, "type": "text-to-image",
                "price": 10}, datetime.now(UTC), events)
            db.commit()
            return status

    results = run_together(THREADS, hold)
    assert sorted(r for r in results if isinstance(r, str)) == \
        ["duplicate"] * (THREADS - 1) + ["reserved"]
    with factory() as db:
        assert db.scalar(select(func.count()).select_from(Hold).where(Hold.job_id == job)) == 1
        assert db.get(Account, user).held == 10


def test_captures_and_releases_racing_on_one_hold_apply_one(factory):
    settings = BillingSettings()
    user = open_user(factory, settings)
    job = uuid.uuid4()
    with factory() as db:
        saga.job_requested(db, settings, {"job_id": job, "user_id": user, "attempt": 1,
                                          "type": "text-to-image", "price": 10},
                           datetime.now(UTC), Events())
        db.commit()

    def finish(i):
        with factory() as db:
            status = saga.job_finished(db, {"job_id": job, "user_id": user, "attempt": 1},
                                       "succeeded" if i % 2 else "failed", datetime.now(UTC),
                                       Events())
            db.commit()
            return status

    results = run_together(THREADS, finish)
    applied = [r for r in results if r in ("captured", "released")]
    assert len(applied) == 1
    assert set(results) - {"captured", "released"} <= {"duplicate", "refused"}
    with factory() as db:
        closing = db.scalars(select(LedgerEntry.kind).where(
            LedgerEntry.job_id == job, LedgerEntry.kind.in_(["capture", "release"]))).all()
        assert len(closing) == 1
        assert db.get(Account, user).held == 0
        assert audit.verify_ledger(db, user)["problems"] == []


def test_accounts_opened_at_once_open_once(factory):
    settings = BillingSettings()
    user = uuid.uuid4()

    def open_(i):
        for _ in range(3):  # what the service's retry does after losing the race
            with factory() as db:
                try:
                    plans.open_account(db, settings, user, datetime.now(UTC), Events())
                    db.commit()
                    return "ok"
                except IntegrityError:
                    db.rollback()
        return "gave up"

    assert run_together(THREADS, open_) == ["ok"] * THREADS
    with factory() as db:
        grants = db.scalars(select(LedgerEntry).where(LedgerEntry.user_id == user)).all()
        assert [(g.kind, g.amount) for g in grants] == [("grant", 50)]


def test_lock_account_blocks_a_second_writer_until_commit(factory):
    settings = BillingSettings()
    user = open_user(factory, settings)
    first: Session = factory()
    ledger.lock_account(first, user)
    acquired = threading.Event()

    def second():
        with factory() as db:
            ledger.lock_account(db, user)
            acquired.set()
            db.commit()

    thread = threading.Thread(target=second)
    thread.start()
    assert not acquired.wait(0.5)  # blocked behind the first transaction
    first.commit()
    assert acquired.wait(5)
    thread.join(5)
    first.close()
