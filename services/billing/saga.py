"""Billing's steps of the generation saga (docs/design.md §4).

- ``generation.job_requested`` → hold the quoted ``price`` on the ledger and
  dispatch ``billing.credits_reserved`` (with the plan's queue priority), or
  ``billing.credits_insufficient`` when the available balance is short
  (a price of 0 reserves 0). Each attempt of a job has its own hold.
- ``generation.job_succeeded`` → capture the hold, ``billing.credits_captured``.
- ``generation.job_failed`` / ``generation.job_cancelled`` → release it,
  ``billing.credits_released`` (reason ``failed`` / ``cancelled``).
- A hold older than ``HOLD_TTL_SECONDS`` (6 hours) is released by a timer
  with reason ``expired`` (``credits_reserved`` told generation when:
  ``hold_expires_at``, so it does not start the job after that). A success
  arriving after the expiry is still paid for: the price is taken from what
  the user can spend (see :func:`ledger.capture`).
- A release gives credits back to the lots they came from; what a refund of
  such a lot's order still waits for is taken then (:mod:`reversals`).

A capture or release for a job without a hold, a capture of a released hold
or a release of a captured one writes nothing and publishes nothing (it is
logged). Duplicates find the first result and publish nothing again: the
first result's event went out through the outbox.

Everything here runs in the caller's transaction and the caller commits. The
timer's sweeps are a query for the candidates (:func:`stale_holds`,
:func:`accounts_with_expired_lots`) and a step for one account
(:func:`release_stale_hold`, :func:`expire_lots_of`), which the service runs
one account per transaction.
"""

from __future__ import annotations

import logging
import uuid
from datetime import datetime, timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from services.billing import ledger, plans, reversals
from services.billing.models import Lot
from services.billing.settings import BillingSettings
from services.common.messaging import Dispatch

log = logging.getLogger(__name__)


def _ids(event: dict) -> dict:
    return {"job_id": str(event["job_id"]), "user_id": str(event["user_id"]),
            "attempt": int(event["attempt"])}


def job_requested(db: Session, settings: BillingSettings, event: dict, now: datetime,
                  dispatch: Dispatch) -> str:
    ids, price = _ids(event), int(event["price"])
    account = plans.locked_account(db, settings, event["user_id"], now, dispatch)
    if account is None:  # erased: the job cannot be paid for
        dispatch("credits_insufficient", {**ids, "required": price, "available": 0})
        return "insufficient"
    plan = plans.effective_plan(settings, account, now)
    result = ledger.hold_credits(db, account, event["job_id"], ids["attempt"], price,
                                 plan.id, plan.priority, now)
    if result.status == "reserved":
        expires_at = result.hold.created_at + timedelta(seconds=settings.hold_ttl_seconds)
        dispatch("credits_reserved", {**ids, "hold_id": str(result.hold.id), "amount": price,
                                      "plan": plan.id, "priority": plan.priority,
                                      "hold_expires_at": expires_at.isoformat()})
    elif result.status == "insufficient":
        dispatch("credits_insufficient", {**ids, "required": price,
                                          "available": result.available})
    log.info("job hold: %s", result.status, extra={**ids, "price": price})
    return result.status


def job_finished(db: Session, event: dict, outcome: str, now: datetime,
                 dispatch: Dispatch) -> str:
    """``outcome``: succeeded (capture), failed or cancelled (release)."""
    ids = _ids(event)
    account = ledger.lock_account(db, event["user_id"])
    if outcome == "succeeded":
        result = ledger.capture(db, account, event["job_id"], ids["attempt"], now)
        if result.status == "captured":
            reversals.after_capture(db, result.hold)
            dispatch("credits_captured", {**ids, "amount": result.amount})
    else:
        result = release(db, account, event["job_id"], ids["attempt"], outcome, now, dispatch)
    log.info("job %s: %s", outcome, result.status, extra=ids)
    return result.status


def release(db: Session, account, job_id, attempt: int, reason: str, now: datetime,
            dispatch: Dispatch) -> ledger.CloseResult:
    """Release the hold of one attempt of a job (reason failed, cancelled or
    expired), take what a refund of the lots it gives back to still waits
    for, and publish ``billing.credits_released``."""
    result = ledger.release(db, account, job_id, attempt, reason, now)
    if result.status == "released":
        reversals.after_release(db, account, result.hold, now)
        dispatch("credits_released", {
            "job_id": str(job_id), "user_id": str(account.user_id), "attempt": int(attempt),
            "amount": result.amount, "reason": reason})
    return result


def stale_holds(db: Session, settings: BillingSettings, now: datetime,
                limit: int) -> list[tuple[uuid.UUID, uuid.UUID, int]]:
    """Up to ``limit`` open holds older than ``HOLD_TTL_SECONDS``, the oldest
    first, as (user, job, attempt)."""
    cutoff = now - timedelta(seconds=settings.hold_ttl_seconds)
    return [(h.user_id, h.job_id, h.attempt) for h in ledger.stale_holds(db, cutoff, limit)]


def release_stale_hold(db: Session, hold: tuple[uuid.UUID, uuid.UUID, int], now: datetime,
                       dispatch: Dispatch) -> int:
    """Release one hold :func:`stale_holds` found (reason ``expired``; locks
    the account). Returns 1 if it was released, 0 if it was closed meanwhile."""
    user_id, job_id, attempt = hold
    account = ledger.lock_account(db, user_id)
    if release(db, account, job_id, attempt, "expired", now, dispatch).status != "released":
        return 0
    log.warning("hold expired", extra={"job_id": str(job_id), "attempt": attempt})
    return 1


def accounts_with_expired_lots(db: Session, now: datetime, limit: int) -> list[uuid.UUID]:
    """Up to ``limit`` accounts with credits left in a lot past its expiry."""
    return list(db.scalars(
        select(Lot.user_id).where(Lot.remaining > 0, Lot.expires_at.is_not(None),
                                  Lot.expires_at <= now).distinct().limit(limit)
    ))


def expire_lots_of(db: Session, user_id: uuid.UUID, now: datetime) -> int:
    """Turn the account's expired lot remainders into ``expire`` entries
    (locks it). Returns how many entries were written."""
    account = ledger.lock_account(db, user_id)
    return len(ledger.expire_lots(db, account, now)) if account is not None else 0
