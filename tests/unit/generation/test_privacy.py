"""The generation service's part of privacy: the restriction that stops new
jobs, the jobs and webhook deliveries in an export and an erasure (which
waits for running jobs), and the schedule it publishes."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest

from services.common.errors import DomainError
from services.generation import privacy as privacy_data
from services.generation.models import ErasurePending, Job, RestrictedUser, WebhookDelivery
from services.generation.settings import GenerationSettings

NOW = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)
SETTINGS = GenerationSettings()


def add_job(db, user_id, status="succeeded", prompt="a red fox") -> Job:
    job = Job(id=uuid.uuid4(), user_id=user_id, type="text-to-image", status=status, attempt=1,
              prompt=prompt, params={"n": 1}, price=2, priority=0, progress=1.0, stage="done",
              output_ids=[str(uuid.uuid4())], created_at=NOW, updated_at=NOW)
    db.add(job)
    db.add(WebhookDelivery(job_id=job.id, user_id=user_id, attempt=1, job_status=status,
                           url="https://hooks.example/x", body="{}", status="delivered", tries=1,
                           next_attempt_at=NOW, created_at=NOW))
    db.commit()
    return job


def test_a_restricted_user_cannot_submit(db):
    user = uuid.uuid4()
    privacy_data.check_not_restricted(db, user)  # no record: not restricted
    assert privacy_data.apply_restriction(db, user, True, NOW)
    db.commit()
    with pytest.raises(DomainError) as info:
        privacy_data.check_not_restricted(db, user)
    assert (info.value.status, info.value.code) == (403, "processing_restricted")
    # an older event arriving late changes nothing; a newer one lifts it
    assert privacy_data.apply_restriction(db, user, False, NOW - timedelta(seconds=1)) is False
    assert privacy_data.is_restricted(db, user)
    assert privacy_data.apply_restriction(db, user, False, NOW + timedelta(seconds=1))
    db.commit()
    privacy_data.check_not_restricted(db, user)
    privacy_data.check_not_restricted(db, uuid.uuid4())


def test_the_export_holds_the_users_jobs_and_deliveries_only(db):
    user, other = uuid.uuid4(), uuid.uuid4()
    job = add_job(db, user, prompt="a lighthouse")
    add_job(db, other, prompt="someone else's")
    data = privacy_data.export(db, SETTINGS, user)
    assert [(j["id"], j["prompt"]) for j in data["jobs"]] == [(str(job.id), "a lighthouse")]
    assert data["webhook_deliveries"][0]["url"] == "https://hooks.example/x"
    assert "body" not in data["webhook_deliveries"][0]
    assert {"response_status", "last_attempt_at"} <= set(data["webhook_deliveries"][0])
    assert data["jobs"][0]["webhook_events"] is None  # every event
    assert data["processing_restricted"] is False


def test_erasure_waits_for_running_jobs_then_deletes_everything(db):
    user, other = uuid.uuid4(), uuid.uuid4()
    add_job(db, user)
    running = add_job(db, user, status="running")
    add_job(db, other)
    privacy_data.apply_restriction(db, user, True, NOW)
    db.commit()
    with pytest.raises(privacy_data.JobsRunning):
        privacy_data.erase(db, SETTINGS, user, NOW)
    db.rollback()
    db.get(Job, running.id).status = "failed"
    db.commit()
    assert privacy_data.erase(db, SETTINGS, user, NOW).tables == {
        "webhook_deliveries": 2, "disclosures": 0, "jobs": 2, "restricted_users": 1,
        "refused_regions": 0}
    db.commit()
    assert db.query(Job).filter(Job.user_id == user).count() == 0
    assert db.get(RestrictedUser, user) is None
    assert db.query(Job).filter(Job.user_id == other).count() == 1
    assert set(privacy_data.erase(db, SETTINGS, user, NOW).tables.values()) == {0}


def refused_submit(db, user) -> DomainError:
    with pytest.raises(DomainError) as info:
        privacy_data.check_no_erasure_pending(db, user)
    return info.value


def test_no_job_while_an_erasure_is_pending_and_again_once_it_is_cancelled(db):
    user = uuid.uuid4()
    privacy_data.check_no_erasure_pending(db, user)  # no record: nothing pending
    assert privacy_data.apply_erasure_pending(db, user, True, NOW)
    db.commit()
    error = refused_submit(db, user)
    assert (error.status, error.code) == (403, "erasure_pending")
    # a late, older cancellation changes nothing; a newer one allows jobs again
    assert privacy_data.apply_erasure_pending(db, user, False, NOW - timedelta(seconds=1)) is False
    assert privacy_data.apply_erasure_pending(db, user, False, NOW + timedelta(seconds=1))
    db.commit()
    privacy_data.check_no_erasure_pending(db, user)


def test_a_job_submitted_while_the_erasure_runs_is_erased_by_the_recheck(db):
    user = uuid.uuid4()
    add_job(db, user)
    # the erasure's first pass refuses new jobs from now on, even if the
    # erasure_scheduled event has not arrived (or arrives later)
    assert privacy_data.erase(db, SETTINGS, user, NOW).tables["jobs"] == 1
    db.commit()
    assert refused_submit(db, user).code == "erasure_pending"
    assert privacy_data.apply_erasure_pending(db, user, True, NOW - timedelta(hours=1)) is False
    # a submit that passed its check just before the first pass committed
    add_job(db, user, status="queued")
    tables = privacy_data.erase(db, SETTINGS, user, NOW, recheck=True).tables
    db.commit()
    assert tables == {"webhook_deliveries": 1, "disclosures": 0, "jobs": 1, "restricted_users": 0,
                      "refused_regions": 0, "erasure_pending": 1}
    assert db.query(Job).filter(Job.user_id == user).count() == 0
    # nothing of the user is left (counted in the database: the bulk delete
    # leaves the session's copy of the row in its identity map)
    assert db.query(ErasurePending).filter(ErasurePending.user_id == user).count() == 0


def test_the_schedule_says_what_happens_to_prompts():
    keep = {i["data"]: i for i in privacy_data.retention_items(GenerationSettings())}
    redact = {i["data"]: i for i in privacy_data.retention_items(
        GenerationSettings(prompt_retention="redact"))}
    assert "until the account is erased" in keep["prompts"]["kept"]
    assert "removed from each job when it ends" in redact["prompts"]["kept"]
