"""Keyset pagination, newest first, as API.md's list convention wants:
``?limit=`` (1–100, default 20) and an opaque ``?cursor=``; answers are
``{"items": [...], "next_cursor": "..." | None}``.

Rows are ordered by ``(created_at, id)`` descending; the cursor encodes the
last row's pair, so pages stay stable while new rows arrive.
"""

from __future__ import annotations

import base64
import binascii
import uuid
from datetime import datetime

from sqlalchemy import Select, and_, or_
from sqlalchemy.orm import Session

from services.common.errors import invalid_request
from services.common.ids import isoformat


def encode_cursor(created_at: datetime, row_id: uuid.UUID) -> str:
    raw = f"{isoformat(created_at)}|{row_id}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, uuid.UUID]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        created, _, row_id = raw.partition("|")
        return datetime.fromisoformat(created.replace("Z", "+00:00")), uuid.UUID(row_id)
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise invalid_request("the cursor is not valid", fields={"cursor": ["Not a valid cursor."]}) from None


def paginate(db: Session, stmt: Select, created_col, id_col, limit: int,
             cursor: str | None) -> tuple[list, str | None]:
    """One page of ``stmt``'s rows (a select of one entity) and the next cursor."""
    if cursor:
        created_at, row_id = decode_cursor(cursor)
        stmt = stmt.where(or_(created_col < created_at, and_(created_col == created_at, id_col < row_id)))
    rows = list(db.scalars(stmt.order_by(created_col.desc(), id_col.desc()).limit(limit + 1)))
    if len(rows) <= limit:
        return rows, None
    rows = rows[:limit]
    last = rows[-1]
    return rows, encode_cursor(getattr(last, created_col.key), getattr(last, id_col.key))
