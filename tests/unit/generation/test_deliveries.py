"""Webhook deliveries on SQLite: leasing due rows (per-receiver limits,
receivers backed off), recording outcomes with backoff, the sender's pool."""

from __future__ import annotations

import threading
import uuid
from datetime import UTC, datetime, timedelta

import pytest

from services.common.errors import DomainError
from services.generation import deliveries, webhooks
from services.generation.models import WebhookDelivery, WebhookReceiver

NOW = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)


def delivery(db, due=NOW, url="https://hooks.example.com/x") -> WebhookDelivery:
    row = WebhookDelivery(id=uuid.uuid4(), job_id=uuid.uuid4(), user_id=uuid.uuid4(), attempt=1,
                          job_status="succeeded", url=url, receiver=webhooks.receiver_of(url),
                          body="{}", status=deliveries.PENDING, tries=0, next_attempt_at=due,
                          created_at=NOW)
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


SLOW, FAST = "https://slow.example.com:443", "https://fast.example.com:443"
TIMEOUT = webhooks.Delivery(False, True, None, "timeout")


def state_of(db, receiver: str) -> WebhookReceiver | None:
    return db.get(WebhookReceiver, receiver, populate_existing=True)


def test_one_receivers_backlog_does_not_take_the_whole_batch(db):
    slow = [delivery(db, NOW - timedelta(minutes=10 - i), "https://slow.example.com/h")
            for i in range(6)]
    fast = delivery(db, NOW, "https://fast.example.com/h")
    taken = deliveries.take_due(db, NOW, 3, per_receiver=2)
    db.commit()
    assert [row.id for row in taken] == [slow[0].id, slow[1].id, fast.id]
    # two of the slow receiver's are in flight: none more of it, whatever the room
    more = deliveries.take_due(db, NOW + timedelta(seconds=1), 10, per_receiver=2,
                               in_flight={SLOW: 2})
    assert more == []
    one_free = deliveries.take_due(db, NOW + timedelta(seconds=1), 10, per_receiver=2,
                                   in_flight={SLOW: 1})
    assert [row.id for row in one_free] == [slow[2].id]


def test_a_receiver_that_keeps_failing_is_backed_off_alone(db):
    backoff = deliveries.ReceiverBackoff(failures=3, base_seconds=60, max_seconds=300)
    slow = [delivery(db, url="https://slow.example.com/h") for _ in range(4)]
    for row in slow[:2]:
        deliveries.record(db, row, TIMEOUT, NOW, 8, backoff)
    db.commit()
    assert state_of(db, SLOW).blocked_until is None  # 2 < 3: not yet
    deliveries.record(db, slow[2], TIMEOUT, NOW, 8, backoff)
    db.commit()
    state = state_of(db, SLOW)
    assert (state.failures, state.blocked_until, state.last_error) == \
        (3, NOW + timedelta(seconds=60), "timeout")
    fast = delivery(db, url="https://fast.example.com/h")
    # slow[3] is due and has never been tried, but its receiver is backed off
    assert [row.id for row in deliveries.take_due(db, NOW + timedelta(seconds=59))] == [fast.id]
    later = NOW + timedelta(seconds=61)
    assert slow[3].id in [row.id for row in deliveries.take_due(db, later)]
    assert db.get(WebhookDelivery, slow[3].id).tries == 0  # waiting costs no try
    deliveries.record(db, slow[3], TIMEOUT, later, 8, backoff)  # a 4th failure: twice as long
    assert state_of(db, SLOW).blocked_until == later + timedelta(seconds=120)
    assert backoff.delay(10) == 300  # capped


def test_any_answer_from_the_receiver_forgets_its_failures(db):
    backoff = deliveries.ReceiverBackoff(failures=1)
    first, second = delivery(db), delivery(db)
    deliveries.record(db, first, webhooks.Delivery(False, True, 503, "receiver_error"), NOW, 8,
                      backoff)
    receiver = "https://hooks.example.com:443"
    assert state_of(db, receiver).failures == 1
    deliveries.record(db, second, webhooks.Delivery(False, False, 410, "receiver_refused"), NOW,
                      8, backoff)
    assert state_of(db, receiver) is None
    # a refusal of our own (the guard) says nothing about the receiver
    third = delivery(db)
    deliveries.record(db, third, webhooks.Delivery(False, False, None, "address_not_allowed"),
                      NOW, 8, backoff)
    assert state_of(db, receiver) is None


def test_a_receivers_state_is_forgotten_a_day_after_it_last_failed(db):
    deliveries.record(db, delivery(db), TIMEOUT, NOW, 8, deliveries.ReceiverBackoff(failures=1))
    db.commit()
    assert deliveries.forget_receivers(db, NOW + timedelta(hours=23)) == 0
    assert deliveries.forget_receivers(db, NOW + timedelta(days=1, minutes=2)) == 1


def test_the_sender_is_bounded_overall_and_per_receiver():
    sender = deliveries.Sender(size=3, per_receiver=2)
    release = threading.Event()
    for receiver in (SLOW, SLOW, FAST):
        sender.start(receiver, release.wait)
    assert (sender.free(), sender.in_flight()) == (0, {SLOW: 2, FAST: 1})
    release.set()
    assert sender.wait_idle(5)
    assert (sender.free(), sender.in_flight()) == (3, {})
    sender.start(SLOW, lambda: 1 / 0)  # a crash frees its slot too
    assert sender.wait_idle(5) and sender.free() == 3


def test_an_attempt_records_its_answer_and_the_view_names_the_event(db):
    row = delivery(db)
    deliveries.record(db, row, webhooks.Delivery(False, True, 503, "receiver_error"), NOW, 8)
    view = deliveries.view(row)
    assert (view["event"], view["attempts"], view["response_status"]) == ("completed", 1, 503)
    assert view["last_attempt_at"] == NOW and view["next_attempt_at"] > NOW
    later = NOW + timedelta(minutes=1)
    deliveries.record(db, row, webhooks.Delivery(False, True, None, "timeout"), later, 8)
    assert (row.response_status, row.last_attempt_at) == (None, later)  # no answer this time
    deliveries.record(db, row, webhooks.Delivery(True, False, 204), later, 8)
    view = deliveries.view(row)
    assert (view["status"], view["response_status"], view["next_attempt_at"]) == (
        "delivered", 204, None)


def test_a_jobs_deliveries_come_in_pages_newest_first(db):
    job_id = uuid.uuid4()
    rows = [delivery(db) for _ in range(3)]
    for index, (row, status) in enumerate(zip(rows, ("running", "failed", "failed"),
                                              strict=True)):
        row.job_id, row.created_at = job_id, NOW + timedelta(seconds=index)
        row.job_status, row.attempt = status, 1 + index // 2  # started, failed; replayed, failed
    delivery(db)  # another job's
    db.commit()
    first, cursor = deliveries.list_for_job(db, job_id, 2, None)
    rest, end = deliveries.list_for_job(db, job_id, 2, cursor)
    assert [r.id for r in first + rest] == [rows[2].id, rows[1].id, rows[0].id]
    assert end is None


def test_a_redelivery_sends_an_ended_delivery_again_with_its_id(db):
    row = delivery(db)
    deliveries.record(db, row, webhooks.Delivery(False, False, 410, "receiver_refused"), NOW, 8)
    assert row.status == deliveries.FAILED
    later = NOW + timedelta(hours=1)
    again = deliveries.redeliver(db, str(row.id), later)
    db.commit()
    assert (again.id, again.status, again.next_attempt_at, again.tries) == (
        row.id, deliveries.PENDING, later, 1)
    assert [r.id for r in deliveries.take_due(db, later)] == [row.id]
    with pytest.raises(DomainError) as info:  # pending (maybe in flight): not twice
        deliveries.redeliver(db, row.id, later)
    assert (info.value.code, info.value.status) == ("delivery_pending", 409)
    for unknown in (uuid.uuid4(), "not-an-id"):
        with pytest.raises(DomainError) as info:
            deliveries.redeliver(db, unknown, later)
        assert info.value.status == 404


def test_operators_find_deliveries_by_job_user_and_status(db):
    a, b = delivery(db), delivery(db)
    deliveries.record(db, b, webhooks.Delivery(True, False, 200), NOW, 8)
    db.commit()
    assert [r.id for r in deliveries.find(db, a.job_id, None, None, 10)] == [a.id]
    assert [r.id for r in deliveries.find(db, None, b.user_id, None, 10)] == [b.id]
    assert [r.id for r in deliveries.find(db, None, None, "delivered", 10)] == [b.id]
