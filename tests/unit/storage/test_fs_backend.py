"""The fs backend's own guarantees: keys stay inside the root, writes are
atomic, deletes prune empty directories, URLs are signed for one method."""

from __future__ import annotations

import io
import os
import time
from urllib.parse import parse_qs, unquote, urlsplit

import pytest

from services.common import signing
from services.common.errors import DomainError
from services.storage.backends import InvalidKey, KeyRing, check_key, make_backend
from services.storage.backends.fs import (
    KEYCHECK_PREFIX,
    TEMP_PREFIX,
    FsBackend,
    ShortStream,
    SignedFiles,
)
from services.storage.backends.s3 import S3Backend
from services.storage.settings import DEV_ENCRYPTION_KEYS, StorageSettings
from tests.sealed import plaintext

SECRET = "unit-test-secret"
BASE = "http://files.example.test:8000"
KEYS = KeyRing.parse(DEV_ENCRYPTION_KEYS)


@pytest.fixture
def fs(tmp_path) -> FsBackend:
    backend = FsBackend(tmp_path / "root", BASE, SECRET, keys=KEYS)
    backend.ensure_ready(31)
    return backend


def put(backend, key: str, data: bytes = b"data"):
    backend.put(key, io.BytesIO(data), len(data), "application/octet-stream")


def files_under(root) -> list[str]:
    """Every file but the key-check canaries at the top (``.keycheck-<id>``)."""
    return sorted(os.path.relpath(os.path.join(d, f), root) for d, _, fs in os.walk(root) for f in fs
                  if not f.startswith(KEYCHECK_PREFIX))


BAD_KEYS = ["", "/etc/passwd", "../outside", "objects/../../outside", "objects//x", "objects/./x",
            "objects/x/", "objects\\x", ".hidden", "objects/.tmp-x", "objects/x\x00y", "a/b c"]


@pytest.mark.parametrize("key", BAD_KEYS)
def test_keys_outside_plain_relative_paths_are_refused(fs, key):
    with pytest.raises(InvalidKey):
        check_key(key)
    with pytest.raises(InvalidKey):
        put(fs, key)
    with pytest.raises(InvalidKey):
        fs.open(key)
    with pytest.raises(InvalidKey):
        fs.stat(key)
    with pytest.raises(InvalidKey):
        fs.delete_many([key])
    with pytest.raises(InvalidKey):
        fs.presigned_get(key, 60)
    assert not (fs.root.parent / "outside").exists()


def test_a_symlink_cannot_lead_outside_the_root(fs, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret").write_bytes(b"secret")
    (fs.root / "objects").mkdir()
    (fs.root / "objects" / "link").symlink_to(outside)
    with pytest.raises(InvalidKey):
        fs.open("objects/link/secret")
    with pytest.raises(InvalidKey):
        put(fs, "objects/link/new")
    assert not (outside / "new").exists()


def test_put_writes_atomically_and_cleans_up_after_a_failed_stream(fs):
    put(fs, "objects/u/1", b"first version")

    class Broken(io.RawIOBase):
        def readable(self):
            return True

        def readinto(self, buffer):
            raise ConnectionResetError("client went away")

    with pytest.raises(ConnectionResetError):
        fs.put("objects/u/1", Broken(), 100, "image/png")
    with pytest.raises(OSError):  # a stream shorter than announced
        fs.put("objects/u/1", io.BytesIO(b"short"), 100, "image/png")
    with fs.open("objects/u/1") as fh:
        assert fh.read() == b"first version"  # the old object is intact
    assert files_under(fs.root) == ["objects/u/1"]  # no temporary file left


def test_put_reads_exactly_length_bytes(fs):
    fs.put("objects/u/2", io.BytesIO(b"0123456789"), 4, "text/plain")
    assert fs.stat("objects/u/2").size == 4


def test_delete_many_prunes_empty_directories_but_not_the_root_or_siblings(fs):
    for key in ("objects/a/1", "objects/a/2", "objects/b/1", "staging/x"):
        put(fs, key)
    assert fs.delete_many(["objects/a/1", "objects/a/2", "objects/a/missing", "staging/x"]) == []
    assert not (fs.root / "objects" / "a").exists()
    assert not (fs.root / "staging").exists()
    assert (fs.root / "objects" / "b" / "1").exists()
    assert fs.delete_many(["objects/b/1"]) == []
    assert fs.root.is_dir() and [p.name for p in fs.root.iterdir()] == [KEYCHECK_PREFIX + "dev-only-insecure"]


def test_delete_many_reports_what_it_could_not_delete(fs):
    put(fs, "objects/a/1")
    os.mkdir(fs.root / "objects" / "a" / "dir")  # unlink of a directory fails
    assert fs.delete_many(["objects/a/dir", "objects/a/1"]) == ["objects/a/dir"]
    assert fs.stat("objects/a/1") is None


def test_list_matches_prefixes_mid_segment_and_hides_temporary_files(fs):
    for key in ("objects/ab/1", "objects/abc/2", "objects/b/3", "staging/4"):
        put(fs, key, b"xyz")
    (fs.root / "objects" / "ab" / f"{TEMP_PREFIX}partial").write_bytes(b"half")
    assert sorted(i.key for i in fs.list("objects/ab")) == ["objects/ab/1", "objects/abc/2"]
    assert [i.key for i in fs.list("objects/ab/")] == ["objects/ab/1"]
    assert len(list(fs.list(""))) == 4
    assert list(fs.list("nothing/here/")) == []
    info = next(iter(fs.list("staging/")))
    assert info.size == 3 and info.last_modified.tzinfo is not None


def test_ensure_ready_creates_the_root_and_removes_stale_temporary_files(tmp_path):
    backend = FsBackend(tmp_path / "new" / "root", BASE, SECRET, keys=KEYS)
    backend.ensure_ready(31)
    assert backend.root.is_dir()
    stale = backend.root / "objects" / f"{TEMP_PREFIX}stale"
    fresh = backend.root / "objects" / f"{TEMP_PREFIX}fresh"
    stale.parent.mkdir()
    stale.write_bytes(b"x")
    fresh.write_bytes(b"x")
    old = time.time() - 2 * 3600
    os.utime(stale, (old, old))
    backend.ensure_ready(31)
    assert not stale.exists() and fresh.exists()  # a write may still be under way


def test_presigned_urls_are_signed_for_their_method_key_and_expiry(fs):
    url = fs.presigned_get("objects/u/1", 300)
    parts = urlsplit(url)
    assert f"{parts.scheme}://{parts.netloc}" == BASE
    assert unquote(parts.path) == signing.FILES_PREFIX + "objects/u/1"
    query = {k: v[0] for k, v in parse_qs(parts.query).items()}
    assert abs(int(query["expires"]) - (time.time() + 300)) <= 2
    assert signing.verify(SECRET, "GET", "objects/u/1", query["expires"], query["signature"])
    assert not signing.verify(SECRET, "PUT", "objects/u/1", query["expires"], query["signature"])
    assert not signing.verify(SECRET, "GET", "objects/u/2", query["expires"], query["signature"])

    put_url, headers = fs.presigned_put("staging/abc", 60, "image/webp", 5000)
    assert headers == {"Content-Type": "image/webp"}
    query = {k: v[0] for k, v in parse_qs(urlsplit(put_url).query).items()}
    assert query["max_bytes"] == "5000"
    assert signing.verify(SECRET, "PUT", "staging/abc", query["expires"], query["signature"],
                            max_bytes=5000)
    assert not signing.verify(SECRET, "GET", "staging/abc", query["expires"], query["signature"],
                              max_bytes=5000)
    # the size cap is part of what is signed: raised or dropped, the URL is refused
    assert not signing.verify(SECRET, "PUT", "staging/abc", query["expires"], query["signature"],
                              max_bytes=50000)
    assert not signing.verify(SECRET, "PUT", "staging/abc", query["expires"], query["signature"])


# ------------------------------------------------------------------ make_backend


def test_make_backend_follows_the_storage_section(tmp_path):
    fs = make_backend({"STORAGE": {"BACKEND": "fs", "FS_ROOT": str(tmp_path / "objs"),
                                   "PUBLIC_BASE_URL": BASE + "/", "URL_SECRET": SECRET}})
    assert isinstance(fs, FsBackend) and fs.name == "fs"
    assert fs.root == (tmp_path / "objs").resolve()
    assert fs.presigned_get("objects/a/b", 10).startswith(BASE + signing.FILES_PREFIX)

    s3 = make_backend(StorageSettings(backend="s3", s3_endpoint="minio:9000", s3_bucket="bkt",
                                      s3_public_endpoint="https://files.example.test"))
    assert isinstance(s3, S3Backend) and s3.name == "s3" and s3.bucket == "bkt"
    with pytest.raises(ValueError, match="BACKEND"):
        make_backend(StorageSettings(backend="ftp"))


# ------------------------------------------------------------ SignedFiles (shared with the gateway)


@pytest.fixture
def files(tmp_path) -> SignedFiles:
    return SignedFiles(tmp_path / "root", SECRET, BASE, keys=KEYS)


def test_a_failed_write_leaves_the_old_file_whole(files):
    key = "objects/u/a"
    files.write(key, io.BytesIO(b"old"))
    with pytest.raises(OSError):
        files.write(key, _Failing(b"y" * 500, OSError("disk on fire")))
    with pytest.raises(RuntimeError):
        files.write("staging/new", _Failing(b"y" * 500, RuntimeError("client went away")))
    assert plaintext(files.root / key) == b"old"
    assert files_under(files.root) == ["objects/u/a"]


def test_write_counts_bytes_past_the_cap(files):
    key = "staging/x"
    with pytest.raises(DomainError) as caught:
        files.write(key, io.BytesIO(b"z" * 1001), max_bytes=1000)  # no length given: counted
    assert (caught.value.status, caught.value.code, caught.value.details) == (
        413, "payload_too_large", {"max_bytes": 1000})
    with pytest.raises(DomainError):  # declared too large: refused before reading
        files.write(key, io.BytesIO(b"z" * 10), length=1001, max_bytes=1000)
    assert files_under(files.root) == []
    assert files.write(key, io.BytesIO(b"z" * 1000), max_bytes=1000) == 1000
    assert plaintext(files.root / key) == b"z" * 1000


def test_write_refuses_a_short_stream_and_reads_no_more_than_length(files):
    with pytest.raises(ShortStream):
        files.write("staging/short", io.BytesIO(b"z" * 10), length=20)
    assert files_under(files.root) == []
    assert files.write("staging/long", io.BytesIO(b"z" * 30), length=20) == 20


def test_only_objects_staging_and_public_keys_are_served(files):
    assert files.served_path("objects/u/a") == files.root / "objects/u/a"
    assert files.served_path("public/p") == files.root / "public/p"
    for key in ("other/x", "staginga", "../objects/x"):
        with pytest.raises(InvalidKey):
            files.served_path(key)


def test_key_of_url_recognises_its_own_signed_put_urls(files):
    key = "staging/01900000-0000-7000-8000-0000000000f1"
    assert files.key_of_url(files.sign("PUT", key, 60)) == key
    url = signing.sign_url("https://darkroom.example/api", SECRET, "PUT", key, 60)[0]
    assert files.key_of_url(url) == key  # any host: the signature decides
    # signed for GET, with another secret, expired, or not a files URL at all
    assert files.key_of_url(files.sign("GET", key, 60)) is None
    assert files.key_of_url(signing.sign_url(BASE, "other", "PUT", key, 60)[0]) is None
    assert files.key_of_url(signing.sign_url(BASE, SECRET, "PUT", key, 60,
                                             now=time.time() - 120)[0]) is None
    assert files.key_of_url("https://s3.example/bucket/staging/x?X-Amz-Signature=abc") is None


class _Failing(io.RawIOBase):
    """Gives ``good``, then fails like a broken disk or connection."""

    def __init__(self, good: bytes, error: Exception):
        self.good, self.error = good, error

    def readable(self):
        return True

    def read(self, size=-1):
        if not self.good:
            raise self.error
        n = size if size > 0 else len(self.good)
        chunk, self.good = self.good[:n], self.good[n:]
        return chunk
