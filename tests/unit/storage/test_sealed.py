"""Encryption at rest of the fs backend's files (services/storage/backends/sealed.py):
nothing in clear on disk, sizes and ranges of the plaintext, tampering detected,
key rings checked, re-keying and the plaintext files from before."""

from __future__ import annotations

import base64
import io
import os

import pytest

from services.storage.backends import KeyRing, KeyRingError, TamperedObject
from services.storage.backends.fs import KEYCHECK_PREFIX, FsBackend
from services.storage.backends.sealed import (
    CHUNK_SIZE,
    HEADER_SIZE,
    TAG_SIZE,
    UnknownKey,
    needs_rekey,
    new_key_entry,
)
from tests.sealed import plaintext

SECRET = "unit-test-secret"
BASE = "http://files.example.test:8000"
K1 = new_key_entry("k1")
K2 = new_key_entry("k2")
MARKER = b"MARKER-7f3a9c-the-users-private-bytes"
SEALED_CHUNK = CHUNK_SIZE + TAG_SIZE


def backend(root, *entries: str) -> FsBackend:
    fs = FsBackend(root, BASE, SECRET, keys=KeyRing.parse(",".join(entries)))
    fs.ensure_ready(31)
    return fs


def put(fs: FsBackend, key: str, data: bytes) -> None:
    fs.put(key, io.BytesIO(data), len(data), "application/octet-stream")


def read(fs: FsBackend, key: str) -> bytes:
    with fs.open(key) as stream:
        return stream.read()


def content(size: int) -> bytes:
    """``size`` bytes with the marker repeated through them (every chunk has it)."""
    return (MARKER * (size // len(MARKER) + 1))[:size]


@pytest.fixture
def fs(tmp_path) -> FsBackend:
    return backend(tmp_path / "root", K1)


# ------------------------------------------------------------------ round trips


@pytest.mark.parametrize("size", [0, 1, CHUNK_SIZE - 1, CHUNK_SIZE, CHUNK_SIZE + 1, 3 * CHUNK_SIZE + 7])
def test_round_trip_with_plaintext_sizes_and_nothing_in_clear(fs, size):
    data = content(size)
    put(fs, "objects/u/a", data)
    raw = (fs.root / "objects/u/a").read_bytes()
    assert raw.startswith(b"DRKSEAL\x01")
    assert MARKER[:16] not in raw  # not even a fragment of the marker
    assert read(fs, "objects/u/a") == data
    assert fs.stat("objects/u/a").size == size
    assert [(i.key, i.size) for i in fs.list("objects/")] == [("objects/u/a", size)]
    chunks = max(1, -(-size // CHUNK_SIZE))
    assert len(raw) == HEADER_SIZE + size + chunks * TAG_SIZE


def test_two_files_of_the_same_bytes_share_nothing(fs):
    put(fs, "objects/u/a", content(1000))
    put(fs, "objects/u/b", content(1000))
    a, b = ((fs.root / k).read_bytes() for k in ("objects/u/a", "objects/u/b"))
    assert a[HEADER_SIZE:] != b[HEADER_SIZE:]  # a fresh data key per file


def test_ranges_decrypt_only_what_they_read(fs):
    data = os.urandom(3 * CHUNK_SIZE + 100)
    put(fs, "objects/u/a", data)
    with fs.open("objects/u/a") as stream:
        assert stream.seekable()
        for start, length in [(0, 10), (CHUNK_SIZE - 5, 10), (2 * CHUNK_SIZE + 3, CHUNK_SIZE),
                              (len(data) - 4, 100)]:
            stream.seek(start)
            assert stream.read(length) == data[start:start + length]
        assert stream.seek(0, io.SEEK_END) == len(data)


def test_copy_reseals_under_a_new_data_key(fs):
    put(fs, "objects/u/a", content(5000))
    fs.copy("objects/u/a", "public/p")
    assert read(fs, "public/p") == content(5000)
    assert (fs.root / "public/p").read_bytes()[HEADER_SIZE:] != \
        (fs.root / "objects/u/a").read_bytes()[HEADER_SIZE:]


# ------------------------------------------------------------------ tampering


def tamper_and_read(fs: FsBackend, change) -> None:
    path = fs.root / "objects/u/a"
    raw = bytearray(path.read_bytes())
    path.write_bytes(bytes(change(raw)))
    with pytest.raises(TamperedObject), fs.open("objects/u/a") as stream:
        stream.read()


def flip(offset: int):
    def change(raw: bytearray) -> bytearray:
        raw[offset] ^= 0x01
        return raw
    return change


@pytest.mark.parametrize("change", [
    flip(HEADER_SIZE + 5),  # a byte of the first chunk
    flip(HEADER_SIZE + SEALED_CHUNK + 100),  # of the second
    flip(-1),  # the last tag
    flip(60),  # the wrapped data key
    flip(len(b"DRKSEAL") + 1 + 33 + 12 + 48 + 2),  # the nonce prefix (bound to the data key)
    lambda raw: raw[:HEADER_SIZE + SEALED_CHUNK],  # cut at a chunk boundary
    lambda raw: raw[:HEADER_SIZE + 2 * SEALED_CHUNK],  # the last chunk dropped
    lambda raw: raw[:-7],  # cut inside the last chunk
    lambda raw: raw + b"more",  # bytes appended
    lambda raw: raw[:HEADER_SIZE] + raw[HEADER_SIZE + SEALED_CHUNK: HEADER_SIZE + 2 * SEALED_CHUNK]
    + raw[HEADER_SIZE: HEADER_SIZE + SEALED_CHUNK] + raw[HEADER_SIZE + 2 * SEALED_CHUNK:],  # swapped
    lambda raw: raw[:HEADER_SIZE] + raw[HEADER_SIZE: HEADER_SIZE + SEALED_CHUNK] * 2
    + raw[HEADER_SIZE + 2 * SEALED_CHUNK:],  # the first chunk twice
], ids=["chunk0", "chunk1", "tag", "wrapped-key", "prefix", "cut-at-boundary", "last-dropped",
        "cut-inside", "appended", "swapped", "duplicated"])
def test_tampering_is_an_error_never_garbage(fs, change):
    put(fs, "objects/u/a", os.urandom(2 * CHUNK_SIZE + 500))
    tamper_and_read(fs, change)


def test_a_header_from_another_file_does_not_open_it(fs):
    put(fs, "objects/u/a", content(3000))
    put(fs, "objects/u/b", content(3000))
    other = (fs.root / "objects/u/b").read_bytes()[:HEADER_SIZE]
    tamper_and_read(fs, lambda raw: other + raw[HEADER_SIZE:])


def test_an_empty_file_is_authenticated_too(fs):
    put(fs, "objects/u/a", b"")
    assert read(fs, "objects/u/a") == b""
    tamper_and_read(fs, flip(-3))


# ------------------------------------------------------------------ key rings


@pytest.mark.parametrize("value, message", [
    ("", "STORAGE_ENCRYPTION_KEYS is empty"),
    (None, "STORAGE_ENCRYPTION_KEYS is empty"),
    ("no-colon", "entry 1 is not id:base64key"),
    ("k1:not base64!", "entry 1 (k1): the key is not base64"),
    ("k1:" + base64.b64encode(b"short").decode(), "must be 32 bytes, not 5"),
    (f"{K1},{K1}", "lists the key id k1 twice"),
    ("bad id!:" + K1.split(":")[1], "entry 1 is not id:base64key"),
])
def test_malformed_key_rings_are_refused_naming_the_variable(value, message):
    with pytest.raises(KeyRingError) as caught:
        KeyRing.parse(value)
    assert message in str(caught.value)
    assert K1.split(":")[1] not in str(caught.value)  # never a key


def test_a_wrong_key_does_not_open_a_file(tmp_path):
    fs = backend(tmp_path / "a", K1)
    put(fs, "objects/u/a", content(100))
    impostor = "k1:" + new_key_entry("x").split(":")[1]
    wrong = FsBackend(tmp_path / "a", BASE, SECRET, keys=KeyRing.parse(impostor))
    with pytest.raises(TamperedObject):
        wrong.open("objects/u/a")
    missing = FsBackend(tmp_path / "a", BASE, SECRET, keys=KeyRing.parse(K2))
    with pytest.raises(UnknownKey):
        missing.open("objects/u/a")


def test_start_refuses_a_ring_without_the_files_key_or_with_another_key_of_its_id(tmp_path):
    root = tmp_path / "root"
    backend(root, K1)
    with pytest.raises(KeyRingError, match="lacks the master key 'k1'"):
        backend(root, K2)
    with pytest.raises(KeyRingError, match="is not the key of that id"):
        backend(root, "k1:" + new_key_entry("x").split(":")[1])
    backend(root, K2, K1)  # the new key first, the old one still there: fine


# ------------------------------------------------------------------ re-keying


def test_rekey_rewraps_headers_only_then_the_old_key_can_go(tmp_path):
    root = tmp_path / "root"
    old = backend(root, K1)
    files = {f"objects/u/{i}": content(CHUNK_SIZE * i + 11) for i in range(3)}
    for key, data in files.items():
        put(old, key, data)
    bodies = {key: (root / key).read_bytes()[HEADER_SIZE:] for key in files}

    rotating = backend(root, K2, K1)
    assert all(needs_rekey(root / key, rotating.files.keys) for key in files)
    assert [rotating.rekey(key) for key in files] == ["rewrapped"] * 3
    assert [rotating.rekey(key) for key in files] == ["current"] * 3  # idempotent
    for key in files:
        assert (root / key).read_bytes()[HEADER_SIZE:] == bodies[key]  # chunks untouched
    assert rotating.files.forget_old_keys() == ["k1"]
    assert sorted(p.name for p in root.glob(KEYCHECK_PREFIX + "*")) == [KEYCHECK_PREFIX + "k2"]

    new = backend(root, K2)  # k1 removed: starts, reads everything
    assert {key: read(new, key) for key in files} == files


def test_plaintext_files_from_before_are_read_then_sealed_by_rekey(fs):
    path = fs.root / "objects/u/legacy"
    path.parent.mkdir(parents=True)
    path.write_bytes(MARKER)
    assert read(fs, "objects/u/legacy") == MARKER
    assert fs.stat("objects/u/legacy").size == len(MARKER)
    assert fs.rekey("objects/u/legacy") == "sealed"
    assert MARKER not in path.read_bytes()
    assert plaintext(path, fs.files.keys) == MARKER
    assert fs.rekey("objects/u/legacy") == "current"
    assert fs.rekey("objects/u/gone") == "gone"


def test_rekey_never_brings_back_a_file_deleted_meanwhile(fs, monkeypatch):
    path = fs.root / "objects/u/legacy"
    path.parent.mkdir(parents=True)
    path.write_bytes(MARKER)
    real = fs.files.write_sealed

    def delete_first(target, fill, expected_inode=None):
        path.unlink()  # the purge, between the read and the rename
        return real(target, fill, expected_inode)

    monkeypatch.setattr(fs.files, "write_sealed", delete_first)
    assert fs.rekey("objects/u/legacy") == "gone"
    assert not path.exists()
    assert [p.name for p in path.parent.iterdir()] == []  # no temporary file left


def test_a_damaged_file_is_listed_with_its_disk_size_but_never_read(fs):
    put(fs, "objects/u/a", content(100))
    path = fs.root / "objects/u/a"
    path.write_bytes(path.read_bytes()[:HEADER_SIZE + 3])  # shorter than any sealed file
    assert [(i.key, i.size) for i in fs.list("objects/")] == [("objects/u/a", HEADER_SIZE + 3)]
    with pytest.raises(TamperedObject):
        read(fs, "objects/u/a")
