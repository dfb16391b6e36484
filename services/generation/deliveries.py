"""Webhook deliveries: the POSTs of jobs' final states, sent in parallel,
retried with backoff, each receiver backed off on its own.

A delivery row is written in the transaction that ends the job
(:func:`services.generation.jobs._finished`; a job rejected at submit gets
none). The service's timer takes the due rows (:func:`take_due`), leases each
for its deadline and a margin (``next_attempt_at`` moves ahead before
anything is sent, so another instance does not take it too), and hands each
to the process's :class:`Sender`: a bounded pool of green threads, so a slow
receiver holds only its own slots and the timer never waits for a receiver.
Each attempt has a total deadline (:func:`services.generation.webhooks.deliver`)
and records its outcome in its own transaction (:func:`attempt`): delivered,
due again after the backoff, or failed for good. A crash between the send
and the record sends it again after the lease: receivers dedupe on the
``webhook-id`` header.

**Per receiver** (a URL's origin, ``scheme://host:port``):

- at most ``per_receiver`` of its deliveries are in flight in one process,
  so a slow receiver with many deliveries cannot fill the pool;
- a receiver whose attempts fail ``failures`` times in a row (timeouts,
  connection failures, 5xx, 429) is backed off: none of its deliveries is
  taken until ``blocked_until`` (``base_seconds`` doubling with each further
  failure, up to ``max_seconds``). The state is persisted in
  ``webhook_receivers`` so every replica honours it and a restart keeps it;
  the row exists only while the receiver fails (any answer deletes it) and a
  stale one is forgotten after a day. Deliveries waiting for their receiver
  keep their tries.
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import and_, delete, exists, func, or_, select, update
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from services.common import metrics
from services.common.contracts.generation import WEBHOOK_EVENT_OF_STATE
from services.common.db import insert_for
from services.common.errors import conflict, not_found
from services.common.ids import client_id, utcnow
from services.common.pagination import paginate
from services.generation import webhooks
from services.generation.models import WebhookDelivery, WebhookReceiver

log = logging.getLogger(__name__)

PENDING, DELIVERED, FAILED = "pending", "delivered", "failed"
#: A taken delivery is leased for its deadline plus this margin.
LEASE_MARGIN_SECONDS = 60
LEASE_SECONDS = webhooks.DEFAULT_TIMEOUT_S + LEASE_MARGIN_SECONDS
BATCH = 20
#: A receiver's row is forgotten this long after its last failure (and block).
FORGET_RECEIVER_AFTER = timedelta(days=1)


@dataclass(frozen=True)
class ReceiverBackoff:
    """When a receiver that keeps failing is left alone, and for how long."""

    failures: int = 5  # failed attempts in a row before it is backed off
    base_seconds: float = 60.0  # the first pause; doubles with each failure after
    max_seconds: float = 3600.0

    def delay(self, failures: int) -> float | None:
        """Seconds to leave a receiver alone after ``failures`` in a row, or None."""
        if failures < self.failures:
            return None
        return min(self.max_seconds, self.base_seconds * 2 ** min(failures - self.failures, 30))


# ------------------------------------------------------------------ taking due rows


def take_due(db: Session, now: datetime, limit: int = BATCH, *,
             lease_seconds: float = LEASE_SECONDS, per_receiver: int | None = None,
             in_flight: Mapping[str | None, int] | None = None) -> list[WebhookDelivery]:
    """Lease up to ``limit`` due deliveries to this worker (the caller commits).

    Skipped: deliveries of a receiver that is backed off, and beyond
    ``per_receiver`` of one receiver counting the ``in_flight`` ones (so one
    receiver's backlog does not take the whole batch). On PostgreSQL the rows
    are locked ``FOR UPDATE SKIP LOCKED``: replicas take different rows.
    """
    if limit <= 0:
        return []
    in_flight = in_flight or {}
    due = and_(WebhookDelivery.status == PENDING, WebhookDelivery.next_attempt_at <= now)
    blocked = exists().where(WebhookReceiver.receiver == WebhookDelivery.receiver,
                             WebhookReceiver.blocked_until > now)
    conditions = [due, ~blocked]
    if per_receiver:
        full = [r for r, n in in_flight.items() if r is not None and n >= per_receiver]
        if full:
            conditions.append(or_(WebhookDelivery.receiver.is_(None),
                                  WebhookDelivery.receiver.not_in(full)))
        ranked = select(
            WebhookDelivery.id,
            func.row_number().over(partition_by=WebhookDelivery.receiver,
                                   order_by=(WebhookDelivery.next_attempt_at,
                                             WebhookDelivery.id)).label("rank"),
        ).where(*conditions).subquery()
        conditions = [due, WebhookDelivery.id.in_(
            select(ranked.c.id).where(ranked.c.rank <= per_receiver))]
    candidates = list(db.scalars(
        select(WebhookDelivery)
        .where(*conditions)
        .order_by(WebhookDelivery.next_attempt_at, WebhookDelivery.id).limit(limit)
        .with_for_update(skip_locked=True)
    ))
    taken, counts = [], dict(in_flight)
    for row in candidates:
        if row.receiver is None:  # a row written before receivers were recorded
            row.receiver = webhooks.receiver_of(row.url)
        receiver = row.receiver
        if per_receiver and counts.get(receiver, 0) >= per_receiver:
            continue
        counts[receiver] = counts.get(receiver, 0) + 1
        taken.append(row)
    if taken:
        lease_until = now + timedelta(seconds=lease_seconds)
        db.execute(
            update(WebhookDelivery).where(WebhookDelivery.id.in_([row.id for row in taken]))
            .values(next_attempt_at=lease_until)
            .execution_options(synchronize_session=False)
        )
        for row in taken:
            row.next_attempt_at = lease_until
    return taken


# ------------------------------------------------------------------ outcomes


def record(db: Session, delivery: WebhookDelivery, result: webhooks.Delivery, now: datetime,
           max_tries: int, backoff: ReceiverBackoff | None = None) -> None:
    """What one attempt did, for the delivery and for its receiver (the
    caller commits)."""
    delivery.tries += 1
    delivery.last_attempt_at, delivery.response_status = now, result.status
    note_receiver(db, delivery.receiver or webhooks.receiver_of(delivery.url), result, now,
                  backoff or ReceiverBackoff())
    if result.delivered:
        delivery.status, delivery.delivered_at, delivery.last_error = DELIVERED, now, None
        metrics.WEBHOOK_DELIVERIES.labels("delivered").inc()
        return
    delivery.last_error = (result.error or f"http_{result.status}")[:500]
    delay = webhooks.next_delay(delivery.tries) if result.retry else None
    if delay is None or delivery.tries >= max_tries:
        delivery.status = FAILED
        metrics.WEBHOOK_DELIVERIES.labels("failed").inc()
        log.warning("webhook for job %s given up after %d tries: %s", delivery.job_id,
                    delivery.tries, delivery.last_error)
        return
    delivery.next_attempt_at = now + timedelta(seconds=delay)
    metrics.WEBHOOK_DELIVERIES.labels("retrying").inc()


def note_receiver(db: Session, receiver: str | None, result: webhooks.Delivery, now: datetime,
                  backoff: ReceiverBackoff) -> None:
    """A receiver that answered (any status) is well: its failures are
    forgotten. One that did not answer, or answered 408/425/429/5xx, fails
    once more and is backed off past the threshold. Refusals of our own (a
    URL the guard refuses, no secret) say nothing about the receiver."""
    if receiver is None:
        return
    if result.status is not None and (result.delivered or not result.retry):
        db.execute(delete(WebhookReceiver).where(WebhookReceiver.receiver == receiver))
        return
    if not result.retry:
        return
    _insert_if_absent(db, receiver, now)
    # one statement, so two failures of one receiver at once both count
    failures = db.scalar(
        update(WebhookReceiver).where(WebhookReceiver.receiver == receiver)
        .values(failures=WebhookReceiver.failures + 1, updated_at=now,
                last_error=(result.error or f"http_{result.status}")[:500])
        .returning(WebhookReceiver.failures)
        .execution_options(synchronize_session=False)
    )
    delay = backoff.delay(failures or 0)
    if delay is not None:
        blocked_until = now + timedelta(seconds=delay)
        db.execute(update(WebhookReceiver).where(WebhookReceiver.receiver == receiver)
                   .values(blocked_until=blocked_until)
                   .execution_options(synchronize_session=False))
        log.warning("webhook receiver %s failed %d times in a row: backed off until %s",
                    receiver, failures, blocked_until.isoformat())


def _insert_if_absent(db: Session, receiver: str, now: datetime) -> None:
    db.execute(insert_for(db, WebhookReceiver).values(receiver=receiver, failures=0, updated_at=now)
               .on_conflict_do_nothing())


def forget_receivers(db: Session, now: datetime) -> int:
    """Delete receivers' rows a day after their last failure and block (the
    caller commits)."""
    cutoff = now - FORGET_RECEIVER_AFTER
    return db.execute(delete(WebhookReceiver).where(
        WebhookReceiver.updated_at < cutoff,
        or_(WebhookReceiver.blocked_until.is_(None), WebhookReceiver.blocked_until < cutoff),
    )).rowcount


def attempt(engine: Engine, delivery_id: uuid.UUID, secret: str, *, guard: webhooks.UrlGuard,
            timeout_s: float, max_tries: int, backoff: ReceiverBackoff) -> webhooks.Delivery:
    """Send one leased delivery and record the outcome in a transaction of
    its own (it runs on a :class:`Sender` thread, not in a worker)."""
    with Session(engine) as db:
        row = db.get(WebhookDelivery, delivery_id)
        if row is None or row.status != PENDING:  # erased or finished meanwhile
            return webhooks.Delivery(False, False, None, "gone")
        url, body = row.url, row.body.encode()
        db.rollback()  # no transaction held open while the receiver is called
        result = webhooks.deliver(url, body, secret, guard=guard, timeout_s=timeout_s,
                                  delivery_id=str(delivery_id))
        row = db.get(WebhookDelivery, delivery_id, populate_existing=True)
        if row is None or row.status != PENDING:
            return result
        record(db, row, result, utcnow(), max_tries, backoff)
        db.commit()
        return result


# ------------------------------------------------------------------ listing, redelivering


def view(row: WebhookDelivery) -> dict:
    """A delivery as its job's owner sees it (``contracts.WebhookDeliveryView``)."""
    return {
        "id": row.id, "job_id": row.job_id, "job_attempt": row.attempt,
        "event": WEBHOOK_EVENT_OF_STATE[row.job_status], "url": row.url, "status": row.status,
        "attempts": row.tries, "response_status": row.response_status,
        "last_error": row.last_error, "created_at": row.created_at,
        "last_attempt_at": row.last_attempt_at,
        "next_attempt_at": row.next_attempt_at if row.status == PENDING else None,
        "delivered_at": row.delivered_at,
    }


def list_for_job(db: Session, job_id: uuid.UUID, limit: int,
                 cursor: str | None) -> tuple[list[WebhookDelivery], str | None]:
    """A page of a job's deliveries, newest first (the caller checked the
    job is the user's)."""
    stmt = select(WebhookDelivery).where(WebhookDelivery.job_id == job_id)
    return paginate(db, stmt, WebhookDelivery.created_at, WebhookDelivery.id, limit, cursor)


def find(db: Session, job_id: uuid.UUID | None, user_id: uuid.UUID | None,
         status: str | None, limit: int) -> list[WebhookDelivery]:
    """For operators: deliveries by job, user and status, newest first."""
    stmt = select(WebhookDelivery)
    if job_id is not None:
        stmt = stmt.where(WebhookDelivery.job_id == job_id)
    if user_id is not None:
        stmt = stmt.where(WebhookDelivery.user_id == user_id)
    if status:
        stmt = stmt.where(WebhookDelivery.status == status)
    return list(db.scalars(stmt.order_by(WebhookDelivery.created_at.desc(),
                                         WebhookDelivery.id.desc()).limit(limit)))


def redeliver(db: Session, delivery_id, now: datetime) -> WebhookDelivery:
    """Send a delivery again at the timer's next tick (the caller commits):
    the same body and the same ``webhook-id``, so a receiver that has it
    already can tell. Its attempts are kept; as a failed delivery has used
    its tries, a redelivery that fails again is failed at once, while a
    receiver's 5xx on a delivery with tries left is retried as usual. 404
    for an unknown id; 409 ``delivery_pending`` for one that is still
    pending (it may be in flight: sending it at once too would send it
    twice)."""
    row = db.get(WebhookDelivery, client_id(delivery_id, "webhook delivery"))
    if row is None:
        raise not_found("webhook delivery")
    if row.status == PENDING:
        raise conflict("the delivery is still pending: it is sent at next_attempt_at",
                       code="delivery_pending", next_attempt_at=row.next_attempt_at.isoformat())
    row.status, row.next_attempt_at, row.delivered_at = PENDING, now, None
    return row


# ------------------------------------------------------------------ the pool


class Sender:
    """This process's deliveries in flight: at most ``size`` at once, at most
    ``per_receiver`` for one receiver. Each runs on its own thread, which is
    a green thread under ``nameko run`` (threading is patched), so the pool is
    a bounded set of green threads; the timer only hands work over and never
    waits for a receiver."""

    def __init__(self, size: int, per_receiver: int):
        self.size, self.per_receiver = max(1, int(size)), max(1, int(per_receiver))
        self._lock = threading.Lock()
        self._in_flight: dict[str | None, int] = {}
        self._idle = threading.Condition(self._lock)

    def free(self) -> int:
        with self._lock:
            return self.size - sum(self._in_flight.values())

    def in_flight(self) -> dict[str | None, int]:
        with self._lock:
            return dict(self._in_flight)

    def start(self, receiver: str | None, work: Callable[[], object]) -> None:
        """Run ``work`` on a pool thread (the caller checked :meth:`free`)."""
        with self._lock:
            self._in_flight[receiver] = self._in_flight.get(receiver, 0) + 1
        threading.Thread(target=self._run, args=(receiver, work), name="webhook",
                         daemon=True).start()

    def _run(self, receiver: str | None, work: Callable[[], object]) -> None:
        try:
            work()
        except Exception:  # the lease runs out and the delivery is taken again
            log.exception("webhook delivery to %s crashed", receiver)
        finally:
            with self._lock:
                self._in_flight[receiver] -= 1
                if not self._in_flight[receiver]:
                    del self._in_flight[receiver]
                self._idle.notify_all()

    def wait_idle(self, timeout: float) -> bool:
        """Wait until nothing is in flight (tests, shutdown)."""
        with self._lock:
            return self._idle.wait_for(lambda: not self._in_flight, timeout)
