"""Webhook deliveries under real concurrency on PostgreSQL: several timers
(replicas) taking due rows at once never take the same one, and failures of
one receiver recorded at once all count towards its backoff."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy.orm import sessionmaker

from services.common.db import make_engine
from services.common.migrations import SERVICES_DIR, upgrade
from services.generation import deliveries, webhooks
from services.generation.models import WebhookDelivery, WebhookReceiver
from tests.integration.test_billing_concurrency import run_together  # threads at one barrier

pytestmark = pytest.mark.integration

THREADS = 8
NOW = datetime(2026, 12, 3, 10, 0, tzinfo=UTC)


@pytest.fixture(scope="module")
def factory(make_database):
    url = make_database("webhook_concurrency")
    upgrade(SERVICES_DIR / "generation" / "migrations", url)
    engine = make_engine(url, pool_size=THREADS + 2)
    yield sessionmaker(bind=engine, expire_on_commit=False)
    engine.dispose()


def add_deliveries(factory, count: int, host: str) -> list[uuid.UUID]:
    url = f"https://{host}/hook"
    rows = [WebhookDelivery(id=uuid.uuid4(), job_id=uuid.uuid4(), user_id=uuid.uuid4(),
                            attempt=1, job_status="succeeded", url=url,
                            receiver=webhooks.receiver_of(url), body="{}",
                            status=deliveries.PENDING, tries=0, next_attempt_at=NOW,
                            created_at=NOW) for _ in range(count)]
    with factory() as db:
        db.add_all(rows)
        db.commit()
    return [row.id for row in rows]


def test_replicas_taking_due_rows_at_once_never_take_the_same_one(factory):
    hosts = [f"r{i}-{uuid.uuid4().hex[:6]}.example.com" for i in range(6)]
    ids = {i for host in hosts for i in add_deliveries(factory, 4, host)}

    def take(_):
        with factory() as db:
            taken = deliveries.take_due(db, NOW, 5, per_receiver=2)
            db.commit()
            return [row.id for row in taken]

    results = run_together(THREADS, take)
    assert not [r for r in results if isinstance(r, Exception)], results
    taken = [i for r in results for i in r]
    assert len(taken) == len(set(taken))  # no row twice
    assert set(taken) <= ids and len(taken) >= 12  # the replicas shared the work
    # A replica skips rows another one holds, so a round may leave a few for
    # the next tick; the next rounds take exactly those (the taken stay leased).
    for _ in range(5):
        more = take(None)
        if not more:
            break
        taken += more
    assert len(taken) == len(set(taken)) and set(taken) == ids


def test_failures_of_one_receiver_recorded_at_once_all_count(factory):
    host = f"down-{uuid.uuid4().hex[:6]}.example.com"
    ids = add_deliveries(factory, THREADS, host)
    backoff = deliveries.ReceiverBackoff(failures=THREADS, base_seconds=60, max_seconds=600)
    failure = webhooks.Delivery(False, True, 503, "receiver_error")

    def fail(i):
        with factory() as db:
            row = db.get(WebhookDelivery, ids[i])
            deliveries.record(db, row, failure, NOW, 8, backoff)
            db.commit()

    results = run_together(THREADS, fail)
    assert not [r for r in results if isinstance(r, Exception)], results
    with factory() as db:
        state = db.get(WebhookReceiver, f"https://{host}:443")
        assert state.failures == THREADS
        assert state.blocked_until == NOW + timedelta(seconds=60)
