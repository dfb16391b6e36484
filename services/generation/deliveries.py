"""Webhook deliveries: the POSTs of jobs' final states, retried with backoff.

A delivery row is written in the transaction that ends the job
(:func:`services.generation.jobs._finished`). The service's timer takes the
due rows, leases each for a while (``next_attempt_at`` moves ahead before
anything is sent, so another instance does not take it too), sends it signed
with the account's webhook secret, and records the outcome: delivered, due
again after the backoff, or failed for good. A crash between the send and the
record sends it again after the lease: receivers dedupe on the
``Darkroom-Delivery`` header.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from services.generation import webhooks
from services.generation.models import WebhookDelivery

log = logging.getLogger(__name__)

PENDING, DELIVERED, FAILED = "pending", "delivered", "failed"
LEASE_SECONDS = 120
BATCH = 20


def take_due(db: Session, now: datetime, limit: int = BATCH) -> list[WebhookDelivery]:
    """Lease up to ``limit`` due deliveries to this worker (the caller commits)."""
    ids = list(db.scalars(
        select(WebhookDelivery.id)
        .where(WebhookDelivery.status == PENDING, WebhookDelivery.next_attempt_at <= now)
        .order_by(WebhookDelivery.next_attempt_at).limit(limit)
        .with_for_update(skip_locked=True)
    ))
    if not ids:
        return []
    db.execute(
        update(WebhookDelivery).where(WebhookDelivery.id.in_(ids))
        .values(next_attempt_at=now + timedelta(seconds=LEASE_SECONDS))
        .execution_options(synchronize_session=False)
    )
    return list(db.scalars(select(WebhookDelivery).where(WebhookDelivery.id.in_(ids))))


def record(db: Session, delivery: WebhookDelivery, result: webhooks.Delivery, now: datetime,
           max_tries: int) -> None:
    """What one attempt did (the caller commits)."""
    delivery.tries += 1
    if result.delivered:
        delivery.status, delivery.delivered_at, delivery.last_error = DELIVERED, now, None
        return
    delivery.last_error = (result.error or f"http_{result.status}")[:500]
    delay = webhooks.next_delay(delivery.tries) if result.retry else None
    if delay is None or delivery.tries >= max_tries:
        delivery.status = FAILED
        log.warning("webhook for job %s given up after %d tries: %s", delivery.job_id,
                    delivery.tries, delivery.last_error)
        return
    delivery.next_attempt_at = now + timedelta(seconds=delay)
