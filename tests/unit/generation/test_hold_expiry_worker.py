"""A worker whose job's hold expired while it ran: its success is refused
and the outputs it committed are deleted from storage (not delivered free)."""

from __future__ import annotations

import uuid
from datetime import timedelta

from services.common.errors import DomainError
from services.common.idempotency import request_hash
from services.common.ids import utcnow
from services.generation import jobs, runner
from services.generation.models import Job
from services.generation.settings import GenerationSettings

REQUEST = {"type": "text-to-image", "prompt": "a red fox", "negative_prompt": None, "n": 2,
           "size": "512x512", "seed": 1, "strength": None, "source_image_id": None,
           "template": None, "inputs": None, "duration_s": None, "webhook_url": None}


class Events(list):
    def __call__(self, event_type: str, data: dict) -> str:
        self.append((event_type, data))
        return str(uuid.uuid4())


class Storage:
    """Records deletions; the first one fails (the next are still tried)."""

    def __init__(self):
        self.deleted, self.failed = [], False

    def delete_object(self, owner_id, object_id):
        if not self.failed:
            self.failed = True
            raise DomainError("storage_unavailable", "try again", 503)
        self.deleted.append((owner_id, object_id))


def running_job(db, settings, events, hold_expires_at) -> Job:
    now = utcnow()
    job, _ = jobs.submit(db, settings, uuid.uuid4(), REQUEST, {"prompt": "a red fox"}, 8, None,
                         request_hash(REQUEST), now, events)
    jobs.credits_reserved(db, settings, {"job_id": job.id, "attempt": 1, "priority": 0,
                                         "hold_expires_at": now + timedelta(minutes=1)},
                          now, events)
    leased = jobs.claim_next(db, settings, now)
    leased.hold_expires_at = hold_expires_at
    db.commit()
    return leased


def run(db, monkeypatch, hold_expires_at, storage):
    settings, events = GenerationSettings(lease_seconds=60), Events()
    outputs = [str(uuid.uuid4()), str(uuid.uuid4())]
    monkeypatch.setattr(runner, "run", lambda *args: ("local", outputs))
    worker = runner.Worker(db, settings, router=None, storage=storage, dispatch=events)
    job = running_job(db, settings, events, hold_expires_at)
    worker.execute(job)
    return db.get(Job, job.id, populate_existing=True), outputs, events


def test_outputs_of_a_job_whose_hold_expired_are_deleted(db, monkeypatch):
    storage = Storage()
    job, outputs, events = run(db, monkeypatch, utcnow() - timedelta(seconds=1), storage)
    assert (job.status, job.error_code, job.output_ids) == ("failed", "hold_expired", [])
    assert storage.failed and storage.deleted == [(str(job.user_id), outputs[1])]
    assert "job_succeeded" not in [kind for kind, _ in events]


def test_outputs_of_a_job_within_its_hold_are_delivered(db, monkeypatch):
    storage = Storage()
    job, outputs, events = run(db, monkeypatch, utcnow() + timedelta(minutes=5), storage)
    assert (job.status, job.output_ids) == ("succeeded", outputs)
    assert storage.deleted == []
    assert [kind for kind, _ in events][-1] == "job_succeeded"
