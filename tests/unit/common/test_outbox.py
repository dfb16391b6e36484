"""The outbox table, and the publisher that fills it in the worker's
transaction and publishes after the commit."""

from __future__ import annotations

from datetime import timedelta
from types import SimpleNamespace

import pytest
from sqlalchemy import MetaData, create_engine, update
from sqlalchemy.orm import Session

from services.common import messaging, outbox
from services.common.ids import utcnow
from services.common.messaging import EventPublisher


def test_rows_come_due_oldest_first_after_the_delay_and_go_when_removed():
    metadata = MetaData()
    table = outbox.outbox_table(metadata)
    engine = create_engine("sqlite://")
    metadata.create_all(engine)
    now = utcnow()
    with Session(engine) as session:
        for n, age in enumerate((30, 90, 2)):
            row = outbox.OutboxRow(f"e{n}", "happened", {"n": n}, {"nameko.correlation_id": f"c{n}"})
            outbox.enqueue(session, table, row)
            session.execute(update(table).where(table.c.event_id == f"e{n}")
                            .values(created_at=now - timedelta(seconds=age)))
        session.commit()

    with engine.begin() as conn:
        rows = outbox.due(conn, table, timedelta(seconds=5), now=now)
        assert [r.event_id for r in rows] == ["e1", "e0"]  # e2 is too fresh
        assert rows[0].body == {"n": 1} and rows[0].headers == {"nameko.correlation_id": "c1"}
        assert rows[0].routing_key == "happened"
        outbox.remove(conn, table, ["e1"])
    with engine.begin() as conn:
        assert [r.event_id for r in outbox.due(conn, table, timedelta(0), now=now)] == ["e0", "e2"]


# ---------------------------------------------------------------- publishing after the commit


class _WorkerCtx:
    pass


@pytest.fixture
def publisher(monkeypatch):
    """An EventPublisher wired by hand to one session; what it sends is recorded."""
    metadata = MetaData()
    table = outbox.outbox_table(metadata)
    engine = create_engine("sqlite://")
    metadata.create_all(engine)
    ctx = _WorkerCtx()
    session = Session(engine)
    publisher = EventPublisher(outbox=table)
    publisher.container = SimpleNamespace(service_name="svc")
    publisher.database = SimpleNamespace(sessions={ctx: session})
    monkeypatch.setattr(publisher, "get_message_headers", lambda worker_ctx: {})
    monkeypatch.setattr(messaging.contracts, "make_event",
                        lambda name, data: {"event_id": data["id"], "name": name})
    sent = []
    monkeypatch.setattr(publisher, "_send", lambda rows: sent.extend(r.event_id for r in rows) or [])
    yield publisher.get_dependency(ctx), session, sent
    session.close()
    engine.dispose()


def test_events_are_published_by_the_commit_and_never_by_a_rollback(publisher):
    dispatch, session, sent = publisher
    dispatch("happened", {"id": "e1"})
    assert sent == []  # dispatched into the outbox, not yet out
    session.rollback()
    dispatch("happened", {"id": "e2"})
    session.commit()
    assert sent == ["e2"]


def test_a_released_savepoint_publishes_nothing_before_the_commit(publisher):
    dispatch, session, sent = publisher
    dispatch("happened", {"id": "e1"})
    with session.begin_nested():
        dispatch("happened", {"id": "e2"})
    assert sent == []
    session.commit()
    assert sent == ["e1", "e2"]


def test_an_after_reply_entrypoint_publishes_after_its_reply_not_at_the_commit(monkeypatch):
    """generation's submit: the row is committed with the job, and published
    at ``worker_result`` (nameko calls it once the RPC's reply is sent); any
    other entrypoint of the same publisher still publishes at the commit."""
    metadata = MetaData()
    table = outbox.outbox_table(metadata)
    engine = create_engine("sqlite://")
    metadata.create_all(engine)
    submit, other = _WorkerCtx(), _WorkerCtx()
    submit.entrypoint = SimpleNamespace(method_name="submit")
    other.entrypoint = SimpleNamespace(method_name="cancel_job")
    sessions = {submit: Session(engine), other: Session(engine)}
    publisher = EventPublisher(outbox=table, after_reply=("submit",))
    publisher.container = SimpleNamespace(service_name="svc")
    publisher.database = SimpleNamespace(sessions=sessions)
    monkeypatch.setattr(publisher, "get_message_headers", lambda worker_ctx: {})
    monkeypatch.setattr(messaging.contracts, "make_event",
                        lambda name, data: {"event_id": data["id"], "name": name})
    sent = []
    monkeypatch.setattr(publisher, "_send", lambda rows: sent.extend(r.event_id for r in rows) or [])

    publisher.get_dependency(submit)("job_requested", {"id": "e1"})
    sessions[submit].commit()
    with engine.connect() as conn:  # committed: the relay would publish it if the process died
        assert [r.event_id for r in outbox.due(conn, table, timedelta(0),
                                               now=utcnow() + timedelta(seconds=1))] == ["e1"]
    assert sent == []
    publisher.get_dependency(other)("job_cancelled", {"id": "e2"})
    sessions[other].commit()
    assert sent == ["e2"]
    publisher.worker_result(submit)
    assert sent == ["e2", "e1"]
    publisher.worker_teardown(submit)  # nothing left to publish twice
    assert sent == ["e2", "e1"] and publisher.deferred == {}
    for session in sessions.values():
        session.close()
    engine.dispose()
