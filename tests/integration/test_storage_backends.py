"""One suite, both object store backends: ``fs`` (a directory, its signed URLs
served here by a minimal stand-in for the gateway's ``/v1/files/<key>``) and
``s3`` (the ``s3_endpoint`` fixture: moto in-process unless a real store is
configured). Plus what only s3 has: the lifecycle rule and stored checksums."""

from __future__ import annotations

import base64
import hashlib
import io
import os
import socket
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from urllib.parse import parse_qs, unquote, urlsplit

import pytest
import requests
from werkzeug.serving import make_server
from werkzeug.wrappers import Request, Response

from services.common import signing
from services.storage.backends import InvalidKey, KeyRing
from services.storage.backends.fs import FsBackend
from services.storage.backends.s3 import LIFECYCLE_RULE_ID, PART_SIZE, S3Backend
from services.storage.settings import DEV_ENCRYPTION_KEYS
from tests.conftest import free_port

pytestmark = pytest.mark.integration

SECRET = "integration-url-secret"
SAFETY_DAYS = 31


def file_server_app(backend: FsBackend):
    """What the gateway does for fs URLs (with the backend's SignedFiles): verify the
    signature, then GET or PUT the file."""

    @Request.application
    def app(request: Request) -> Response:
        if not request.path.startswith(signing.FILES_PREFIX):
            return Response(status=404)
        key = unquote(request.path[len(signing.FILES_PREFIX):])
        if not backend.files.verify(request.method, key, request.args.get("expires"),
                                    request.args.get("signature"), request.args.get("max_bytes"),
                                    request.args.get("content_type")):
            return Response("invalid signature", status=403)
        if request.method == "PUT":
            backend.files.write(key, request.stream, request.content_length)
            return Response(status=200)
        try:
            with backend.open(key) as fh:
                return Response(fh.read(), status=200)
        except KeyError:
            return Response(status=404)

    return app


@pytest.fixture(scope="module", params=["fs", "s3"])
def backend(request, tmp_path_factory):
    if request.param == "fs":
        port = free_port()
        fs = FsBackend(tmp_path_factory.mktemp("fs-backend") / "objects-root",
                       f"http://127.0.0.1:{port}", SECRET,
                       keys=KeyRing.parse(DEV_ENCRYPTION_KEYS))
        server = make_server("127.0.0.1", port, file_server_app(fs), threaded=True)
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        fs.ensure_ready(SAFETY_DAYS)
        yield fs
        server.shutdown()
        return
    yield s3_backend(request.getfixturevalue("s3_endpoint"), "backends")


def s3_backend(s3_endpoint, label: str, **kwargs) -> S3Backend:
    backend = S3Backend(s3_endpoint.endpoint, s3_endpoint.access_key, s3_endpoint.secret_key,
                        s3_endpoint.bucket_name(label), region=s3_endpoint.region,
                        secure=s3_endpoint.secure, **kwargs)
    backend.ensure_ready(SAFETY_DAYS)
    return backend


@pytest.fixture
def prefix() -> str:
    """A fresh key prefix per test (tests share each backend's store)."""
    return f"objects/{uuid.uuid4()}/"


def put(backend, key: str, data: bytes, content_type: str = "application/octet-stream"):
    backend.put(key, io.BytesIO(data), len(data), content_type)


def read(backend, key: str) -> bytes:
    with backend.open(key) as fh:
        return fh.read()


def query_of(url: str) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(urlsplit(url).query).items()}


# ------------------------------------------------------------------ the shared suite


def test_put_open_stat_roundtrip(backend, prefix):
    key = prefix + "photo"
    before = datetime.now(UTC) - timedelta(seconds=5)
    put(backend, key, b"\x89PNG not really", "image/png")
    assert read(backend, key) == b"\x89PNG not really"
    info = backend.stat(key)
    assert info.key == key and info.size == 15
    assert info.last_modified.tzinfo is not None
    assert before <= info.last_modified <= datetime.now(UTC) + timedelta(seconds=5)

    put(backend, key, b"replaced")
    assert read(backend, key) == b"replaced" and backend.stat(key).size == 8

    put(backend, prefix + "empty", b"")
    assert backend.stat(prefix + "empty").size == 0 and read(backend, prefix + "empty") == b""


def test_absent_objects(backend, prefix):
    assert backend.stat(prefix + "missing") is None
    with pytest.raises(KeyError):
        backend.open(prefix + "missing")


def test_open_streams_in_chunks(backend, prefix):
    data = os.urandom(300_000)
    put(backend, prefix + "chunks", data)
    with backend.open(prefix + "chunks") as fh:
        parts = []
        while chunk := fh.read(65536):
            parts.append(chunk)
    assert b"".join(parts) == data


def test_list_by_prefix(backend, prefix):
    for key in ("a/1", "a/2", "ab/3", "b/4"):
        put(backend, prefix + key, key.encode())
    assert sorted(i.key for i in backend.list(prefix + "a/")) == [prefix + "a/1", prefix + "a/2"]
    assert sorted(i.key for i in backend.list(prefix + "a")) == [prefix + k for k in ("a/1", "a/2", "ab/3")]
    listed = {i.key: i for i in backend.list(prefix)}
    assert sorted(listed) == [prefix + k for k in ("a/1", "a/2", "ab/3", "b/4")]
    assert listed[prefix + "ab/3"].size == 4 and listed[prefix + "ab/3"].last_modified.tzinfo
    assert list(backend.list(prefix + "nothing/")) == []


def test_delete_many_in_bulk_with_missing_keys(backend, prefix):
    present = [f"{prefix}bulk/{i:05d}" for i in range(1200)]
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda key: put(backend, key, b"x"), present))
    missing = [f"{prefix}bulk/{i:05d}" for i in range(1200, 2500)]
    keep = prefix + "keep/me"
    put(backend, keep, b"keep")

    assert backend.delete_many(present + missing) == []  # 2,500 keys, 1,300 of them absent
    assert list(backend.list(prefix + "bulk/")) == []
    assert read(backend, keep) == b"keep"
    assert backend.delete_many(present[:10]) == []  # deleting again is fine
    assert backend.delete_many([]) == []


def test_presigned_get_works_with_plain_requests(backend, prefix):
    put(backend, prefix + "shared", b"hello there", "text/plain")
    url = backend.presigned_get(prefix + "shared", 60)
    response = requests.get(url, timeout=10)
    assert response.status_code == 200 and response.content == b"hello there"


def test_presigned_get_expires(backend, prefix, s3_endpoint):
    put(backend, prefix + "brief", b"soon gone")
    url = backend.presigned_get(prefix + "brief", 1)
    assert requests.get(url, timeout=10).status_code == 200
    if backend.name == "s3":
        query = query_of(url)
        assert query["X-Amz-Expires"] == "1"
        signed_at = datetime.strptime(query["X-Amz-Date"], "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
        assert abs((datetime.now(UTC) - signed_at).total_seconds()) < 10
        if not s3_endpoint.enforces_presigned_expiry:
            # moto ignores X-Amz-Expires: the signed parameters above are what
            # MinIO and S3 enforce; with a real store the request below is refused.
            return
    else:
        assert int(query_of(url)["expires"]) <= time.time() + 1
    time.sleep(2.2)
    assert requests.get(url, timeout=10).status_code == 403


def test_presigned_put_accepts_an_upload(backend, prefix):
    key = prefix.replace("objects/", "staging/", 1) + "upload"
    url, headers = backend.presigned_put(key, 60, "image/png", 1024)
    assert headers == {"Content-Type": "image/png"}
    response = requests.put(url, data=b"uploaded bytes", headers=headers, timeout=10)
    assert response.status_code == 200, response.text
    assert read(backend, key) == b"uploaded bytes"
    assert backend.stat(key).size == 14


def test_a_download_url_cannot_upload(backend, prefix, s3_endpoint):
    put(backend, prefix + "original", b"original")
    url = backend.presigned_get(prefix + "original", 60)
    if backend.name == "s3" and s3_endpoint.kind == "moto":
        # moto checks no signature at all; the method is part of the signed request
        assert "X-Amz-Signature" in query_of(url)
        return
    assert requests.put(url, data=b"overwritten", timeout=10).status_code == 403
    assert read(backend, prefix + "original") == b"original"


def test_multipart_upload_of_a_large_object(backend, prefix):
    data = os.urandom(PART_SIZE + 1024 * 1024 + 3)  # 17 MiB and a bit: two parts
    put(backend, prefix + "large", data)
    assert backend.stat(prefix + "large").size == len(data)
    assert hashlib.sha256(read(backend, prefix + "large")).digest() == hashlib.sha256(data).digest()
    if backend.name == "s3":  # a multipart object's ETag ends with its part count
        assert backend.client.stat_object(backend.bucket, prefix + "large").etag.endswith("-2")


def test_invalid_keys_are_refused(backend):
    for key in ("../escape", "/abs/path", "objects//x", "objects/../x"):
        with pytest.raises(InvalidKey):
            put(backend, key, b"x")
        with pytest.raises(InvalidKey):
            backend.presigned_get(key, 60)


def test_ensure_ready_is_idempotent(backend, prefix):
    put(backend, prefix + "survivor", b"still here")
    backend.ensure_ready(SAFETY_DAYS)
    assert read(backend, prefix + "survivor") == b"still here"


# ------------------------------------------------------------------ s3 only


def lifecycle_rules(backend: S3Backend) -> dict:
    config = backend.client.get_bucket_lifecycle(backend.bucket)
    return {rule.rule_id: rule for rule in config.rules}


def test_s3_bucket_is_created_with_a_safety_expiry_rule(s3_endpoint):
    backend = s3_backend(s3_endpoint, "lifecycle")
    assert backend.client.bucket_exists(backend.bucket)
    rule = lifecycle_rules(backend)[LIFECYCLE_RULE_ID]
    assert rule.status == "Enabled" and rule.rule_filter.prefix == ""
    assert rule.expiration.days == SAFETY_DAYS == backend.safety_expiry_days()
    assert rule.abort_incomplete_multipart_upload.days_after_initiation == 1


def test_s3_safety_expiry_update_keeps_other_rules(s3_endpoint):
    from minio.commonconfig import ENABLED, Filter
    from minio.lifecycleconfig import Expiration, LifecycleConfig, Rule

    backend = s3_backend(s3_endpoint, "lifecycle-update")
    rules = list(backend.client.get_bucket_lifecycle(backend.bucket).rules)
    rules.append(Rule(ENABLED, rule_filter=Filter(prefix="tmp/"), rule_id="operator-rule",
                      expiration=Expiration(days=2)))
    backend.client.set_bucket_lifecycle(backend.bucket, LifecycleConfig(rules))

    backend.ensure_ready(91)  # a plan with longer retention appeared
    found = lifecycle_rules(backend)
    assert found[LIFECYCLE_RULE_ID].expiration.days == 91
    assert found["operator-rule"].expiration.days == 2


def test_s3_single_part_objects_are_stored_with_their_sha256(s3_endpoint):
    import boto3

    backend = s3_backend(s3_endpoint, "checksum")
    data = b"checksummed " * 100
    put(backend, "objects/o/checked", data, "text/plain")
    client = boto3.client("s3", endpoint_url=s3_endpoint.url, region_name=s3_endpoint.region,
                          aws_access_key_id=s3_endpoint.access_key,
                          aws_secret_access_key=s3_endpoint.secret_key)
    head = client.head_object(Bucket=backend.bucket, Key="objects/o/checked", ChecksumMode="ENABLED")
    assert head["ChecksumSHA256"] == base64.b64encode(hashlib.sha256(data).digest()).decode()
    assert head["ContentType"] == "text/plain"


def test_s3_presigned_urls_carry_the_public_endpoint(s3_endpoint):
    offline = S3Backend(s3_endpoint.endpoint, s3_endpoint.access_key, s3_endpoint.secret_key,
                        "any-bucket", public_endpoint="https://files.example.test")
    assert offline.presigned_get("objects/o/pub", 60).startswith(
        "https://files.example.test/any-bucket/objects/o/pub?")

    # Another name for the same store: the URL carries it, and the store serves it.
    host, port = s3_endpoint.endpoint.rsplit(":", 1)
    alias = "localhost" if host == "127.0.0.1" else socket.gethostbyname(host)
    if alias == host:  # a configured store known only by its IP address: no other name
        return
    backend = s3_backend(s3_endpoint, "public", public_endpoint=f"{alias}:{port}")
    put(backend, "objects/o/pub", b"public bytes")
    url = backend.presigned_get("objects/o/pub", 60)
    assert urlsplit(url).netloc == f"{alias}:{port}" != s3_endpoint.endpoint
    response = requests.get(url, timeout=10)
    assert response.status_code == 200 and response.content == b"public bytes"
