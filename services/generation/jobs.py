"""Jobs: submit, the saga's transitions, the run queue, cancel and replay.

Every function works in the caller's transaction and leaves the commit to it
(the service commits after dispatching, so the job's state and the events
that announce it are one transaction through the outbox).

Transitions are conditional updates (``WHERE status = ...``), so two
deliveries of one event, or two workers, can never both move a job: the one
that loses sees zero rows and does nothing.
"""

from __future__ import annotations

import bisect
import json
import logging
import uuid
from datetime import datetime, timedelta

from sqlalchemy import and_, delete, func, insert, or_, select, update
from sqlalchemy.orm import Session
from sqlalchemy.orm.attributes import set_committed_value

from services.common import metrics
from services.common.contracts.generation import (
    ACTIVE,
    FINAL,
    WEBHOOK_EVENT_OF_STATE,
    WEBHOOK_EVENTS,
    JobState,
)
from services.common.errors import conflict, not_found, rate_limited
from services.common.ids import client_id, isoformat, new_id
from services.common.messaging import Dispatch
from services.common.pagination import paginate
from services.common.races import first_wins
from services.generation import error_text, webhooks
from services.generation.models import Job, SubmitLock, WebhookDelivery
from services.generation.settings import GenerationSettings

log = logging.getLogger(__name__)

# the stage a job shows while it is not running
STAGES = {JobState.QUEUED: "awaiting_credits", JobState.RESERVED: "queued",
          JobState.SUCCEEDED: "done", JobState.FAILED: "failed", JobState.REJECTED: "rejected",
          JobState.CANCELLED: "cancelled"}


# ------------------------------------------------------------------ submit


def find_idempotent(db: Session, user_id: uuid.UUID, key: str | None, digest: str) -> Job | None:
    """The job an earlier request with this Idempotency-Key created (409
    ``idempotency_key_reused`` when that request had another body)."""
    if not key:
        return None
    job = db.scalars(select(Job).where(Job.user_id == user_id, Job.idempotency_key == key)).first()
    if job is not None and job.request_hash != digest:
        raise conflict("this Idempotency-Key was used with another request",
                       code="idempotency_key_reused")
    return job


def check_queue_cap(db: Session, settings: GenerationSettings, user_id: uuid.UUID) -> None:
    active = db.scalar(select(func.count()).select_from(Job)
                       .where(Job.user_id == user_id, Job.status.in_(ACTIVE)))
    if active >= settings.max_active_jobs_per_user:
        raise rate_limited(
            f"at most {settings.max_active_jobs_per_user} jobs may be queued or running at once",
            settings.queue_retry_after_seconds, limit=settings.max_active_jobs_per_user,
        )


def submit(db: Session, settings: GenerationSettings, user_id: uuid.UUID, request: dict,
           expansion: dict, price: int, idempotency_key: str | None, digest: str,
           now: datetime, dispatch: Dispatch) -> tuple[Job, bool]:
    """Create the job and announce it (``generation.job_requested``: billing
    holds ``price``). Returns ``(job, created)``; a repeat of an idempotent
    request returns the first job and False.

    The per-user cap on active jobs is atomic: the user's submit lock is held
    from before the count until the caller's commit, so parallel submits of
    one user (several workers, several replicas) are decided one at a time
    and cannot get past the cap together."""
    lock_submits(db, user_id)
    try:
        return _submit(db, settings, user_id, request, expansion, price, idempotency_key, digest,
                       now, dispatch)
    finally:
        unlock_submits(db, user_id)


def lock_submits(db: Session, user_id: uuid.UUID) -> None:
    """Take the user's submit lock until the transaction ends: the user's row
    in ``submit_locks``. A concurrent submit of the same user blocks on the
    row's key until this transaction commits or rolls back (the row is gone
    by then, see :func:`unlock_submits`), so the active-job count it makes
    next includes this transaction's job."""
    db.execute(insert(SubmitLock).values(user_id=user_id))


def unlock_submits(db: Session, user_id: uuid.UUID) -> None:
    """Delete the lock row in the same transaction: the commit (or rollback)
    lets the next submit in, and nothing is left behind."""
    db.execute(delete(SubmitLock).where(SubmitLock.user_id == user_id))


def _submit(db: Session, settings: GenerationSettings, user_id: uuid.UUID, request: dict,
            expansion: dict, price: int, idempotency_key: str | None, digest: str,
            now: datetime, dispatch: Dispatch) -> tuple[Job, bool]:
    existing = find_idempotent(db, user_id, idempotency_key, digest)
    if existing is not None:
        return existing, False
    check_queue_cap(db, settings, user_id)
    params = {k: request.get(k) for k in
              ("n", "size", "seed", "strength", "source_image_id", "template", "inputs",
               "duration_s")}
    if request.get("model"):  # the provider entry that alone runs the job
        params["model"] = request["model"]
    job = Job(
        id=new_id(), user_id=user_id, type=request["type"], status=JobState.QUEUED, attempt=1,
        prompt=expansion["prompt"], negative_prompt=expansion.get("negative_prompt"),
        params=json.loads(json.dumps(params, default=str)), shots=expansion.get("shots") or None,
        price=price, priority=0, progress=0.0, stage=STAGES[JobState.QUEUED], output_ids=[],
        webhook_url=request.get("webhook_url"),
        webhook_events=list(dict.fromkeys(request["webhook_events"]))
        if request.get("webhook_events") else None,
        idempotency_key=idempotency_key,
        request_hash=digest if idempotency_key else None, created_at=now, updated_at=now,
    )
    db.add(job)

    def winner() -> Job:  # the same key, submitted at the same moment
        raced = find_idempotent(db, user_id, idempotency_key, digest)
        if raced is None:
            raise RuntimeError("a unique key of the new job is taken, but not by a job "
                               "with its idempotency key")
        return raced

    raced = first_wins(db, db.flush, winner)  # None: the job was written
    if raced is not None:
        return raced, False
    dispatch("job_requested", {"job_id": job.id, "user_id": user_id, "attempt": 1,
                               "type": job.type, "price": price})
    return job, True


# ------------------------------------------------------------------ the saga


def _job_for_event(db: Session, event: dict) -> Job | None:
    job = db.get(Job, event["job_id"])
    if job is None:
        log.warning("event for an unknown job %s", event["job_id"])
        return None
    if job.attempt != event["attempt"]:
        log.info("event of attempt %s for job %s, now at attempt %s: ignored",
                 event["attempt"], job.id, job.attempt)
        return None
    return job


def _move(db: Session, job: Job, from_status: str | tuple[str, ...], **values) -> bool:
    """Set ``values`` on the job if it is still in ``from_status`` (and at its
    current attempt); False when another delivery or worker moved it first."""
    statuses = (from_status,) if isinstance(from_status, str) else from_status
    result = db.execute(
        update(Job)
        .where(Job.id == job.id, Job.attempt == job.attempt, Job.status.in_(statuses))
        .values(**values)
        .execution_options(synchronize_session=False)
    )
    if result.rowcount:
        for key, value in values.items():  # what the row now holds, without reading it again
            set_committed_value(job, key, value)
        if values.get("status") in FINAL:
            metrics.JOBS_FINISHED.labels(str(values["status"]), job.provider or "none").inc()
        return True
    return False


def credits_reserved(db: Session, settings: GenerationSettings, event: dict, now: datetime,
                     dispatch: Dispatch) -> bool:
    """The hold is taken: the job may run. True when a job became runnable.

    A job cancelled (or failed) before its hold arrived announces that again,
    so billing releases the hold it has just taken."""
    job = _job_for_event(db, event)
    if job is None:
        return False
    if _move(db, job, JobState.QUEUED, status=JobState.RESERVED, priority=int(event["priority"]),
             reserved_at=now, hold_expires_at=event.get("hold_expires_at"),
             stage=STAGES[JobState.RESERVED], updated_at=now):
        return True
    if job.status == JobState.CANCELLED:
        dispatch("job_cancelled", {"job_id": job.id, "user_id": job.user_id, "attempt": job.attempt})
    elif job.status == JobState.FAILED:
        dispatch("job_failed", {"job_id": job.id, "user_id": job.user_id, "attempt": job.attempt,
                                "reason": job.error_code or "failed",
                                "message": job.error_message or ""})
    return False


def credits_insufficient(db: Session, settings: GenerationSettings, event: dict, now: datetime,
                         dispatch: Dispatch) -> bool:
    job = _job_for_event(db, event)
    if job is None:
        return False
    message = f"the job costs {event['required']} credits; {event['available']} are available"
    if not _move(db, job, JobState.QUEUED, status=JobState.REJECTED,
                 stage=STAGES[JobState.REJECTED], error_code="insufficient_credits",
                 error_message=message, finished_at=now, updated_at=now):
        return False
    _finished(db, settings, job, now)
    return True


def _hold_alive(now: datetime):
    """A job's hold is still there: billing has not released it as expired."""
    return or_(Job.hold_expires_at.is_(None), Job.hold_expires_at > now)


def claim_next(db: Session, settings: GenerationSettings, now: datetime) -> Job | None:
    """Take the most urgent reserved job (plan priority, then age) whose hold
    has not expired and lease it to this worker. Competing workers never take
    the same job: on PostgreSQL the candidate row is locked ``FOR UPDATE SKIP
    LOCKED``, and the update only applies to a job still ``reserved``. A job
    whose hold expired is left to :func:`fail_expired_holds`."""
    candidate = (
        select(Job.id).where(Job.status == JobState.RESERVED, _hold_alive(now))
        .order_by(Job.priority.desc(), Job.reserved_at, Job.id)
        .limit(1)
        .with_for_update(skip_locked=True)
    )
    job_id = db.scalar(candidate)
    if job_id is None:
        return None
    token = str(uuid.uuid4())
    result = db.execute(
        update(Job).where(Job.id == job_id, Job.status == JobState.RESERVED, _hold_alive(now))
        .values(status=JobState.RUNNING, lease_token=token, stage="starting",
                lease_expires_at=now + timedelta(seconds=settings.lease_seconds),
                started_at=func.coalesce(Job.started_at, now), updated_at=now)
        .execution_options(synchronize_session=False)
    )
    if not result.rowcount:
        return None
    job = db.get(Job, job_id, populate_existing=True)
    if job.started_at == now:  # its first start in this attempt, not a requeued job's
        queue_webhook(db, job, now)
    return job


def record_progress(db: Session, settings: GenerationSettings, job_id: uuid.UUID, token: str,
                    progress: float, stage: str, now: datetime) -> bool:
    """Progress of a running job, renewing its lease; False when the lease
    is no longer this worker's (it ran out and another worker took the job)."""
    result = db.execute(
        update(Job)
        .where(Job.id == job_id, Job.status == JobState.RUNNING, Job.lease_token == token)
        .values(progress=max(0.0, min(1.0, float(progress))), stage=stage[:32],
                lease_expires_at=now + timedelta(seconds=settings.lease_seconds), updated_at=now)
        .execution_options(synchronize_session=False)
    )
    return bool(result.rowcount)


def renew_lease(db: Session, settings: GenerationSettings, job_id: uuid.UUID, token: str,
                now: datetime) -> bool:
    """Extend a running job's lease (its worker's heartbeat); False when the
    lease is no longer this worker's."""
    result = db.execute(
        update(Job)
        .where(Job.id == job_id, Job.status == JobState.RUNNING, Job.lease_token == token)
        .values(lease_expires_at=now + timedelta(seconds=settings.lease_seconds))
        .execution_options(synchronize_session=False)
    )
    return bool(result.rowcount)


def succeed(db: Session, settings: GenerationSettings, job_id: uuid.UUID, token: str,
            output_ids: list[uuid.UUID], provider: str, now: datetime, dispatch: Dispatch) -> bool:
    """Finish a running job with its committed outputs (only the lease holder
    can). A job whose hold has expired by now fails ``hold_expired`` instead:
    billing has given its credits back, so it is not delivered (False)."""
    job = db.get(Job, job_id)
    if job is None or job.lease_token != token:
        return False
    if job.hold_expires_at is not None and job.hold_expires_at <= now:
        _fail_hold_expired(db, settings, job, JobState.RUNNING, now, dispatch)
        return False
    if not _move(db, job, JobState.RUNNING, status=JobState.SUCCEEDED, progress=1.0,
                 stage=STAGES[JobState.SUCCEEDED], provider=provider,
                 output_ids=[str(i) for i in output_ids], finished_at=now,
                 lease_token=None, lease_expires_at=None, updated_at=now):
        return False
    dispatch("job_succeeded", {"job_id": job.id, "user_id": job.user_id, "attempt": job.attempt,
                               "output_ids": list(output_ids)})
    _finished(db, settings, job, now)
    return True


def fail(db: Session, settings: GenerationSettings, job_id: uuid.UUID, token: str | None,
         code: str, message: str, provider: str | None, now: datetime, dispatch: Dispatch) -> bool:
    """Fail a running job (lease holder) and let billing release its hold."""
    job = db.get(Job, job_id)
    if job is None or (token is not None and job.lease_token != token):
        return False
    if not _move(db, job, JobState.RUNNING, status=JobState.FAILED, stage=STAGES[JobState.FAILED],
                 error_code=code, error_message=message[:2000], provider=provider,
                 finished_at=now, lease_token=None, lease_expires_at=None, updated_at=now):
        return False
    dispatch("job_failed", {"job_id": job.id, "user_id": job.user_id, "attempt": job.attempt,
                            "reason": code, "message": message[:2000]})
    _finished(db, settings, job, now)
    return True


HOLD_EXPIRED = "hold_expired"
HOLD_EXPIRED_MESSAGE = ("the credits held for this job were released before it finished "
                        "(a hold is kept for a limited time); nothing was charged, and the "
                        "job can be replayed")


def _fail_hold_expired(db: Session, settings: GenerationSettings, job: Job,
                       from_status: str | tuple[str, ...], now: datetime,
                       dispatch: Dispatch) -> bool:
    """Fail a job whose hold billing released as expired (``hold_expired``):
    visible in its error, replayable (a replay holds the price again)."""
    if not _move(db, job, from_status, status=JobState.FAILED, stage=STAGES[JobState.FAILED],
                 error_code=HOLD_EXPIRED, error_message=HOLD_EXPIRED_MESSAGE, finished_at=now,
                 lease_token=None, lease_expires_at=None, updated_at=now):
        return False
    # billing released the hold already: this release finds it released
    dispatch("job_failed", {"job_id": job.id, "user_id": job.user_id, "attempt": job.attempt,
                            "reason": HOLD_EXPIRED, "message": HOLD_EXPIRED_MESSAGE})
    _finished(db, settings, job, now)
    log.warning("job failed: its hold expired", extra={"job_id": str(job.id),
                                                       "attempt": job.attempt})
    return True


def credits_released(db: Session, settings: GenerationSettings, event: dict, now: datetime,
                     dispatch: Dispatch) -> bool:
    """``billing.credits_released``: with reason ``expired``, billing gave the
    credits of a job that had not finished back; the job fails ``hold_expired``
    whether it waits, is queued or runs (its worker's success is refused).
    Other reasons answer this service's own ``job_failed`` / ``job_cancelled``."""
    if event["reason"] != "expired":
        return False
    job = _job_for_event(db, event)
    if job is None:
        return False
    return _fail_hold_expired(db, settings, job, ACTIVE, now, dispatch)


# the states in which a job's hold may expire under it (a queued job has none yet)
HOLDING = (JobState.RESERVED, JobState.RUNNING)


def fail_expired_holds(db: Session, settings: GenerationSettings, now: datetime,
                       dispatch: Dispatch, limit: int = 100) -> int:
    """Jobs still waiting or running past their hold's expiry fail
    ``hold_expired`` (should billing's ``credits_released`` be late)."""
    rows = list(db.scalars(
        select(Job).where(Job.status.in_(HOLDING), Job.hold_expires_at <= now)
        .order_by(Job.hold_expires_at).limit(limit)))
    return sum(_fail_hold_expired(db, settings, job, HOLDING, now, dispatch) for job in rows)


def requeue_expired_leases(db: Session, now: datetime) -> list[uuid.UUID]:
    """Running jobs whose worker stopped renewing its lease (killed, hung)
    go back to ``reserved``, keeping their hold, for another worker."""
    ids = list(db.scalars(select(Job.id).where(Job.status == JobState.RUNNING,
                                               Job.lease_expires_at < now)))
    if not ids:
        return []
    return list(db.scalars(  # only the jobs this transaction moved (not another replica's)
        update(Job)
        .where(Job.id.in_(ids), Job.status == JobState.RUNNING, Job.lease_expires_at < now)
        .values(status=JobState.RESERVED, lease_token=None, lease_expires_at=None, progress=0.0,
                stage="requeued", updated_at=now)
        .returning(Job.id)
        .execution_options(synchronize_session=False)
    ))


def cancel(db: Session, settings: GenerationSettings, user_id: uuid.UUID, job_id, now: datetime,
           dispatch: Dispatch) -> Job:
    """The owner cancels a job that has not started; billing releases its hold."""
    return _cancel(db, settings, get_job(db, user_id, job_id), now, dispatch)


def cancel_any(db: Session, settings: GenerationSettings, job_id, now: datetime,
               dispatch: Dispatch) -> Job:
    """An operator cancels any account's job (``darkroom-ops jobs cancel``):
    the same rule as :func:`cancel`, without the owner check."""
    return _cancel(db, settings, any_job(db, job_id), now, dispatch)


def _cancel(db: Session, settings: GenerationSettings, job: Job, now: datetime,
            dispatch: Dispatch) -> Job:
    if not _move(db, job, (JobState.QUEUED, JobState.RESERVED), status=JobState.CANCELLED,
                 stage=STAGES[JobState.CANCELLED], finished_at=now, updated_at=now):
        raise conflict(f"the job is {job.status} and can no longer be cancelled",
                       code="not_cancellable", status=job.status)
    dispatch("job_cancelled", {"job_id": job.id, "user_id": job.user_id, "attempt": job.attempt})
    _finished(db, settings, job, now)
    return job


def any_job(db: Session, job_id) -> Job:
    """Any account's job by id (operators' commands); 404 ``not_found``."""
    job = db.get(Job, client_id(job_id, "job"))
    if job is None:
        raise not_found("job")
    return job


def replay(db: Session, job_id, now: datetime, dispatch: Dispatch) -> Job:
    """Start a new attempt of a failed job: a new hold, the saga again. The
    earlier attempt's hold was released when it failed, so the job is charged
    once, by the attempt that succeeds."""
    job = any_job(db, job_id)
    if job.prompt_redacted:
        raise conflict("the job's prompt was redacted when it ended; it cannot run again",
                       code="not_replayable", reason="prompt_redacted")
    attempt = job.attempt
    if not _move(db, job, JobState.FAILED, status=JobState.QUEUED, attempt=attempt + 1,
                 stage=STAGES[JobState.QUEUED], progress=0.0, error_code=None,
                 error_message=None, provider=None, output_ids=[], reserved_at=None,
                 hold_expires_at=None, started_at=None, finished_at=None,
                 updated_at=now):
        raise conflict(f"only failed jobs can be replayed; this one is {job.status}",
                       code="not_replayable", status=job.status)
    dispatch("job_requested", {"job_id": job.id, "user_id": job.user_id, "attempt": job.attempt,
                               "type": job.type, "price": job.price})
    return job


def queue_webhook(db: Session, job: Job, now: datetime) -> WebhookDelivery | None:
    """The delivery of the event the job's state is (``WEBHOOK_EVENT_OF_STATE``),
    when the job has a webhook and chose that event (all when it chose none);
    written in the transaction that moved the job, sent by the timer."""
    event = WEBHOOK_EVENT_OF_STATE.get(job.status)
    if not job.webhook_url or event is None or event not in (job.webhook_events or WEBHOOK_EVENTS):
        return None
    body = json.dumps({"type": f"job.{event}", "job": webhook_view(job)}, separators=(",", ":"))
    delivery = WebhookDelivery(
        id=new_id(), job_id=job.id, user_id=job.user_id, attempt=job.attempt,
        job_status=job.status, url=job.webhook_url,
        receiver=webhooks.receiver_of(job.webhook_url), body=body, status="pending", tries=0,
        next_attempt_at=now, created_at=now,
    )
    db.add(delivery)
    return delivery


def _finished(db: Session, settings: GenerationSettings, job: Job, now: datetime) -> None:
    """What every final state does: the webhook (not for a job rejected at
    submit: it never ran, and its submitter had the answer), and the prompt
    redaction when prompts are not kept."""
    queue_webhook(db, job, now)
    if settings.prompt_retention == "redact":
        job.prompt = job.negative_prompt = None
        job.shots = [{**shot, "prompt": None} for shot in job.shots] if job.shots else job.shots
        params = dict(job.params or {})
        params.pop("inputs", None)
        job.params = params
        job.prompt_redacted = True


# ------------------------------------------------------------------ reading


def get_job(db: Session, user_id: uuid.UUID, job_id) -> Job:
    """The user's job; 404 for anyone else's (or none)."""
    job = db.get(Job, client_id(job_id, "job"))
    if job is None or job.user_id != user_id:
        raise not_found("job")
    return job


def list_jobs(db: Session, user_id: uuid.UUID, query: dict) -> tuple[list[Job], str | None]:
    stmt = select(Job).where(Job.user_id == user_id)
    if query.get("status"):
        stmt = stmt.where(Job.status == query["status"])
    return paginate(db, stmt, Job.created_at, Job.id, query["limit"], query["cursor"])


def queue_position(db: Session, job: Job) -> int | None:
    """1 for the next job to run; None once it runs or ended. A job still
    waiting for its credits counts the reserved jobs of its priority or higher."""
    if job.status == JobState.RESERVED:
        ahead = db.scalar(select(func.count()).select_from(Job).where(
            Job.status == JobState.RESERVED,
            or_(Job.priority > job.priority,
                and_(Job.priority == job.priority,
                     or_(Job.reserved_at < job.reserved_at,
                         and_(Job.reserved_at == job.reserved_at, Job.id < job.id)))),
        ))
        return ahead + 1
    if job.status == JobState.QUEUED:
        return db.scalar(select(func.count()).select_from(Job).where(
            Job.status == JobState.RESERVED, Job.priority >= job.priority)) + 1
    return None


def queue_positions(db: Session, page: list[Job]) -> dict[uuid.UUID, int | None]:
    """:func:`queue_position` of every job of a page, with one query at most."""
    waiting = [job for job in page if job.status in (JobState.QUEUED, JobState.RESERVED)]
    positions: dict[uuid.UUID, int | None] = {job.id: None for job in page}
    if not waiting:
        return positions
    queue = [(-priority, reserved_at, job_id) for priority, reserved_at, job_id in db.execute(
        select(Job.priority, Job.reserved_at, Job.id).where(Job.status == JobState.RESERVED)
        .order_by(Job.priority.desc(), Job.reserved_at, Job.id))]
    for job in waiting:
        if job.status == JobState.RESERVED:
            positions[job.id] = bisect.bisect_left(queue, (-job.priority, job.reserved_at,
                                                           job.id)) + 1
        else:  # every reserved job of its priority or higher runs first
            positions[job.id] = sum(1 for key in queue if -key[0] >= job.priority) + 1
    return positions


def find_jobs(db: Session, status: str | None, since: datetime | None, reason: str | None,
              limit: int, newest_first: bool = False) -> list[Job]:
    """For operators: jobs by status, last change and error code, oldest
    change first (newest first with ``newest_first``)."""
    stmt = select(Job)
    if status:
        stmt = stmt.where(Job.status == status)
    if since is not None:
        stmt = stmt.where(Job.updated_at >= since)
    if reason:
        stmt = stmt.where(Job.error_code == reason)
    order = (Job.updated_at.desc(), Job.id.desc()) if newest_first else (Job.updated_at, Job.id)
    return list(db.scalars(stmt.order_by(*order).limit(limit)))


def view(job: Job, position: int | None = None) -> dict:
    """The job as docs/api.md shows it (dumped by contracts.generation.JobView)."""
    return {
        "id": job.id, "type": job.type, "status": job.status, "attempt": job.attempt,
        "progress": job.progress, "stage": job.stage, "queue_position": position,
        "price": job.price, "outputs": list(job.output_ids or []),
        "error": error_view(job),
        "prompt": job.prompt, "negative_prompt": job.negative_prompt,
        "prompt_redacted": job.prompt_redacted, "params": job.params or {},
        "shots": job.shots, "webhook_url": job.webhook_url,
        "webhook_events": job.webhook_events, "provider": job.provider,
        "model": (job.params or {}).get("model"),
        "created_at": job.created_at, "started_at": job.started_at,
        "finished_at": job.finished_at,
    }


def error_view(job: Job) -> dict | None:
    """A job's error as users and webhooks see it. Messages are cleaned when
    a job fails (:class:`services.generation.runner.JobFailure`); cleaning
    again here covers rows written before that and any other writer."""
    if not job.error_code:
        return None
    return {"code": job.error_code, "message": error_text.clean(job.error_message)}


def webhook_view(job: Job) -> dict:
    """What a webhook tells: the final state, never the prompt."""
    return {
        "id": str(job.id), "type": job.type, "status": job.status, "attempt": job.attempt,
        "outputs": list(job.output_ids or []), "price": job.price,
        "error": error_view(job),
        "created_at": isoformat(job.created_at),
        "finished_at": isoformat(job.finished_at) if job.finished_at else None,
    }


def state_metrics(engine, now: datetime) -> list[metrics.Sample]:
    """The active jobs by state and provider (``none``: not yet given to
    one), read at each scrape (services.common.metrics) through the status
    index; the finished ones are counted as they finish (``JOBS_FINISHED``)."""
    with Session(engine) as db:
        rows = db.execute(
            select(Job.status, Job.provider, func.count())
            .where(Job.status.in_([s.value for s in ACTIVE]))
            .group_by(Job.status, Job.provider)
        ).all()
    counts = {(s.value, "none"): 0 for s in ACTIVE}
    for state, provider, count in rows:
        counts[(state, provider or "none")] = count
    return [("darkroom_jobs", {"state": state, "provider": provider}, float(n))
            for (state, provider), n in counts.items()]
