"""The backup file format (ops/backups/crypto.py) and the rotation
(ops/backups/sets.py)."""

from __future__ import annotations

import base64
import io
import os
from datetime import UTC, datetime, timedelta

import pytest

from ops.backups import crypto, sets

KEY = os.urandom(32)


def sealed(data: bytes, key: bytes = KEY, chunk: int = 1000) -> bytes:
    out = io.BytesIO()
    assert crypto.encrypt(key, io.BytesIO(data), out, chunk_bytes=chunk) == len(data)
    return out.getvalue()


def opened(blob: bytes, key: bytes = KEY) -> bytes:
    out = io.BytesIO()
    crypto.decrypt(key, io.BytesIO(blob), out)
    return out.getvalue()


@pytest.mark.parametrize("size", [0, 1, 999, 1000, 1001, 5000, 12345])
def test_round_trip_at_chunk_boundaries(size):
    data = os.urandom(size)
    blob = sealed(data)
    assert size < 16 or data not in blob
    assert opened(blob) == data


def test_no_plaintext_on_disk_and_a_fresh_salt_per_file():
    data = b"ada@example.com " * 200
    first, second = sealed(data), sealed(data)
    assert b"ada@example.com" not in first
    assert first != second


def test_another_key_is_named_not_garbage():
    with pytest.raises(crypto.BackupCryptoError, match="another key"):
        opened(sealed(b"secret"), os.urandom(32))


@pytest.mark.parametrize("cut", ["last chunk", "mid chunk", "one byte"])
def test_a_cut_file_is_an_error(cut):
    blob = sealed(os.urandom(3500))  # four chunks
    chunk = 4 + 1000 + 16
    end = {"last chunk": len(blob) - (4 + 500 + 16), "mid chunk": len(blob) - chunk - 10,
           "one byte": len(blob) - 1}[cut]
    with pytest.raises(crypto.BackupCryptoError):
        opened(blob[:end])


def test_a_flipped_byte_or_swapped_chunks_are_errors():
    blob = bytearray(sealed(os.urandom(3000)))
    flipped = bytes(blob[:100]) + bytes([blob[100] ^ 1]) + bytes(blob[101:])
    with pytest.raises(crypto.BackupCryptoError, match="altered"):
        opened(flipped)
    head = len(crypto.MAGIC) + 24
    chunk = 4 + 1000 + 16
    swapped = blob[:head] + blob[head + chunk:head + 2 * chunk] + blob[head:head + chunk] \
        + blob[head + 2 * chunk:]
    with pytest.raises(crypto.BackupCryptoError):
        opened(bytes(swapped))


def test_not_a_backup_file():
    with pytest.raises(crypto.BackupCryptoError, match="not a Darkroom backup"):
        opened(b"PGDMP plain dump")


@pytest.mark.parametrize("value, message", [
    ("", "not set"), ("%%%", "at least 40 characters"),
    (base64.b64encode(b"short").decode(), "32 random bytes"), ("ab" * 19, "at least 40"),
])
def test_the_key_is_checked(value, message):
    with pytest.raises(ValueError, match=message):
        crypto.parse_key(value)


def test_the_key_is_base64_or_a_long_secret():
    assert crypto.parse_key(base64.b64encode(KEY).decode()) == KEY
    hexed = os.urandom(24).hex()  # what `make up` writes for a change-me value
    assert len(crypto.parse_key(hexed)) == 32
    assert crypto.parse_key(hexed) == crypto.parse_key(hexed) != crypto.parse_key(hexed[::-1])


def names(start: datetime, days: int, per_day: int = 1) -> list[str]:
    return [sets.set_name(start + timedelta(days=d, hours=h * 6))
            for d in range(days) for h in range(per_day)]


def test_rotation_keeps_7_daily_4_weekly_6_monthly():
    start = datetime(2026, 1, 1, 2, tzinfo=UTC)  # a Thursday
    every = names(start, 365, per_day=2)
    kept = sets.Rotation().keep(every)
    newest = max(every)
    daily = [n for n, why in kept.items() if "daily" in why]
    weekly = [n for n, why in kept.items() if "weekly" in why]
    monthly = [n for n, why in kept.items() if "monthly" in why]
    assert len(daily) == 7 and len(weekly) == 4 and len(monthly) == 6
    assert "newest" in kept[newest]
    # the newest set of each of the last 7 days: the day's second run
    assert all(sets.parse_name(n).hour == 8 for n in daily)
    assert {sets.parse_name(n).month for n in monthly} == {7, 8, 9, 10, 11, 12}
    assert len(kept) < 7 + 4 + 6  # the periods overlap at the newest end


def test_rotation_is_configurable_and_zero_keeps_only_the_newest():
    every = names(datetime(2026, 3, 1, tzinfo=UTC), 60)
    assert sets.Rotation(daily=0, weekly=0, monthly=0).keep(every) == {max(every): ["newest"]}
    kept = sets.Rotation.from_config({"BACKUP_KEEP_DAILY": "2", "BACKUP_KEEP_WEEKLY": "",
                                      "BACKUP_KEEP_MONTHLY": 1}).keep(every)
    assert sum("daily" in why for why in kept.values()) == 2
    assert sum("weekly" in why for why in kept.values()) == 4
    with pytest.raises(ValueError, match="BACKUP_KEEP_DAILY"):
        sets.Rotation.from_config({"BACKUP_KEEP_DAILY": -1})


def test_rotate_deletes_what_is_not_kept_and_partial_sets(tmp_path):
    every = names(datetime(2026, 3, 1, tzinfo=UTC), 10)
    for name in every:
        (tmp_path / name).mkdir()
        (tmp_path / name / sets.MANIFEST).write_text("{}")
    (tmp_path / (sets.PARTIAL + "20260101T000000Z")).mkdir()
    (tmp_path / "20260102T000000Z").mkdir()  # no manifest: not a set, left alone
    kept, deleted = sets.rotate(tmp_path, sets.Rotation(daily=3, weekly=0, monthly=0))
    assert kept == sorted(every)[-3:] and sorted(deleted) == sorted(every)[:-3]
    assert sets.complete_sets(tmp_path) == kept
    assert not list(tmp_path.glob(sets.PARTIAL + "*"))
