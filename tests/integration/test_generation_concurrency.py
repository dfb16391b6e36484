"""The per-user active-job cap under real concurrency on PostgreSQL: threads,
each with its own session and connection, submit for one user at the same
moment, the way several generation workers (or replicas) would. Whatever the
interleaving, no more jobs are active than the cap allows."""

from __future__ import annotations

import threading
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import func, select, text, update
from sqlalchemy.orm import sessionmaker

from services.common.contracts.generation import ACTIVE, JobState
from services.common.errors import DomainError
from services.common.idempotency import request_hash
from services.generation import jobs
from services.generation.models import Job, SubmitLock
from services.generation.settings import GenerationSettings
from tests.conftest import wait_for
from tests.integration.test_billing_concurrency import Events, run_together

pytestmark = pytest.mark.integration

THREADS = 12
CAP = 3
REQUEST = {"type": "text-to-image", "prompt": "a red fox", "negative_prompt": None, "n": 1,
           "size": "512x512", "seed": 1, "strength": None, "source_image_id": None,
           "template": None, "inputs": None, "duration_s": None, "webhook_url": None}
EXPANSION = {"prompt": "a red fox", "negative_prompt": None, "shots": []}


@pytest.fixture(scope="module")
def factory(make_migrated_engine):
    engine = make_migrated_engine("generation", pool_size=THREADS + 2)
    return sessionmaker(bind=engine, expire_on_commit=False)


def submitter(factory, user, events, key=None):
    settings = GenerationSettings(max_active_jobs_per_user=CAP)

    def submit(i):
        with factory() as db:
            try:
                job, created = jobs.submit(db, settings, user, REQUEST, EXPANSION, 1, key,
                                           request_hash(REQUEST), datetime.now(UTC), events)
                db.commit()
                return ("created" if created else "repeat", job.id)
            except DomainError as exc:
                db.rollback()
                return (exc.code, None)

    return submit


def active_jobs(factory, user) -> int:
    with factory() as db:
        return db.scalar(select(func.count()).select_from(Job)
                         .where(Job.user_id == user, Job.status.in_(ACTIVE)))


def test_parallel_submits_cannot_get_past_the_cap(factory):
    user, events = uuid.uuid4(), Events()
    results = run_together(THREADS, submitter(factory, user, events))
    outcomes = sorted(outcome for outcome, _ in results)
    assert outcomes == ["created"] * CAP + ["rate_limited"] * (THREADS - CAP), results
    assert active_jobs(factory, user) == CAP
    assert len([kind for kind, _ in events.seen if kind == "job_requested"]) == CAP
    with factory() as db:  # the locks lived only as long as their transactions
        assert db.scalar(select(func.count()).select_from(SubmitLock)) == 0


def test_another_users_submits_are_not_held_by_a_full_queue(factory):
    full, other, events = uuid.uuid4(), uuid.uuid4(), Events()
    run_together(CAP + 1, submitter(factory, full, events))
    results = run_together(CAP, submitter(factory, other, events))
    assert [outcome for outcome, _ in results] == ["created"] * CAP
    assert (active_jobs(factory, full), active_jobs(factory, other)) == (CAP, CAP)


def test_parallel_submits_with_one_idempotency_key_make_one_job(factory):
    user, events = uuid.uuid4(), Events()
    results = run_together(THREADS, submitter(factory, user, events, key="same-key"))
    assert sorted(outcome for outcome, _ in results) == ["created"] + ["repeat"] * (THREADS - 1)
    assert len({job_id for _, job_id in results}) == 1
    assert active_jobs(factory, user) == 1


def lock_waits(factory) -> int:
    """Sessions of this database waiting for a lock (asked afresh each time:
    a transaction sees one snapshot of pg_stat_activity)."""
    with factory() as db:
        return db.execute(text("SELECT count(*) FROM pg_stat_activity WHERE "
                               "wait_event_type = 'Lock' AND datname = current_database()")
                          ).scalar()


def test_two_replicas_requeueing_at_once_each_report_only_the_jobs_they_moved(factory):
    """Recovery publishes ``job_requeued`` for what its own transaction moved:
    a second replica that read the same expired leases and then waited for
    the first one's row locks moves nothing and reports nothing."""
    user, events = uuid.uuid4(), Events()
    made = [job_id for _, job_id in (submitter(factory, user, events)(i) for i in range(CAP))]
    now = datetime.now(UTC)
    with factory() as db:
        db.execute(update(Job).where(Job.id.in_(made)).values(
            status=JobState.RUNNING, lease_token="a worker killed",
            lease_expires_at=now - timedelta(seconds=5)))
        db.commit()
    with factory() as first, factory() as second:
        moved_first = jobs.requeue_expired_leases(first, now)  # rows locked until its commit
        later: list = []
        waiter = threading.Thread(target=lambda: later.append(
            jobs.requeue_expired_leases(second, now)))
        waiter.start()
        try:
            wait_for(lambda: lock_waits(factory) >= 1, 30, 0.05,
                     "the second replica waiting for the first's row locks")
        finally:
            first.commit()
            waiter.join(30)
        second.commit()
    assert sorted(moved_first) == sorted(made)
    assert later == [[]]
    with factory() as db:
        assert {j.status for j in db.scalars(select(Job).where(Job.id.in_(made)))} == {"reserved"}
