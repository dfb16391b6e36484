from __future__ import annotations

from datetime import timedelta

from sqlalchemy import MetaData, create_engine, update
from sqlalchemy.orm import Session

from services.common import outbox
from services.common.ids import utcnow


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
