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


def paid_pack_with_two_holds(factory, settings) -> tuple[uuid.UUID, uuid.UUID, dict]:
    """A user with a paid 100-credit pack (500 usd) and two jobs holding
    60 (50 signup + 10 of the pack) and 20 (of the pack)."""
    from services.billing import orders

    user, now = open_user(factory, settings), datetime.now(UTC)
    with factory() as db:
        order, _ = orders.begin_checkout(db, settings, user, {"pack_id": "small"}, None, now,
                                         Events())
        db.commit()
        orders.fulfil(db, settings, order.id, {"id": "cs_race", "amount_total": 500,
                                               "currency": "usd",
                                               "payment_intent": f"pi_{order.id}"}, now, Events())
        db.commit()
        jobs = {}
        for name, price in (("failing", 60), ("succeeding", 20)):
            jobs[name] = uuid.uuid4()
            assert saga.job_requested(db, settings, {
                "job_id": jobs[name], "user_id": user, "attempt": 1, "type": "text-to-image",
                "price": price}, now, Events()) == "reserved"
            db.commit()
    return user, order.id, jobs


def race_refund_release_capture(factory, settings, user, order_id, jobs) -> list:
    from services.billing import orders

    def work(i):
        with factory() as db:
            when = datetime.now(UTC)
            if i == 0:
                result = orders.refund(db, settings, order_id, {
                    "amount_refunded": 500, "currency": "usd"}, when, Events())
            else:
                outcome, job = (("failed", jobs["failing"]) if i == 1
                                else ("succeeded", jobs["succeeding"]))
                result = saga.job_finished(db, {"job_id": job, "user_id": user, "attempt": 1},
                                           outcome, when, Events())
            db.commit()
            return result

    return run_together(3, work)


def test_a_refund_racing_the_release_and_capture_of_its_held_credits(factory):
    """A full refund of a pack while two jobs hold some of it, one failing and
    one succeeding at the same moment: in every interleaving the refund takes
    back all but what the succeeding job spent, once, and the audit is clean."""
    from services.billing.models import Order

    settings = BillingSettings()
    for _ in range(5):
        user, order_id, jobs = paid_pack_with_two_holds(factory, settings)
        results = race_refund_release_capture(factory, settings, user, order_id, jobs)
        assert results == ["refunded", "released", "captured"]
        with factory() as db:
            account = db.get(Account, user)
            assert (account.available, account.held) == (50, 0)
            order = db.get(Order, order_id)
            assert (order.credits_reversed, order.credits_pending) == (80, 0)
            assert audit.verify_ledger(db, user)["problems"] == []
