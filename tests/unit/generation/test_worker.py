"""runner.Worker and runner.Lease on a real (SQLite, migrated) database: the
run queue, the lease (heartbeat renewals, throttled progress writes, a lost
lease stopping the job quietly) and how a run ends. The provider run itself
(runner.run) is a stand-in here; tests/unit/generation/test_runner.py covers it.
"""

from __future__ import annotations

import threading
import uuid
from datetime import timedelta

import pytest
from sqlalchemy import update

from services.common.idempotency import request_hash
from services.common.ids import utcnow
from services.generation import jobs, runner
from services.generation.models import Job
from services.generation.settings import GenerationSettings
from tests.unit.events import Events

SETTINGS = GenerationSettings(lease_seconds=60)
REQUEST = {"type": "text-to-image", "prompt": "a red fox", "negative_prompt": None, "n": 1,
           "size": "512x512", "seed": 1, "strength": None, "source_image_id": None,
           "template": None, "inputs": None, "duration_s": None, "webhook_url": None}


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def reserved_job(db, events, priority: int = 0) -> Job:
    now = utcnow()
    job, _ = jobs.submit(db, SETTINGS, uuid.uuid4(), REQUEST, {"prompt": "a red fox"}, 1, None,
                         request_hash(REQUEST), now, events)
    jobs.credits_reserved(db, SETTINGS, {"job_id": job.id, "attempt": 1, "priority": priority,
                                         "hold_expires_at": now + timedelta(hours=1)}, now, events)
    db.commit()
    return job


def leased_job(db, events) -> Job:
    reserved_job(db, events)
    job = jobs.claim_next(db, SETTINGS, utcnow())
    db.commit()
    return job


def steal(db, job: Job) -> None:
    """Another worker took the job after this one's lease ran out."""
    db.execute(update(Job).where(Job.id == job.id).values(lease_token="another worker"))
    db.commit()


def reread(db, job: Job) -> Job:
    return db.get(Job, job.id, populate_existing=True)


@pytest.fixture
def events():
    return Events("generation")


# ---------------------------------------------------------------- the lease


def test_progress_is_written_at_most_once_per_interval(db, events):
    job = leased_job(db, events)
    clock = Clock()
    lease = runner.Lease(db, SETTINGS, job.id, job.lease_token, clock=clock)
    lease.progress(0.1, "preparing")
    assert (reread(db, job).progress, reread(db, job).stage) == (0.1, "preparing")
    clock.now += runner.PROGRESS_WRITE_INTERVAL_SECONDS / 2
    lease.progress(0.2, "rendering")
    assert reread(db, job).progress == 0.1  # too soon: not written
    clock.now += runner.PROGRESS_WRITE_INTERVAL_SECONDS
    lease.progress(0.3, "rendering")
    assert (reread(db, job).progress, reread(db, job).stage) == (0.3, "rendering")


def test_a_progress_write_that_finds_the_lease_gone_raises_lease_lost(db, events):
    job = leased_job(db, events)
    lease = runner.Lease(db, SETTINGS, job.id, job.lease_token)
    steal(db, job)
    with pytest.raises(runner.LeaseLost):
        lease.progress(0.5, "rendering")


def test_the_heartbeat_renews_the_lease_on_its_own_session_until_it_is_lost(db, events):
    job = leased_job(db, events)
    lease = runner.Lease(db, SETTINGS, job.id, job.lease_token)
    before = reread(db, job).lease_expires_at
    assert lease.renew() is True
    assert reread(db, job).lease_expires_at >= before
    steal(db, job)
    assert lease.renew() is False


def test_a_heartbeat_that_lost_the_lease_stops_the_next_progress(db, events):
    job = leased_job(db, events)
    lease = runner.Lease(db, SETTINGS, job.id, job.lease_token)
    lease.heartbeat.alive = False
    with pytest.raises(runner.LeaseLost):
        lease.progress(0.5, "rendering")


# ---------------------------------------------------------------- the worker


def worker(db, events, storage=None) -> runner.Worker:
    return runner.Worker(db, SETTINGS, router=None, storage=storage, dispatch=events)


class DeletingStorage:
    def __init__(self):
        self.deleted = []

    def delete_object(self, user_id, object_id):
        self.deleted.append(object_id)


def test_a_lost_lease_leaves_the_job_to_the_worker_that_has_it(db, events, monkeypatch):
    """Found at a progress write, or at the final write when the job ran
    within the first progress interval: its outputs are not delivered."""
    job = leased_job(db, events)
    output = str(uuid.uuid4())

    def run(spec, router, storage, progress, timeout, outages, on_attempt):
        steal(db, job)
        progress(0.5, "rendering")
        return "local", [output]

    monkeypatch.setattr(runner, "run", run)
    events.clear()
    storage = DeletingStorage()
    worker(db, events, storage).execute(job)
    row = reread(db, job)
    assert (row.status, row.lease_token) == ("running", "another worker")
    assert events.seen == []
    assert storage.deleted == [output]


def test_the_claim_is_the_first_progress_write(db, events, monkeypatch):
    """A job's claim wrote its lease and stage: progress reported within the
    next interval is not written again (one UPDATE and commit less per job),
    and the run starts with no transaction open on the worker's session."""
    job = leased_job(db, events)
    writes = []
    record = runner.jobs.record_progress
    monkeypatch.setattr(runner.jobs, "record_progress",
                        lambda *args: writes.append(args[4]) or record(*args))

    in_transaction = []

    def run(spec, router, storage, progress, timeout, outages, on_attempt):
        in_transaction.append(db.in_transaction())
        progress(0.02, "preparing")
        progress(0.85, "uploading")
        return "local", []

    monkeypatch.setattr(runner, "run", run)
    worker(db, events).execute(job)
    assert writes == []
    # while the job runs, the worker's session holds no connection of the pool
    assert in_transaction == [False]
    assert reread(db, job).status == "succeeded"


def test_an_unexpected_error_fails_the_job_at_once_without_its_text(db, events, monkeypatch):
    job = leased_job(db, events)

    def run(*args):
        raise KeyError("https://secret.example/?token=abc")

    monkeypatch.setattr(runner, "run", run)
    worker(db, events).execute(job)
    row = reread(db, job)
    assert (row.status, row.error_code) == ("failed", "internal_error")
    assert "secret" not in row.error_message
    assert [e["reason"] for e in events.of("job_failed")] == ["internal_error"]


def test_run_next_runs_reserved_jobs_most_urgent_first_while_a_slot_is_free(db, events,
                                                                            monkeypatch):
    low, high = reserved_job(db, events, priority=0), reserved_job(db, events, priority=10)
    ran = []
    monkeypatch.setattr(runner, "run", lambda spec, *args: (ran.append(spec.id), ("local", []))[1])
    slots = threading.BoundedSemaphore(1)
    worker(db, events).run_next(slots)
    assert ran == [str(high.id), str(low.id)]
    assert {reread(db, low).status, reread(db, high).status} == {"succeeded"}
    assert slots.acquire(blocking=False)  # the slot was given back


def test_run_next_without_a_free_slot_runs_nothing(db, events, monkeypatch):
    job = reserved_job(db, events)
    monkeypatch.setattr(runner, "run", lambda *args: pytest.fail("ran without a slot"))
    slots = threading.BoundedSemaphore(1)
    slots.acquire()
    worker(db, events).run_next(slots)
    assert reread(db, job).status == "reserved"
