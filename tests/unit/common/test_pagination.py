"""Cursors come back from clients: every crafted one is 400 invalid_request,
never an exception that would be a 500 (services/common/pagination.py)."""

from __future__ import annotations

import base64
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import Column, MetaData, Table, Uuid, select

from services.common.db import UtcDateTime
from services.common.errors import DomainError
from services.common.ids import new_id
from services.common.pagination import (
    decode_after_cursor,
    decode_cursor,
    decode_seq_cursor,
    encode_after_cursor,
    encode_cursor,
    encode_seq_cursor,
    paginate,
)
from tests.unit.databases import memory_database

ROW_ID = "0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b"


def pack(raw: bytes | str) -> str:
    raw = raw.encode() if isinstance(raw, str) else raw
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


CRAFTED = [
    "", "!!!", "a", "abcde", "====", "YQ==", "é", "\x00", "a\x00b", " " * 8, "a" * 5000,
    pack("x|y"), pack(b"\xff\xfe\x00|" + ROW_ID.encode()), pack("nothing to split"),
    pack(f"2020-01-01T00:00:00|{ROW_ID}"),  # no zone: a naive time the database refuses
    pack(f"2020-01-01T00:00:00+00:00|{ROW_ID}"),  # not how cursors spell UTC
    pack(f"0001-01-01T00:00:00+14:00|{ROW_ID}"),  # before datetime.min once in UTC
    pack(f"9999-12-31T23:59:59-14:00|{ROW_ID}"),  # after datetime.max once in UTC
    pack(f"2020-13-01T00:00:00Z|{ROW_ID}"), pack(f"2020-02-30T00:00:00Z|{ROW_ID}"),
    pack(f"2020-01-01T25:00:00Z|{ROW_ID}"), pack(f"0000-01-01T00:00:00Z|{ROW_ID}"),
    pack(f"99999999-01-01T00:00:00Z|{ROW_ID}"), pack(f"2020-01-01|{ROW_ID}"),
    pack(f"2020-01-01T00:00:00.1234567Z|{ROW_ID}"), pack(f"2020-01-01T00:00:00\x00Z|{ROW_ID}"),
    pack(f"1e309|{ROW_ID}"), pack(f"{10**400}|{ROW_ID}"), pack(f"null|{ROW_ID}"),
    pack('{"created_at": "2020-01-01T00:00:00Z", "id": 1}'), pack("[1, 2]"), pack("null"),
    pack("2020-01-01T00:00:00Z|"), pack("2020-01-01T00:00:00Z|1"),
    pack("2020-01-01T00:00:00Z|" + "f" * 40), pack("2020-01-01T00:00:00Z|12345678123456781234567812345678"),
    pack("2020-01-01T00:00:00Z|{" + ROW_ID + "}"), pack("2020-01-01T00:00:00Z|urn:uuid:" + ROW_ID),
    pack("2020-01-01T00:00:00Z|" + ROW_ID.upper()), pack(f"2020-01-01T00:00:00Z|{ROW_ID}|extra"),
    pack(f"2020-01-01T00:00:00Z|{ROW_ID}\x00"), pack(f"2020-01-01T00:00:00Z|{-1}"),
    pack("seq:1"),  # a ledger cursor is not a (time, id) cursor
]

CRAFTED_SEQ = [
    "", "!!!", "é", pack("seq:"), pack("seq:-1"), pack("seq:1.5"), pack("seq:1e3"), pack("seq: 1"),
    pack("seq:1_000"), pack("seq:01"), pack("seq:٣"), pack(f"seq:{2**31}"), pack(f"seq:{2**63}"), pack(f"seq:{10**400}"),
    pack("seq:nan"), pack("seq:1\x00"), pack("SEQ:1"), pack("1"), pack(f"2020-01-01T00:00:00Z|{ROW_ID}"),
    pack(b"seq:\xff"), "a" * 300,
]


def assert_invalid(fn, cursor) -> None:
    with pytest.raises(DomainError) as caught:
        fn(cursor)
    assert (caught.value.code, caught.value.status) == ("invalid_request", 400), cursor
    assert caught.value.details == {"fields": {"cursor": ["Not a valid cursor."]}}


@pytest.mark.parametrize("cursor", CRAFTED)
def test_a_crafted_time_cursor_is_invalid_request(cursor):
    assert_invalid(decode_cursor, cursor)


@pytest.mark.parametrize("cursor", CRAFTED_SEQ)
def test_a_crafted_sequence_cursor_is_invalid_request(cursor):
    assert_invalid(decode_seq_cursor, cursor)


CRAFTED_AFTER = [
    "", "!!!", pack("after:"), pack(f"after:{ROW_ID}"), pack(f"after:{ROW_ID}|"),
    pack(f"after:{ROW_ID}|-1"), pack(f"after:{ROW_ID}|01"), pack(f"after:{ROW_ID}|1.5"),
    pack(f"after:{ROW_ID}|{2**31}"), pack(f"after:{ROW_ID.upper()}|1"), pack(f"after:{ROW_ID}|1|2"),
    pack(f"after:{{{ROW_ID}}}|1"), pack(f"AFTER:{ROW_ID}|1"), pack(f"{ROW_ID}|1"), pack("seq:1"),
    pack(f"2020-01-01T00:00:00Z|{ROW_ID}"), pack(f"after:{ROW_ID}|1\x00"), "a" * 300,
]


@pytest.mark.parametrize("cursor", CRAFTED_AFTER)
def test_a_crafted_after_cursor_is_invalid_request(cursor):
    assert_invalid(decode_after_cursor, cursor)


@given(st.uuids(), st.integers(min_value=0, max_value=2**31 - 1))
def test_after_cursors_round_trip(after, carried):
    assert decode_after_cursor(encode_after_cursor(after, carried)) == (after, carried)


@pytest.mark.parametrize("value", [None, 12, 1.5, ["a"], {"a": 1}, b"YQ"])
def test_a_cursor_that_is_not_a_string_is_invalid_request(value):
    assert_invalid(decode_cursor, value)
    assert_invalid(decode_seq_cursor, value)
    assert_invalid(decode_after_cursor, value)


@given(st.datetimes(min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30),
                    timezones=st.just(UTC)), st.uuids())
def test_cursors_made_here_decode_to_what_they_encode(when, row_id):
    assert decode_cursor(encode_cursor(when, row_id)) == (when, row_id)


@given(st.integers(min_value=0, max_value=2**31 - 1))
def test_sequence_cursors_round_trip(seq):
    assert decode_seq_cursor(encode_seq_cursor(seq)) == seq


def decoded_or_refused(fn, cursor):
    try:
        return fn(cursor)
    except DomainError as error:
        assert (error.code, error.status) == ("invalid_request", 400)
        return None


@settings(max_examples=300)
@given(st.one_of(st.text(max_size=120), st.binary(max_size=90).map(pack),
                 st.text(max_size=90).map(pack)))
def test_any_cursor_decodes_to_a_usable_pair_or_is_refused(cursor):
    pair = decoded_or_refused(decode_cursor, cursor)
    if pair is not None:
        when, row_id = pair
        assert when.tzinfo is UTC and isinstance(row_id, uuid.UUID)
        assert when.astimezone(UTC) == when  # bindable: no overflow
    seq = decoded_or_refused(decode_seq_cursor, cursor)
    assert seq is None or 0 <= seq < 2**31


# ---------------------------------------------------------------- through a query

metadata = MetaData()
rows = Table("rows", metadata, Column("id", Uuid, primary_key=True),
             Column("created_at", UtcDateTime(), nullable=False))


@pytest.fixture(scope="module")
def db():
    with memory_database(metadata) as session:
        start = datetime(2026, 1, 1, tzinfo=UTC)
        session.execute(rows.insert(), [{"id": new_id(), "created_at": start + timedelta(seconds=i)}
                                        for i in range(5)])
        session.commit()
        yield session


@pytest.mark.parametrize("cursor", CRAFTED[1:])  # "" means "the first page"
def test_paginate_refuses_a_crafted_cursor_before_querying(db, cursor):
    with pytest.raises(DomainError) as caught:
        paginate(db, select(rows), rows.c.created_at, rows.c.id, 2, cursor)
    assert caught.value.code == "invalid_request"
