"""The job state machine on SQLite: submit, the saga's transitions, the run
queue with leases, cancel, replay and prompt redaction."""

from __future__ import annotations

import dataclasses
import json
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import func, select

from services.common.errors import DomainError
from services.common.idempotency import request_hash
from services.generation import jobs
from services.generation.models import Job, SubmitLock, WebhookDelivery
from services.generation.settings import GenerationSettings

NOW = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)
REQUEST = {"type": "text-to-image", "prompt": "a red fox", "negative_prompt": None, "n": 1,
           "size": "512x512", "seed": 1, "strength": 0.6, "source_image_id": None,
           "template": None, "inputs": None, "duration_s": None, "webhook_url": None}
EXPANSION = {"prompt": "a red fox", "negative_prompt": None, "shots": []}


@pytest.fixture
def settings():
    return GenerationSettings(max_active_jobs_per_user=2, lease_seconds=60)


class Events(list):
    def __call__(self, event_type: str, data: dict) -> str:
        self.append((event_type, data))
        return str(uuid.uuid4())

    def types(self) -> list[str]:
        return [t for t, _ in self]


def submit(db, settings, user, events, key=None, request=REQUEST, now=NOW) -> Job:
    job, _ = jobs.submit(db, settings, user, request, EXPANSION, 3, key,
                         request_hash(request), now, events)
    db.commit()
    return job


def reserve(db, settings, job, events, priority=0, now=NOW) -> bool:
    ok = jobs.credits_reserved(db, settings, {"job_id": job.id, "attempt": job.attempt,
                                              "priority": priority}, now, events)
    db.commit()
    return ok


def refused(call, *args) -> DomainError:
    with pytest.raises(DomainError) as info:
        call(*args)
    return info.value


def test_submit_announces_the_job_with_its_price(db, settings):
    user, events = uuid.uuid4(), Events()
    job = submit(db, settings, user, events)
    assert (job.status, job.attempt, job.price, job.stage) == ("queued", 1, 3, "awaiting_credits")
    assert events == [("job_requested", {"job_id": job.id, "user_id": user, "attempt": 1,
                                         "type": "text-to-image", "price": 3})]


def test_the_active_job_cap_refuses_with_429(db, settings):
    user, events = uuid.uuid4(), Events()
    submit(db, settings, user, events)
    submit(db, settings, user, events)
    error = refused(submit, db, settings, user, events)
    assert (error.code, error.status, error.details["limit"]) == ("rate_limited", 429, 2)
    assert error.details["retry_after"] == settings.queue_retry_after_seconds
    submit(db, settings, uuid.uuid4(), events)  # another user is not affected
    # the submit lock lives only inside a submit's transaction, refused or not
    assert db.scalar(select(func.count()).select_from(SubmitLock)) == 0


def test_an_idempotency_key_returns_the_first_job_or_409_for_another_body(db, settings):
    user, events = uuid.uuid4(), Events()
    first = submit(db, settings, user, events, key="k")
    again, created = jobs.submit(db, settings, user, REQUEST, EXPANSION, 3, "k",
                                 request_hash(REQUEST), NOW, events)
    assert (again.id, created) == (first.id, False)
    other = {**REQUEST, "prompt": "a blue fox"}
    error = refused(jobs.submit, db, settings, user, other, EXPANSION, 3, "k",
                    request_hash(other), NOW, events)
    assert (error.code, error.status) == ("idempotency_key_reused", 409)
    assert events.types() == ["job_requested"]


def test_the_run_queue_takes_the_highest_priority_then_the_oldest(db, settings):
    events = Events()
    low = submit(db, settings, uuid.uuid4(), events)
    high = submit(db, settings, uuid.uuid4(), events)
    later_low = submit(db, settings, uuid.uuid4(), events)
    reserve(db, settings, low, events, 0, NOW)
    reserve(db, settings, later_low, events, 0, NOW + timedelta(seconds=1))
    reserve(db, settings, high, events, 5, NOW + timedelta(seconds=2))
    assert jobs.queue_position(db, db.get(Job, high.id)) == 1
    assert jobs.queue_position(db, db.get(Job, later_low.id)) == 3
    order = [jobs.claim_next(db, settings, NOW).id for _ in range(3)]
    assert order == [high.id, low.id, later_low.id]
    assert jobs.claim_next(db, settings, NOW) is None


def test_a_duplicate_reservation_changes_nothing(db, settings):
    events = Events()
    job = submit(db, settings, uuid.uuid4(), events)
    assert reserve(db, settings, job, events)
    assert not reserve(db, settings, job, events)
    assert db.get(Job, job.id).status == "reserved"


def test_a_reservation_for_a_cancelled_job_is_released_again(db, settings):
    user, events = uuid.uuid4(), Events()
    job = submit(db, settings, user, events)
    jobs.cancel(db, settings, user, job.id, NOW, events)
    db.commit()
    assert not reserve(db, settings, job, events)
    assert events.types() == ["job_requested", "job_cancelled", "job_cancelled"]


def test_only_the_lease_holder_finishes_a_job_and_a_lapsed_lease_requeues_it(db, settings):
    events = Events()
    job = submit(db, settings, uuid.uuid4(), events)
    reserve(db, settings, job, events)
    running = jobs.claim_next(db, settings, NOW)
    first_token = running.lease_token
    db.commit()
    assert jobs.record_progress(db, settings, job.id, first_token, 0.5, "rendering",
                                NOW + timedelta(seconds=30))
    # the worker goes silent past its renewed lease: the job is runnable again
    assert jobs.requeue_expired_leases(db, NOW + timedelta(seconds=89)) == []
    assert jobs.requeue_expired_leases(db, NOW + timedelta(seconds=91)) == [job.id]
    db.commit()
    second = jobs.claim_next(db, settings, NOW + timedelta(seconds=92))
    assert second.id == job.id and second.lease_token != first_token
    # the old worker wakes up: it can neither progress nor finish the job
    assert not jobs.record_progress(db, settings, job.id, first_token, 0.9, "x", NOW)
    assert not jobs.succeed(db, settings, job.id, first_token, [], "local", NOW, events)
    assert jobs.succeed(db, settings, job.id, second.lease_token, [uuid.uuid4()], "local", NOW,
                        events)
    db.commit()
    assert events.types().count("job_succeeded") == 1
    assert db.get(Job, job.id).status == "succeeded"


def test_running_and_finished_jobs_cannot_be_cancelled(db, settings):
    user, events = uuid.uuid4(), Events()
    job = submit(db, settings, user, events)
    reserve(db, settings, job, events)
    jobs.claim_next(db, settings, NOW)
    db.commit()
    error = refused(jobs.cancel, db, settings, user, job.id, NOW, events)
    assert (error.code, error.status) == ("not_cancellable", 409)
    error = refused(jobs.cancel, db, settings, uuid.uuid4(), job.id, NOW, events)
    assert (error.code, error.status) == ("not_found", 404)


def test_replay_starts_a_new_attempt_of_a_failed_job_only(db, settings):
    events = Events()
    job = submit(db, settings, uuid.uuid4(), events)
    reserve(db, settings, job, events)
    running = jobs.claim_next(db, settings, NOW)
    assert jobs.fail(db, settings, job.id, running.lease_token, "provider_unavailable", "down",
                     None, NOW, events)
    db.commit()
    replayed = jobs.replay(db, job.id, NOW, events)
    db.commit()
    assert (replayed.status, replayed.attempt, replayed.error_code) == ("queued", 2, None)
    assert events[-1] == ("job_requested", {"job_id": job.id, "user_id": job.user_id,
                                            "attempt": 2, "type": job.type, "price": 3})
    # a late reservation of attempt 1 is ignored
    assert not jobs.credits_reserved(db, settings, {"job_id": job.id, "attempt": 1,
                                                    "priority": 0}, NOW, events)
    error = refused(jobs.replay, db, job.id, NOW, events)
    assert (error.code, error.status) == ("not_replayable", 409)


def test_redacted_prompts_leave_the_job_when_it_ends_and_webhooks_never_carry_them(db, settings):
    settings = dataclasses.replace(settings, prompt_retention="redact")
    user, events = uuid.uuid4(), Events()
    job = submit(db, settings, user, events,
                 request={**REQUEST, "webhook_url": "https://hooks.example.com/x"})
    jobs.cancel(db, settings, user, job.id, NOW, events)
    db.commit()
    row = db.get(Job, job.id)
    assert (row.prompt, row.prompt_redacted) == (None, True)
    [delivery] = db.query(WebhookDelivery).all()
    assert delivery.job_status == "cancelled" and "fox" not in delivery.body
    error = refused(jobs.replay, db, job.id, NOW, events)
    assert error.code == "not_replayable"


def test_a_pages_queue_positions_match_each_jobs_own(db, settings):
    settings = dataclasses.replace(settings, max_active_jobs_per_user=100)
    user, events = uuid.uuid4(), Events()
    page = [submit(db, settings, user, events) for _ in range(6)]
    for index, job in enumerate(page[:4]):  # two stay queued (waiting for credits)
        reserve(db, settings, job, events, priority=index % 2, now=NOW + timedelta(seconds=index))
    jobs.claim_next(db, settings, NOW)  # the most urgent one runs: no position any more
    db.commit()
    rows = [db.get(Job, job.id) for job in page]
    assert jobs.queue_positions(db, rows) == {row.id: jobs.queue_position(db, row) for row in rows}
    assert sorted(p for p in jobs.queue_positions(db, rows).values() if p) == [1, 2, 3, 4, 4]


def test_a_job_rejected_at_submit_sends_no_webhook_and_a_cancelled_one_does(db, settings):
    user, events = uuid.uuid4(), Events()
    hooked = {**REQUEST, "webhook_url": "https://hooks.example.com/x"}
    rejected = submit(db, settings, user, events, request=hooked)
    assert jobs.credits_insufficient(db, settings, {"job_id": rejected.id, "attempt": 1,
                                                    "required": 4, "available": 1}, NOW, events)
    cancelled = submit(db, settings, user, events, request=hooked)
    jobs.cancel(db, settings, user, cancelled.id, NOW, events)
    db.commit()
    assert db.get(Job, rejected.id).status == "rejected"
    [delivery] = db.query(WebhookDelivery).all()
    assert (delivery.job_id, delivery.job_status) == (cancelled.id, "cancelled")
    assert delivery.receiver == "https://hooks.example.com:443"


def test_a_stored_error_is_shown_and_sent_without_signed_urls_or_internal_hosts(db, settings):
    """A row failed with a raw message (written before errors were cleaned,
    or by any writer): its view and its webhook body are cleaned anyway."""
    user, events = uuid.uuid4(), Events()
    job = submit(db, settings, user, events,
                 request={**REQUEST, "webhook_url": "https://hooks.example.com/x"})
    reserve(db, settings, job, events)
    running = jobs.claim_next(db, settings, NOW)
    raw = ("cannot upload an output: 403 Client Error: Forbidden for url: http://minio:9000/"
           "darkroom/objects/o?X-Amz-Credential=AKIAIOSFODNN7EXAMPLE&X-Amz-Signature=" + "ab" * 32)
    assert jobs.fail(db, settings, job.id, running.lease_token, "storage_unavailable", raw, None,
                     NOW, events)
    db.commit()
    row = db.get(Job, job.id)
    expected = "cannot upload an output: 403 Client Error: Forbidden for url: http://[internal]"
    assert jobs.view(row)["error"] == {"code": "storage_unavailable", "message": expected}
    [delivery] = db.query(WebhookDelivery).filter_by(job_status="failed").all()
    assert json.loads(delivery.body)["job"]["error"]["message"] == expected
    assert "AKIA" not in delivery.body and "minio" not in delivery.body


def test_a_job_sends_the_webhook_events_it_chose_once_per_attempt(db, settings):
    user, events = uuid.uuid4(), Events()
    hooked = {**REQUEST, "webhook_url": "https://hooks.example.com/x"}
    every = submit(db, settings, user, events, request=hooked)
    chosen = submit(db, settings, user, events,
                    request={**hooked, "webhook_events": ["started", "completed", "started"]})
    assert db.get(Job, chosen.id).webhook_events == ["started", "completed"]
    assert jobs.view(db.get(Job, every.id))["webhook_events"] is None  # all of them
    for job in (every, chosen):
        reserve(db, settings, job, events)
        running = jobs.claim_next(db, settings, NOW)
        db.commit()
        if running.id == every.id:  # the first start: started; a requeued one's: none again
            assert jobs.requeue_expired_leases(db, NOW + timedelta(seconds=61)) == [every.id]
            db.commit()
            running = jobs.claim_next(db, settings, NOW + timedelta(seconds=62))
        assert jobs.fail(db, settings, running.id, running.lease_token, "provider_error", "x",
                         None, NOW + timedelta(seconds=70), events)
        db.commit()

    def sent(job) -> list[tuple[str, str]]:
        rows = db.query(WebhookDelivery).filter_by(job_id=job.id).order_by(
            WebhookDelivery.created_at).all()
        return [(row.job_status, json.loads(row.body)["type"]) for row in rows]

    assert sent(every) == [("running", "job.started"), ("failed", "job.failed")]
    assert sent(chosen) == [("running", "job.started")]  # it did not choose failed
    started = json.loads(db.query(WebhookDelivery).filter_by(job_id=every.id,
                                                             job_status="running").one().body)
    assert started["job"]["status"] == "running" and "fox" not in json.dumps(started)


# ------------------------------------------------------------------ holds that expire


def reserve_until(db, settings, job, events, expires_at, now=NOW) -> bool:
    ok = jobs.credits_reserved(db, settings, {"job_id": job.id, "attempt": job.attempt,
                                              "priority": 0, "hold_expires_at": expires_at},
                               now, events)
    db.commit()
    return ok


def released(db, settings, job, events, reason="expired", now=NOW, attempt=None) -> bool:
    ok = jobs.credits_released(db, settings, {
        "job_id": job.id, "user_id": job.user_id, "attempt": attempt or job.attempt,
        "amount": 3, "reason": reason}, now, events)
    db.commit()
    return ok


def assert_hold_expired(db, job_id, events):
    job = db.get(Job, job_id, populate_existing=True)
    assert (job.status, job.error_code, job.lease_token) == ("failed", "hold_expired", None)
    view = jobs.view(job)
    assert view["error"]["code"] == "hold_expired" and "replay" in view["error"]["message"]
    failed = [data for kind, data in events if kind == "job_failed" and data["job_id"] == job_id]
    assert failed and failed[-1]["reason"] == "hold_expired"


def test_a_job_whose_hold_expired_is_not_claimed_and_fails_then_replays(db, settings):
    events = Events()
    job = submit(db, settings, uuid.uuid4(), events)
    assert reserve_until(db, settings, job, events, NOW + timedelta(hours=6))
    later = NOW + timedelta(hours=6, seconds=1)
    assert jobs.claim_next(db, settings, later) is None
    assert jobs.fail_expired_holds(db, settings, NOW + timedelta(hours=5), events) == 0
    assert jobs.fail_expired_holds(db, settings, later, events) == 1
    db.commit()
    assert_hold_expired(db, job.id, events)
    assert jobs.fail_expired_holds(db, settings, later, events) == 0
    # the replay holds the price again and runs
    replayed = jobs.replay(db, job.id, later, events)
    db.commit()
    assert (replayed.status, replayed.attempt, replayed.hold_expires_at) == ("queued", 2, None)
    assert events[-1][0] == "job_requested" and events[-1][1]["attempt"] == 2
    reserve_until(db, settings, replayed, events, later + timedelta(hours=6), now=later)
    assert jobs.claim_next(db, settings, later).id == job.id


def test_a_hold_released_as_expired_fails_a_waiting_queued_or_running_job(db, settings):
    events = Events()
    queued = submit(db, settings, uuid.uuid4(), events)
    waiting = submit(db, settings, uuid.uuid4(), events)
    running = submit(db, settings, uuid.uuid4(), events)
    reserve(db, settings, waiting, events, priority=0)
    reserve(db, settings, running, events, priority=5)
    leased = jobs.claim_next(db, settings, NOW)
    db.commit()
    assert leased.id == running.id
    # releases for failures and cancellations are this service's own: nothing changes
    assert not released(db, settings, waiting, events, reason="failed")
    assert db.get(Job, waiting.id).status == "reserved"
    for job in (queued, waiting, running):
        assert released(db, settings, job, events)
        assert_hold_expired(db, job.id, events)
    assert not released(db, settings, waiting, events)  # a duplicate changes nothing
    # the running job's worker finishes: refused, nothing delivered
    assert not jobs.succeed(db, settings, running.id, leased.lease_token, [uuid.uuid4()],
                            "local", NOW, events)
    assert "job_succeeded" not in events.types()
    # the queued job's reservation arrives late: it does not run
    assert not reserve(db, settings, queued, events)
    assert jobs.claim_next(db, settings, NOW) is None


def test_a_job_finishing_after_its_hold_expired_is_not_delivered(db, settings):
    events = Events()
    job = submit(db, settings, uuid.uuid4(), events)
    reserve_until(db, settings, job, events, NOW + timedelta(hours=6))
    leased = jobs.claim_next(db, settings, NOW)
    db.commit()
    assert not jobs.succeed(db, settings, job.id, leased.lease_token, [uuid.uuid4()], "local",
                            NOW + timedelta(hours=6), events)
    db.commit()
    assert_hold_expired(db, job.id, events)
    assert "job_succeeded" not in events.types()
    assert db.get(Job, job.id).output_ids == []


def test_operators_find_jobs_by_last_change_either_way(db, settings):
    events = Events()
    made = [submit(db, settings, uuid.uuid4(), events, now=NOW + timedelta(minutes=i))
            for i in range(3)]
    for i, job in enumerate(made):
        job.updated_at = NOW + timedelta(minutes=10 - i)  # the first changed last
    db.commit()
    oldest = jobs.find_jobs(db, None, None, None, 2)
    newest = jobs.find_jobs(db, None, None, None, 2, newest_first=True)
    assert [j.id for j in oldest] == [made[2].id, made[1].id]
    assert [j.id for j in newest] == [made[0].id, made[1].id]  # the limit keeps the newest
    since = jobs.find_jobs(db, None, NOW + timedelta(minutes=9), None, 5, newest_first=True)
    assert since == [made[0], made[1]]
