"""The per-user active-job cap under real concurrency on PostgreSQL: threads,
each with its own session and connection, submit for one user at the same
moment, the way several generation workers (or replicas) would. Whatever the
interleaving, no more jobs are active than the cap allows."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import sessionmaker

from services.common.contracts.generation import ACTIVE
from services.common.errors import DomainError
from services.common.idempotency import request_hash
from services.generation import jobs
from services.generation.models import Job, SubmitLock
from services.generation.settings import GenerationSettings
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
