"""Webhook deliveries on SQLite: leasing due rows, recording outcomes with backoff."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

from services.generation import deliveries, webhooks
from services.generation.models import WebhookDelivery

NOW = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)


def delivery(db, due=NOW) -> WebhookDelivery:
    row = WebhookDelivery(id=uuid.uuid4(), job_id=uuid.uuid4(), user_id=uuid.uuid4(), attempt=1,
                          job_status="succeeded", url="https://hooks.example.com/x", body="{}",
                          status=deliveries.PENDING, tries=0, next_attempt_at=due, created_at=NOW)
    db.add(row)
    db.commit()
    return row


def test_due_rows_are_leased_so_a_second_taker_gets_none(db):
    due, later = delivery(db), delivery(db, NOW + timedelta(minutes=5))
    taken = deliveries.take_due(db, NOW)
    db.commit()
    assert [row.id for row in taken] == [due.id]
    assert deliveries.take_due(db, NOW + timedelta(seconds=1)) == []  # leased
    again = deliveries.take_due(db, NOW + timedelta(seconds=deliveries.LEASE_SECONDS + 1))
    assert [row.id for row in again] == [due.id]
    assert later.id not in [row.id for row in again]


def test_a_retryable_failure_backs_off_and_a_refusal_ends_it(db):
    row = delivery(db)
    deliveries.record(db, row, webhooks.Delivery(False, True, 503, "receiver_error"), NOW, 8)
    assert (row.status, row.tries, row.last_error) == ("pending", 1, "receiver_error")
    assert row.next_attempt_at == NOW + timedelta(seconds=webhooks.BACKOFF_SCHEDULE_S[0])
    deliveries.record(db, row, webhooks.Delivery(False, False, 410, "receiver_refused"), NOW, 8)
    assert (row.status, row.tries) == ("failed", 2)


def test_delivered_is_final_and_tries_are_bounded(db):
    row = delivery(db)
    deliveries.record(db, row, webhooks.Delivery(True, False, 204), NOW, 8)
    assert (row.status, row.delivered_at, row.last_error) == ("delivered", NOW, None)
    capped = delivery(db)
    for _ in range(3):
        deliveries.record(db, capped, webhooks.Delivery(False, True, None, "timeout"), NOW, 3)
    assert (capped.status, capped.tries) == ("failed", 3)
