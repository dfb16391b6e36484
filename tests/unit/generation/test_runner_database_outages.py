"""A job meeting an outage of generation's own database (the server
restarting): a progress write is skipped, the waiting stage not recorded does
not stop the wait, the final write is retried through it within the bound
(and a success whose commit went through before its answer was lost is not
written twice), a disclosure row waits the outage out. On a fake clock; the
restart itself runs in tests/integration/test_postgres_restart.py."""

from __future__ import annotations

import functools
import uuid
from types import SimpleNamespace

import pytest
from sqlalchemy import exc as sa_exc

from services.generation import disclosures, runner
from services.generation.providers.base import ProviderRequest
from services.generation.settings import GenerationSettings
from tests.unit.generation.test_runner import SPEC, Clock


def down() -> sa_exc.InterfaceError:
    return sa_exc.InterfaceError("UPDATE jobs", {}, Exception("Can't create a connection"))


class Db:
    """A worker's session: counts rollbacks and commits; after ``ok_first``
    commits, ``fail_commits`` commits raise an outage."""

    def __init__(self, fail_commits: int = 0, ok_first: int = 0):
        self.fail_commits, self.commits, self.rollbacks = fail_commits, 0, 0
        self.ok_first = ok_first

    def commit(self):
        if self.ok_first:
            self.ok_first -= 1
        elif self.fail_commits:
            self.fail_commits -= 1
            raise down()
        self.commits += 1

    def rollback(self):
        self.rollbacks += 1


@pytest.fixture
def clock(monkeypatch):
    clock = Clock()
    monkeypatch.setattr(runner, "OutagePolicy",
                        functools.partial(runner.OutagePolicy, clock=clock, sleep=clock.sleep))
    return clock


def worker(db, retry_seconds=60.0) -> runner.Worker:
    return runner.Worker(db, GenerationSettings(infra_retry_seconds=retry_seconds), None, None,
                         lambda *_: None)


def test_the_final_write_is_retried_through_an_outage(clock):
    db = Db(fail_commits=2)
    writes = []

    def write():
        writes.append(1)
        db.commit()

    worker(db).finish(SPEC, "record the success", write)
    assert (len(writes), db.commits, db.rollbacks) == (3, 1, 2)
    assert clock.sleeps == [1.0, 2.0]


def test_past_the_bound_the_job_is_left_to_its_lease(clock):
    db = Db(fail_commits=100)
    worker(db, retry_seconds=20).finish(SPEC, "record the success", db.commit)  # no raise
    assert db.commits == 0 and sum(clock.sleeps) == pytest.approx(20)


def test_a_bug_in_the_final_write_is_not_retried(clock):
    db = Db()

    def write():
        raise ValueError("a bug")

    with pytest.raises(ValueError):
        worker(db).finish(SPEC, "record the success", write)
    assert db.rollbacks == 1 and clock.sleeps == []


def execute(monkeypatch, db, **worker_patches) -> list:
    """A worker on ``db`` runs a job whose run succeeds at once; returns the
    success writes it made."""
    w = worker(db)
    succeeded = []
    monkeypatch.setattr(w, "succeed", lambda *args: (succeeded.append(args), db.commit()))
    monkeypatch.setattr(w, "disclosures", lambda job: None)
    for name, value in worker_patches.items():
        monkeypatch.setattr(w, name, value)
    job = SimpleNamespace(id=uuid.UUID(SPEC.id), user_id=uuid.UUID(SPEC.user_id), attempt=1,
                          lease_token="t")
    monkeypatch.setattr(runner, "run", lambda *args: ("openai", ["o1"]))
    monkeypatch.setattr(runner.privacy, "refused_regions", lambda *args: frozenset())
    monkeypatch.setattr(runner.JobSpec, "of", classmethod(lambda cls, job, regions: SPEC))
    monkeypatch.setattr(runner.Lease, "__enter__", lambda self: self)
    monkeypatch.setattr(runner.Lease, "__exit__", lambda self, *exc: None)
    w.execute(job)
    return succeeded


def test_a_success_committed_before_its_answer_was_lost_is_not_written_again(monkeypatch, clock):
    """jobs.succeed's commit went through but the connection died before it
    answered: the retry finds the job succeeded with these outputs and stops
    (writing again would find no lease and delete the delivered outputs)."""
    db = Db(fail_commits=1, ok_first=1)  # the first: the read's end before the run
    succeeded = execute(monkeypatch, db, succeeded_already=lambda job, ids: True)
    assert len(succeeded) == 1 and db.rollbacks == 1 and db.commits == 1


def test_an_outage_as_the_read_before_the_run_ends_does_not_stop_the_job(monkeypatch):
    """Ending the read of the refused regions wrote nothing: the job runs."""
    db = Db(fail_commits=1)
    assert len(execute(monkeypatch, db)) == 1
    assert (db.rollbacks, db.commits) == (1, 1)


def test_a_progress_write_is_skipped_during_an_outage(monkeypatch):
    db = Db(fail_commits=1)
    monkeypatch.setattr(runner.jobs, "record_progress", lambda *args: True)
    lease = runner.Lease(db, GenerationSettings(lease_seconds=9), SPEC.id, "t",
                         clock=iter([0.0, 5.0]).__next__)
    lease.progress(0.5, "uploading")  # skipped, no raise
    assert (db.rollbacks, lease.last_write) == (1, None)
    lease.progress(0.6, "uploading")  # the next one is written
    assert (db.commits, lease.last_write) == (1, 5.0)


def test_the_wait_goes_on_when_its_stage_cannot_be_recorded():
    clock = Clock()
    answers = [down(), "done"]

    def step():
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    def waiting(stage):
        raise down()

    steps = runner.Steps(SPEC.id, runner.OutagePolicy(retry_seconds=30, clock=clock,
                                                      sleep=clock.sleep), waiting)
    assert steps.run("commit the outputs", step) == "done"
    assert clock.sleeps == [1.0]


def test_a_disclosure_waits_a_database_outage_out(monkeypatch):
    added = []
    failures = [down(), down()]

    class Session:
        def __init__(self, bind):
            pass

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def add(self, row):
            self.row = row

        def commit(self):
            if failures:
                raise failures.pop(0)
            added.append(self.row)

    monkeypatch.setattr(disclosures, "Session", Session)
    sleeps = []
    recorder = disclosures.Recorder(None, SPEC.user_id, SPEC.id, 1, lambda name: "us",
                                    lambda name: True, retry_seconds=60, sleep=sleeps.append)
    recorder("openai", ProviderRequest(job_type="text-to-image", prompt="a fox"), None)
    assert len(added) == 1 and added[0].provider == "openai"
    assert sleeps == [1.0, 2.0]
