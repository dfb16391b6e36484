"""The transactional outbox: an event is a row written with the state it
describes, in the same transaction, and published once that transaction commits.

A service that dispatches events keeps an ``outbox`` table
(:func:`outbox_table`) in its own database. :class:`~services.common.messaging.EventPublisher`
inserts the enveloped event there when the service calls ``dispatch``;
after the worker's commit it publishes the rows it wrote and deletes them.
If the broker is down then, or the process dies between the commit and the
publish, the rows stay and the publisher's relay sends them later: a state
change is never without its event, and a rolled-back change never has one.
Delivery is at least once; consumers are idempotent on ``event_id``.

Rows are deleted as soon as they are published: events can carry secrets on
their way to the mailer (a verification code, a reset token) that the
service itself only stores hashed. Their bodies can carry an address or a name,
so a body is stored encrypted like a personal field (``outbox.body``,
services/common/fieldcrypt.py): a row's bytes left in a SQLite WAL or among
PostgreSQL's dead tuples hold nothing readable.
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta

from sqlalchemy import Column, Connection, String, Table, Text, delete, insert, select
from sqlalchemy.orm import Session

from services.common.db import UtcDateTime
from services.common.fieldcrypt import Encrypted
from services.common.ids import utcnow


def outbox_table(metadata) -> Table:
    return Table(
        "outbox",
        metadata,
        Column("event_id", String(36), primary_key=True),
        Column("routing_key", String(200), nullable=False),
        Column("body", Encrypted("outbox.body"), nullable=False),
        Column("headers", Text, nullable=False),
        Column("created_at", UtcDateTime(), nullable=False, index=True),
    )


class OutboxRow:
    __slots__ = ("event_id", "routing_key", "body", "headers")

    def __init__(self, event_id: str, routing_key: str, body: dict, headers: dict):
        self.event_id = event_id
        self.routing_key = routing_key
        self.body = body
        self.headers = headers


def enqueue(session: Session, table: Table, row: OutboxRow) -> None:
    """Write ``row`` in the session's current transaction."""
    session.execute(
        insert(table).values(
            event_id=row.event_id,
            routing_key=row.routing_key,
            body=json.dumps(row.body),
            headers=json.dumps(row.headers),
            created_at=utcnow(),
        )
    )


def due(conn: Connection, table: Table, older_than: timedelta, limit: int = 100,
        now: datetime | None = None) -> list[OutboxRow]:
    """Rows left unpublished for longer than ``older_than``, oldest first,
    locked (skipping rows another replica's relay holds) on PostgreSQL."""
    cutoff = (now or utcnow()) - older_than
    stmt = (
        select(table)
        .where(table.c.created_at <= cutoff)
        .order_by(table.c.created_at)
        .limit(limit)
        .with_for_update(skip_locked=True)
    )
    return [
        OutboxRow(r.event_id, r.routing_key, json.loads(r.body), json.loads(r.headers))
        for r in conn.execute(stmt)
    ]


def remove(conn: Connection, table: Table, event_ids: list[str]) -> None:
    if event_ids:
        conn.execute(delete(table).where(table.c.event_id.in_(event_ids)))
