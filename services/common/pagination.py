"""Keyset pagination, newest first, as docs/api.md's list convention wants:
``?limit=`` (1–100, default 20) and an opaque ``?cursor=``; answers are
``{"items": [...], "next_cursor": "..." | None}``.

Rows are ordered by ``(created_at, id)`` descending; the cursor encodes the
last row's pair, so pages stay stable while new rows arrive. Lists keyed on a
sequence number (the billing ledger) use :func:`encode_seq_cursor`. A walk
over ids in order that carries a count from page to page (the ledger
verification's pages of accounts) uses :func:`encode_after_cursor`.

A cursor comes back from the client, so it is decoded strictly: anything
that is not exactly what :func:`encode_cursor` / :func:`encode_seq_cursor`
make (other base64, other text, a time without its zone or out of range, an
id in another spelling, a number too big for the database...) is 400
``invalid_request`` before any query runs, never a database error.
"""

from __future__ import annotations

import base64
import binascii
import re
import uuid
from datetime import UTC, datetime

from sqlalchemy import Select, and_, or_
from sqlalchemy.orm import Session

from services.common.errors import DomainError, invalid_request
from services.common.ids import isoformat

MAX_CURSOR_LENGTH = 200
MAX_SEQ = 2**31 - 1  # an INTEGER (the ledger's seq column): PostgreSQL refuses a larger bound
_BASE64URL = re.compile(rf"[A-Za-z0-9_-]{{1,{MAX_CURSOR_LENGTH}}}")
# what isoformat() writes: UTC, "Z", optional microseconds
_TIMESTAMP = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(?:\.[0-9]{6})?Z")
_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
_SEQ = re.compile(r"seq:(0|[1-9][0-9]{0,9})")
_AFTER = re.compile(rf"after:({_UUID.pattern})\|(0|[1-9][0-9]{{0,9}})")


def invalid_cursor() -> DomainError:
    return invalid_request("the cursor is not valid", fields={"cursor": ["Not a valid cursor."]})


def _pack(text: str) -> str:
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


def _unpack(cursor) -> str:
    """The text inside a cursor, or 400: URL-safe base64 (unpadded) of ASCII."""
    if not isinstance(cursor, str) or not _BASE64URL.fullmatch(cursor) or len(cursor) % 4 == 1:
        raise invalid_cursor()
    try:
        return base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode("ascii")
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise invalid_cursor() from None


def encode_cursor(created_at: datetime, row_id: uuid.UUID) -> str:
    return _pack(f"{isoformat(created_at)}|{row_id}")


def decode_cursor(cursor) -> tuple[datetime, uuid.UUID]:
    """The ``(created_at, id)`` pair of a cursor; 400 ``invalid_request`` otherwise."""
    created, sep, row_id = _unpack(cursor).partition("|")
    if not sep or not _TIMESTAMP.fullmatch(created) or not _UUID.fullmatch(row_id):
        raise invalid_cursor()
    try:
        when = datetime.fromisoformat(created[:-1]).replace(tzinfo=UTC)
    except ValueError:  # month 13, February 30th, hour 25...
        raise invalid_cursor() from None
    return when, uuid.UUID(row_id)


def encode_seq_cursor(seq: int) -> str:
    return _pack(f"seq:{seq}")


def decode_seq_cursor(cursor) -> int:
    """The sequence number of a cursor (0 to an INTEGER's largest); 400 otherwise."""
    match = _SEQ.fullmatch(_unpack(cursor))
    if match is None or int(match.group(1)) > MAX_SEQ:
        raise invalid_cursor()
    return int(match.group(1))


def encode_after_cursor(after: uuid.UUID, carried: int) -> str:
    """The next page starts after the id ``after``; ``carried``: a count (0 or more)
    the walk has gathered so far."""
    return _pack(f"after:{after}|{carried}")


def decode_after_cursor(cursor) -> tuple[uuid.UUID, int]:
    """The ``(after, carried)`` pair of a cursor; 400 ``invalid_request`` otherwise."""
    match = _AFTER.fullmatch(_unpack(cursor))
    if match is None or int(match.group(2)) > MAX_SEQ:
        raise invalid_cursor()
    return uuid.UUID(match.group(1)), int(match.group(2))


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
