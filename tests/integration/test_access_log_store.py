"""Access-log batches on PostgreSQL (services/privacy/access_logs.py): a
batch is one INSERT; a fact already kept, committed before or by a delivery
of the same batch running at the same moment in another session, is skipped
by the database, not an error."""

from __future__ import annotations

import threading
import uuid
from datetime import UTC, datetime

import pytest
from sqlalchemy import event as sa_event
from sqlalchemy import func, select
from sqlalchemy.orm import sessionmaker

from services.common.contracts.privacy import ACCESS_LOG_BATCH_MAX
from services.privacy import access_logs
from services.privacy.models import AccessLog

pytestmark = pytest.mark.integration

KEY = b"integration-pseudonym-key"


@pytest.fixture(scope="module")
def factory(make_migrated_engine):
    engine = make_migrated_engine("privacy", pool_size=4)
    return sessionmaker(bind=engine, expire_on_commit=False)


def facts(n: int, user=None) -> list[dict]:
    return [{"id": str(uuid.uuid4()), "user_id": user, "at": datetime.now(UTC), "method": "GET",
             "route": "/v1/me", "status": 200, "network": "203.0.113.0/24"} for _ in range(n)]


def count(factory, batch) -> int:
    with factory() as db:
        return db.scalar(select(func.count()).select_from(AccessLog)
                         .where(AccessLog.id.in_([uuid.UUID(f["id"]) for f in batch])))


def test_a_full_batch_is_one_insert_and_stored_once(factory):
    batch = facts(ACCESS_LOG_BATCH_MAX, user=str(uuid.uuid4()))
    seen: list[str] = []
    engine = factory.kw["bind"]

    def record(conn, cursor, statement, parameters, context, executemany):
        seen.append(statement.split()[0].upper())

    sa_event.listen(engine, "before_cursor_execute", record)
    try:
        with factory() as db:
            assert access_logs.store_all(db, KEY, batch) == ACCESS_LOG_BATCH_MAX
            db.commit()
    finally:
        sa_event.remove(engine, "before_cursor_execute", record)
    assert seen.count("INSERT") == 1 and seen.count("SELECT") == 1, seen
    with factory() as db:  # delivered again: nothing added
        assert access_logs.store_all(db, KEY, batch + facts(2)) == 2
        db.commit()
    assert count(factory, batch) == ACCESS_LOG_BATCH_MAX


def test_the_same_batch_in_two_sessions_at_once_is_kept_once_without_an_error(factory):
    batch = facts(50)
    inserted, results, errors = threading.Event(), {}, []

    def first():
        try:
            with factory() as db:
                results["first"] = access_logs.store_all(db, KEY, batch)
                inserted.set()
                threading.Event().wait(0.5)  # the second insert waits on these rows meanwhile
                db.commit()
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)
            inserted.set()

    def second():
        try:
            inserted.wait(10)
            with factory() as db:
                results["second"] = access_logs.store_all(db, KEY, batch + facts(1))
                db.commit()
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=first), threading.Thread(target=second)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert errors == []
    assert results == {"first": 50, "second": 1}
    assert count(factory, batch) == 50
