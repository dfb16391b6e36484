"""/v1/files/<key>: the fs backend's files under signed, expiring URLs, and
store_file (the fs backend's atomic write with HTTP's answers, which the upload
route shares)."""

from __future__ import annotations

import io
import os
import time
from pathlib import Path

import pytest
from werkzeug.exceptions import RequestEntityTooLarge

from gateway.transfer import signed_files, store_file
from services.common import signing
from services.common.errors import DomainError
from services.storage.backends.fs import SignedFiles
from services.storage.backends.sealed import KeyRing
from services.storage.settings import DEV_ENCRYPTION_KEYS
from tests.sealed import plaintext
from tests.unit.gateway.conftest import FILES_BASE_URL, FILES_SECRET

OWNER = "01900000-0000-7000-8000-000000000001"
KEY = f"objects/{OWNER}/01900000-0000-7000-8000-0000000000c1"
MAX_BYTES = 3 * 1024 * 1024


def signed(method: str, key: str, ttl: int = 60, now: float | None = None,
           secret: str = FILES_SECRET, max_bytes: int | None = None,
           content_type: str | None = None) -> str:
    """The path and query of a URL the storage service would sign."""
    url, _ = signing.sign_url(FILES_BASE_URL, secret, method, key, ttl, now=now,
                              max_bytes=max_bytes, content_type=content_type)
    return url.removeprefix(FILES_BASE_URL)


def error_code(response) -> str:
    return response.get_json()["error"]["code"]


def files_in(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())


@pytest.fixture
def root(tmp_path) -> Path:
    path = tmp_path / "objects-root"
    path.mkdir()
    return path


@pytest.fixture
def client(make_app, root):
    app = make_app(FILES={"ROOT": str(root), "URL_SECRET": FILES_SECRET}, UPLOAD_MAX_BYTES=MAX_BYTES)
    return app.test_client()


@pytest.fixture
def stored(root) -> bytes:
    data = b"\x89PNG\r\n\x1a\n" + os.urandom(5000)
    path = root / KEY
    path.parent.mkdir(parents=True)
    path.write_bytes(data)
    return data


# ------------------------------------------------------------ GET


def test_get_with_a_valid_signature_streams_the_file(client, stored):
    response = client.get(signed("GET", KEY))
    assert response.status_code == 200
    assert response.data == stored
    assert response.mimetype == "application/octet-stream"
    assert response.headers["Content-Disposition"] == "inline"
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert response.headers["Cache-Control"] == "no-store"
    assert response.headers["Content-Length"] == str(len(stored))


def test_a_get_url_serves_the_type_it_was_signed_with(client, stored):
    url = signed("GET", KEY, content_type="image/png")
    assert "content_type=image%2Fpng" in url
    response = client.get(url)
    assert response.status_code == 200
    assert response.mimetype == "image/png"
    assert response.data == stored


def test_a_changed_or_added_type_breaks_the_signature(client, stored):
    url = signed("GET", KEY, content_type="image/png")
    assert client.get(url.replace("image%2Fpng", "text%2Fhtml")).status_code == 403
    assert client.get(signed("GET", KEY) + "&content_type=text%2Fhtml").status_code == 403


def test_head_and_ranges_work_with_a_get_signature(client, stored):
    url = signed("GET", KEY)
    head = client.head(url)
    assert head.status_code == 200 and head.data == b""
    assert head.headers["Content-Length"] == str(len(stored))
    part = client.get(url, headers={"Range": "bytes=0-7"})
    assert part.status_code == 206 and part.data == stored[:8]


def test_expired_signature_is_refused(client, stored):
    response = client.get(signed("GET", KEY, ttl=60, now=time.time() - 61))
    assert response.status_code == 403
    assert error_code(response) == "invalid_signature"


@pytest.mark.parametrize("tamper", [
    lambda url: url.replace("signature=", "signature=0"),
    lambda url: url[:-1] + ("1" if url.endswith("0") else "0"),  # one hex digit changed
    lambda url: url.replace("expires=", "expires=9"),  # a later expiry, same signature
    lambda url: url.split("&signature=")[0],  # no signature
    lambda url: url.split("?")[0],  # no query at all
    lambda url: url.replace("expires=", "expires=soon"),
])
def test_tampered_urls_are_refused(client, stored, tamper):
    response = client.get(tamper(signed("GET", KEY)))
    assert response.status_code == 403
    assert error_code(response) == "invalid_signature"


def test_a_signature_covers_the_key(client, stored, root):
    other = f"objects/{OWNER}/01900000-0000-7000-8000-0000000000c2"
    (root / other).write_bytes(b"secret of another object")
    url = signed("GET", KEY).replace(KEY.rsplit("/", 1)[1], other.rsplit("/", 1)[1])
    response = client.get(url)
    assert response.status_code == 403
    assert b"secret" not in response.data


def test_another_secret_does_not_verify(client, stored):
    assert client.get(signed("GET", KEY, secret="not-the-secret")).status_code == 403


def test_a_put_url_cannot_download(client, stored):
    response = client.get(signed("PUT", KEY))
    assert response.status_code == 403
    assert error_code(response) == "invalid_signature"


def test_absent_file_is_404_once_signed(client):
    response = client.get(signed("GET", KEY))
    assert response.status_code == 404
    assert error_code(response) == "not_found"


@pytest.mark.parametrize("key", [
    "objects/../../etc/passwd",
    "staging/../objects/x",
    "objects/%2e%2e/%2e%2e/etc/passwd",
    "/etc/passwd",
    "etc/passwd",
    "exports/x",
    "objects",
    "objects/",
    "objects//x",
    f"objects/{OWNER}/.tmp-abc",
    "objects/a\\..\\b",
])
def test_unsafe_keys_are_404_even_when_signed(client, root, key):
    (root / "etc").mkdir()
    (root / "etc" / "passwd").write_bytes(b"root:x:0:0")
    # (werkzeug first redirects "/v1/files//etc" to "/v1/files/etc": still not a key)
    response = client.get(f"/v1/files/{key}?" + signed("GET", key).split("?")[1],
                          follow_redirects=True)
    assert response.status_code == 404
    assert b"root:x" not in response.data


def test_a_symlink_out_of_the_root_is_not_followed(client, root, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret").write_bytes(b"outside the root")
    (root / "objects").mkdir()
    (root / "objects" / "link").symlink_to(outside)
    key = "objects/link/secret"
    response = client.get(signed("GET", key))
    assert response.status_code == 404
    assert b"outside" not in response.data


def test_without_files_root_every_file_route_is_404(make_app, root, stored):
    for config in ({}, {"FILES": {"ROOT": "", "URL_SECRET": FILES_SECRET}},
                   {"FILES": {"ROOT": str(root), "URL_SECRET": ""}}):
        client = make_app(**config).test_client()
        assert client.get(signed("GET", KEY)).status_code == 404
        assert client.put(signed("PUT", KEY), data=b"x").status_code == 404
    assert plaintext(root / KEY) == stored


def test_file_routes_need_no_bearer_and_ignore_one(client, stored, auth):
    assert client.get(signed("GET", KEY), headers={"Authorization": "Bearer nope"}).status_code == 200
    assert auth.calls == []


# ------------------------------------------------------------ PUT


def test_put_writes_the_file(client, root):
    data = os.urandom(MAX_BYTES)  # more than the JSON routes' 1 MiB cap
    key = "staging/01900000-0000-7000-8000-0000000000d1"
    response = client.put(signed("PUT", key), data=data, content_type="image/png")
    assert response.status_code == 201
    assert response.get_json() == {"key": key, "size": len(data)}
    assert response.headers["Cache-Control"] == "no-store"
    assert plaintext(root / key) == data
    assert files_in(root) == [key]  # no temporary file left behind


def test_put_replaces_an_existing_file(client, root, stored):
    response = client.put(signed("PUT", KEY), data=b"new bytes")
    assert response.status_code == 201
    assert plaintext(root / KEY) == b"new bytes"
    assert files_in(root) == [KEY]


def test_a_get_url_cannot_upload(client, root, stored):
    response = client.put(signed("GET", KEY), data=b"overwrite")
    assert response.status_code == 403
    assert error_code(response) == "invalid_signature"
    assert plaintext(root / KEY) == stored


def test_expired_put_is_refused(client, root):
    key = "staging/01900000-0000-7000-8000-0000000000d2"
    response = client.put(signed("PUT", key, now=time.time() - 3600), data=b"late")
    assert response.status_code == 403
    assert files_in(root) == []


def test_put_traversal_is_refused(client, root, tmp_path):
    key = "staging/../../escaped"
    response = client.put(f"/v1/files/{key}?" + signed("PUT", key).split("?")[1], data=b"x")
    assert response.status_code == 404
    assert not (tmp_path / "escaped").exists()
    assert files_in(root) == []


def test_put_over_the_cap_from_content_length(client, root):
    key = "staging/01900000-0000-7000-8000-0000000000d3"
    response = client.put(signed("PUT", key), data=b"x" * (MAX_BYTES + 1))
    assert response.status_code == 413
    assert response.get_json()["error"] == {
        "code": "payload_too_large", "message": f"the file is larger than {MAX_BYTES} bytes",
        "details": {"max_bytes": MAX_BYTES}}
    assert files_in(root) == []


def test_chunked_put_over_the_cap_is_cut_off(client, root):
    key = "staging/01900000-0000-7000-8000-0000000000d4"
    response = client.put(signed("PUT", key), input_stream=io.BytesIO(b"x" * (MAX_BYTES + 10)),
                          environ_overrides={"wsgi.input_terminated": True})
    assert response.status_code == 413
    assert error_code(response) == "payload_too_large"
    assert files_in(root) == [] and not list((root / "staging").glob(".tmp-*"))


def test_chunked_put_within_the_cap(client, root):
    key = "staging/01900000-0000-7000-8000-0000000000d5"
    data = os.urandom(200_000)
    response = client.put(signed("PUT", key), input_stream=io.BytesIO(data),
                          environ_overrides={"wsgi.input_terminated": True})
    assert response.status_code == 201
    assert plaintext(root / key) == data


def test_an_output_slot_url_takes_its_signed_size_past_the_upload_cap(client, root):
    """A generated video may be larger than a user's upload: the storage
    service signs the declared size into the output slot's URL."""
    key = f"objects/{OWNER}/01900000-0000-7000-8000-0000000000d6"
    data = os.urandom(MAX_BYTES + 100)
    response = client.put(signed("PUT", key, max_bytes=len(data)), data=data)
    assert response.status_code == 201, response.get_json()
    assert plaintext(root / key) == data


@pytest.mark.parametrize("terminated", [False, True], ids=["content-length", "server-terminated"])
def test_a_body_of_exactly_the_signed_size_is_accepted(client, root, terminated):
    """gunicorn terminates the input stream: werkzeug then caps reads at the
    request's max_content_length and must not refuse a body of exactly the cap."""
    key = f"objects/{OWNER}/01900000-0000-7000-8000-0000000000d9"
    data = os.urandom(1879)
    response = client.put(signed("PUT", key, max_bytes=len(data)), data=data,
                          environ_overrides={"wsgi.input_terminated": terminated})
    assert response.status_code == 201, response.get_json()
    assert plaintext(root / key) == data


def test_a_signed_size_cap_is_enforced(client, root):
    key = f"objects/{OWNER}/01900000-0000-7000-8000-0000000000d7"
    response = client.put(signed("PUT", key, max_bytes=1000), data=b"x" * 1001)
    assert response.status_code == 413
    assert response.get_json()["error"]["details"] == {"max_bytes": 1000}
    response = client.put(signed("PUT", key, max_bytes=1000),
                          input_stream=io.BytesIO(b"x" * 5000),
                          environ_overrides={"wsgi.input_terminated": True})
    assert response.status_code == 413
    assert files_in(root) == []


@pytest.mark.parametrize("change", [lambda q: q.replace("max_bytes=1000", "max_bytes=99999999"),
                                    lambda q: q.replace("max_bytes=1000&", "")])
def test_a_raised_or_dropped_size_cap_breaks_the_signature(client, root, change):
    key = f"objects/{OWNER}/01900000-0000-7000-8000-0000000000d8"
    url = change(signed("PUT", key, max_bytes=1000))
    response = client.put(url, data=b"x" * 2000)
    assert response.status_code == 403
    assert error_code(response) == "invalid_signature"
    assert files_in(root) == []


# ------------------------------------------------------------ store_file and signed_files
# (SignedFiles itself, the fs backend's, is tested in tests/unit/storage/test_fs_backend.py)


@pytest.fixture
def files(root) -> SignedFiles:
    return SignedFiles(root, FILES_SECRET, keys=KeyRing.parse(DEV_ENCRYPTION_KEYS))


class Exploding(io.RawIOBase):
    """Gives ``good`` bytes, then fails like a broken disk or connection."""

    def __init__(self, good: int, error: Exception):
        self.left = good
        self.error = error

    def readable(self):
        return True

    def read(self, size=-1):
        if self.left <= 0:
            raise self.error
        n = min(self.left, size if size > 0 else self.left)
        self.left -= n
        return b"y" * n


def test_a_failing_disk_is_503_and_leaves_the_old_file_whole(files, root, stored):
    with pytest.raises(DomainError) as caught:
        store_file(files, KEY, Exploding(500, OSError("disk on fire")), None, 1000)
    assert (caught.value.status, caught.value.code) == (503, "service_unavailable")
    assert plaintext(root / KEY) == stored
    assert files_in(root) == [KEY]


def test_a_stream_past_werkzeugs_cap_is_413(files, root):
    key = "staging/01900000-0000-7000-8000-0000000000e1"
    with pytest.raises(DomainError) as caught:
        store_file(files, key, Exploding(500, RequestEntityTooLarge()), None, 1000)
    assert (caught.value.status, caught.value.details) == (413, {"max_bytes": 1000})
    assert files_in(root) == []


def test_a_short_body_is_400(files, root):
    key = "staging/01900000-0000-7000-8000-0000000000e3"
    with pytest.raises(DomainError) as caught:
        store_file(files, key, io.BytesIO(b"z" * 10), 20, 1000)
    assert (caught.value.status, caught.value.code) == (400, "invalid_request")
    assert files_in(root) == []
    assert store_file(files, key, io.BytesIO(b"z" * 20), 20, 1000) == 20


def test_signed_files_follow_the_files_section(make_app, root):
    with make_app(FILES={"ROOT": str(root), "URL_SECRET": "s"}).app_context():
        files = signed_files()
        assert (files.root, files.url_secret) == (root.resolve(), "s")
    with make_app(FILES={"ROOT": None, "URL_SECRET": "s"}).app_context():
        assert signed_files() is None
    with make_app(FILES={}).app_context():
        assert signed_files() is None


def test_the_gateway_refuses_to_start_with_an_empty_or_malformed_key_ring(make_app, root):
    from services.storage.backends import KeyRingError

    for ring in ("", "k1:not-a-key"):
        with pytest.raises(KeyRingError, match="STORAGE_ENCRYPTION_KEYS"):
            make_app(FILES={"ROOT": str(root), "URL_SECRET": FILES_SECRET, "ENCRYPTION_KEYS": ring})


def test_downloads_are_decrypted_while_streaming_and_ranges_cross_chunks(make_app, root):
    from services.storage.backends.sealed import CHUNK_SIZE, new_key_entry

    ring = new_key_entry("gw")
    client = make_app(FILES={"ROOT": str(root), "URL_SECRET": FILES_SECRET,
                             "ENCRYPTION_KEYS": ring}).test_client()
    data = os.urandom(2 * CHUNK_SIZE + 10)
    put = client.put(signed("PUT", KEY, max_bytes=MAX_BYTES), data=data)
    assert put.status_code == 201, put.get_json()
    assert data[:64] not in (root / KEY).read_bytes()
    assert plaintext(root / KEY, KeyRing.parse(ring)) == data
    response = client.get(signed("GET", KEY))
    assert response.data == data and response.headers["Content-Length"] == str(len(data))
    start = CHUNK_SIZE - 3
    part = client.get(signed("GET", KEY), headers={"Range": f"bytes={start}-{start + 9}"})
    assert part.status_code == 206 and part.data == data[start:start + 10]
    # tampered on disk: an error, never altered bytes
    raw = bytearray((root / KEY).read_bytes())
    raw[-5] ^= 1
    (root / KEY).write_bytes(bytes(raw))
    with pytest.raises(OSError):
        client.get(signed("GET", KEY)).data  # noqa: B018
