"""The generation service's part of privacy requests (the protocol of
:mod:`services.common.privacy_parts`): the user's jobs and webhook deliveries
in an export and an erasure, and the retention schedule this service
enforces; besides, the processing restriction (no new job while restricted).

While an erasure of the account is pending (``privacy.erasure_scheduled``,
until ``privacy.erasure_cancelled``) no new job is accepted either (403
``erasure_pending``).

The regions the user refuses processing in (from ``privacy.consent_changed``,
the newest event wins) are kept too: routes skip providers there, and a job
no provider is left for is refused at submit (409 ``no_provider_for_region``).

An erasure waits for the user's running jobs (:class:`JobsRunning`: the event
is retried) so no output is stored behind it; it is the first phase of every
erasure, before storage and billing erase theirs. Jobs that have not started
are deleted with the rest (billing erases their holds). The privacy service
asks again after every other part (``recheck``): a job submitted while the
erasure ran (a submit that passed its check just before) is deleted then,
and so is the pending-erasure record, the account being gone.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from services.common.contracts.generation import JobState
from services.common.db import locked
from services.common.errors import conflict, forbidden
from services.common.ids import isoformat, trusted_id
from services.common.privacy_parts import Erasure, record_newest, recorded
from services.generation import disclosures
from services.generation.models import (
    Disclosure,
    ErasurePending,
    Job,
    RefusedRegions,
    RestrictedUser,
    WebhookDelivery,
)
from services.generation.settings import GenerationSettings

ABOUT = (
    "Your generation jobs: what you asked for (prompt, negative prompt, parameters, template "
    "and inputs, source image), how it went (status, attempts, provider, price, error, outputs) "
    "and when; the webhook calls made for them (URL, status, tries, times); the disclosure "
    "log (each request sent to a model vendor: vendor, region, categories of data, outcome, "
    "when); whether processing of your account is restricted; and the regions you refuse "
    "processing in, as this service applies them."
)
WITHHELD = [
    {"what": "webhook request bodies",
     "why": "they are the job's final state, which is listed here already"},
    {"what": "lease tokens and request fingerprints of jobs",
     "why": "internal bookkeeping with no information about you"},
]


class JobsRunning(Exception):
    """A job of the user is running: erase once it has ended (the event is retried)."""


# ---------------------------------------------------------------- restriction


def is_restricted(db: Session, user_id) -> bool:
    return recorded(db, RestrictedUser, user_id, "restricted")


def check_not_restricted(db: Session, user_id) -> None:
    """403 ``processing_restricted`` while the user has restricted processing."""
    if is_restricted(db, user_id):
        raise forbidden("processing of this account is restricted: no new generation runs "
                        "until the restriction is lifted", code="processing_restricted")


def apply_restriction(db: Session, user_id, restricted: bool, at: datetime) -> bool:
    """Record a ``privacy.restriction_changed`` unless a newer one was; the caller commits."""
    return record_newest(db, RestrictedUser, user_id, "restricted", restricted, at)


# ---------------------------------------------------------------- pending erasure


def check_no_erasure_pending(db: Session, user_id) -> None:
    """403 ``erasure_pending`` while an erasure of the account is pending."""
    if recorded(db, ErasurePending, user_id, "pending"):
        raise forbidden("an erasure of this account is pending: no new generation runs; "
                        "cancel the erasure to generate again", code="erasure_pending")


def check_may_run(db: Session, user_id) -> None:
    """What a new run on ``user_id``'s credits (a submit, an operator's replay)
    needs from privacy: 403 ``processing_restricted`` or ``erasure_pending``."""
    check_not_restricted(db, user_id)
    check_no_erasure_pending(db, user_id)


def apply_erasure_pending(db: Session, user_id, pending: bool, at: datetime) -> bool:
    """Record ``privacy.erasure_scheduled`` (True) or ``erasure_cancelled``
    (False) unless a newer one was; the caller commits."""
    return record_newest(db, ErasurePending, user_id, "pending", pending, at)


# ---------------------------------------------------------------- refused regions


def refused_regions(db: Session, user_id) -> frozenset[str]:
    """The regions the user refuses processing in (none without a record)."""
    row = db.get(RefusedRegions, trusted_id(user_id))
    return frozenset(row.regions) if row is not None else frozenset()


def apply_refused_regions(db: Session, user_id, regions: list[str] | None,
                          at: datetime) -> bool:
    """Record the refused regions of a ``privacy.consent_changed`` unless a
    newer event was (an event without them changes nothing); the caller commits."""
    if regions is None:
        return False
    uid = trusted_id(user_id)
    row = locked(db, RefusedRegions, uid)
    if row is None:
        db.add(RefusedRegions(user_id=uid, regions=sorted(set(regions)), changed_at=at))
    elif row.changed_at > at:
        return False
    else:
        row.regions, row.changed_at = sorted(set(regions)), at
    db.flush()
    return True


def check_route_allowed(db: Session, router, user_id, job_type: str,
                        model: str | None = None) -> None:
    """409 ``no_provider_for_region`` when every provider of the job type's
    route (or the named ``model``) is in a region the user refuses."""
    refused = refused_regions(db, user_id)
    allowed = router.route_for(job_type, refused) if refused and router.supports(job_type) else None
    if allowed is not None and (not allowed or (model is not None and model not in allowed)):
        what = f"the model {model}" if allowed else f"every provider for {job_type}"
        raise conflict(f"{what} processes data in a region you refuse "
                       f"({', '.join(sorted(refused))}); allow it in your consents "
                       "to generate", code="no_provider_for_region", job_type=job_type)


# ---------------------------------------------------------------- export and erasure


def _job(job: Job) -> dict:
    return {
        "id": str(job.id), "type": job.type, "status": job.status, "attempt": job.attempt,
        "prompt": job.prompt, "negative_prompt": job.negative_prompt,
        "prompt_redacted": job.prompt_redacted, "params": job.params or {}, "shots": job.shots,
        "price": job.price, "provider": job.provider,
        "error": {"code": job.error_code, "message": job.error_message}
        if job.error_code else None,
        "outputs": [str(o) for o in job.output_ids or []], "webhook_url": job.webhook_url,
        "webhook_events": job.webhook_events, "idempotency_key": job.idempotency_key,
        "created_at": isoformat(job.created_at), "started_at": isoformat(job.started_at),
        "finished_at": isoformat(job.finished_at),
    }


def export(db: Session, settings: GenerationSettings, user_id) -> dict:
    uid = trusted_id(user_id)
    jobs = db.scalars(select(Job).where(Job.user_id == uid).order_by(Job.created_at, Job.id))
    deliveries = db.scalars(select(WebhookDelivery).where(WebhookDelivery.user_id == uid)
                            .order_by(WebhookDelivery.created_at))
    return {
        "jobs": [_job(job) for job in jobs],
        "webhook_deliveries": [
            {"job_id": str(d.job_id), "job_status": d.job_status, "url": d.url,
             "status": d.status, "tries": d.tries, "last_error": d.last_error,
             "response_status": d.response_status, "created_at": isoformat(d.created_at),
             "last_attempt_at": isoformat(d.last_attempt_at),
             "delivered_at": isoformat(d.delivered_at)}
            for d in deliveries
        ],
        "disclosures": disclosures.of_user(db, uid),
        "processing_restricted": is_restricted(db, uid),
        "refused_regions": sorted(refused_regions(db, uid)),
    }


def erase(db: Session, settings: GenerationSettings, user_id, now: datetime,
          recheck: bool = False) -> Erasure:
    """Delete the user's jobs, webhook deliveries, disclosures, restriction and
    refused regions; rows per
    table. Raises :class:`JobsRunning` while a job of theirs runs. The first
    time the pending-erasure record is set (no job is accepted from now on,
    whatever order the events came in); at the ``recheck`` it is deleted too.
    The caller commits."""
    uid = trusted_id(user_id)
    if not recheck:
        apply_erasure_pending(db, uid, True, now)
    running = db.scalar(select(func.count()).select_from(Job)
                        .where(Job.user_id == uid, Job.status == JobState.RUNNING))
    if running:
        raise JobsRunning(f"{running} job(s) of the user are running; erasing when they end")
    tables = {}
    models = [("webhook_deliveries", WebhookDelivery), ("disclosures", Disclosure), ("jobs", Job),
              ("restricted_users", RestrictedUser), ("refused_regions", RefusedRegions)]
    if recheck:
        models.append(("erasure_pending", ErasurePending))
    for name, model in models:
        tables[name] = db.execute(delete(model).where(model.user_id == uid)
                                  .execution_options(synchronize_session=False)).rowcount or 0
    return Erasure(tables)


def retention_items(settings: GenerationSettings) -> list[dict]:
    prompts = ("removed from each job when it ends" if settings.prompt_retention == "redact"
               else "kept with the job until the account is erased (your history)")
    return [
        {"data": "generation jobs (parameters, status, price, outputs' ids)",
         "kept": "until the account is erased", "days": None,
         "enforced_by": "erasure (privacy request)"},
        {"data": "prompts", "kept": prompts, "days": None,
         "enforced_by": "GENERATION_PROMPT_RETENTION="
                        f"{settings.prompt_retention}, then erasure"},
        {"data": "webhook deliveries", "kept": "until the account is erased", "days": None,
         "enforced_by": "erasure (privacy request)"},
        {"data": "disclosure log (each request sent to a model vendor: vendor, region, "
                 "categories of data, outcome, time; GET /v1/privacy/disclosures)",
         "kept": "until the account is erased (then deleted, not kept as counts)",
         "days": None, "enforced_by": "erasure (privacy request)"},
        {"data": "the regions you refuse processing in (a copy of your consent)",
         "kept": "until changed or the account is erased", "days": None,
         "enforced_by": "privacy.consent_changed, then erasure"},
        {"data": "what model providers get", "kept": "prompts and source images only: never an "
         "email, a user id or an account key", "days": None,
         "enforced_by": "the generation service's provider adapters"},
    ]
