"""The s3 backend's logic that needs no server (a Minio client makes no call
until asked to): bulk delete chunking and error reporting, URL signing for a
public endpoint without contacting it, the single-part checksum header."""

from __future__ import annotations

import base64
import hashlib
import io
from urllib.parse import parse_qs, urlsplit

import pytest
from minio.deleteobjects import DeleteError
from minio.error import S3Error

from services.storage.backends.s3 import DELETE_CHUNK, PART_SIZE, S3Backend, split_endpoint


def backend(**kwargs) -> S3Backend:
    # an address nothing listens on: any network call would fail the test
    return S3Backend("127.0.0.1:9", "ak", "sk", "bkt", **kwargs)


def test_delete_many_sends_chunks_of_1000_and_reports_real_failures_only():
    b = backend()
    chunks = []

    def remove_objects(bucket, objects):
        chunks.append([o.name for o in objects])
        for o in objects:
            if o.name.endswith("7"):
                yield DeleteError("AccessDenied", "no", o.name, None)
            elif o.name.endswith("3"):
                yield DeleteError("NoSuchKey", "already gone", o.name, None)

    b.client.remove_objects = remove_objects
    keys = (f"objects/o/{i}" for i in range(2500))  # any iterable, consumed lazily
    failed = b.delete_many(keys)
    assert [len(c) for c in chunks] == [DELETE_CHUNK, DELETE_CHUNK, 500]
    assert failed == [f"objects/o/{i}" for i in range(2500) if i % 10 == 7]
    assert b.delete_many([]) == [] and len(chunks) == 3


def test_presigned_urls_for_a_public_endpoint_are_signed_offline():
    b = backend(public_endpoint="https://files.example.test:9443", region="eu-west-1")
    url = b.presigned_get("objects/o/i", 120)
    parts = urlsplit(url)
    assert (parts.scheme, parts.netloc, parts.path) == ("https", "files.example.test:9443",
                                                        "/bkt/objects/o/i")
    query = {k: v[0] for k, v in parse_qs(parts.query).items()}
    assert query["X-Amz-Expires"] == "120"
    assert "/eu-west-1/s3/" in query["X-Amz-Credential"]
    put_url, headers = b.presigned_put("staging/u", 60, "image/png", 1024)
    assert put_url.startswith("https://files.example.test:9443/bkt/staging/u?")
    assert headers == {"Content-Type": "image/png"}
    # our own services (the gateway's upload stream, the generation workers)
    # reach the store at its service-network address
    internal_put, _ = b.presigned_put("staging/u", 60, "image/png", 1024, internal=True)
    assert internal_put.startswith("http://127.0.0.1:9/bkt/staging/u?")
    assert b.presigned_get("objects/o/i", 60, internal=True).startswith(
        "http://127.0.0.1:9/bkt/objects/o/i?")


def test_without_public_endpoint_urls_use_the_endpoint():
    b = backend()
    assert b.presigned_get("objects/o/i", 60).startswith("http://127.0.0.1:9/bkt/objects/o/i?")


def test_split_endpoint():
    assert split_endpoint("minio:9000", False) == ("minio:9000", False)
    assert split_endpoint("https://s3.example.test", False) == ("s3.example.test", True)
    assert split_endpoint("http://localhost:9000/", True) == ("localhost:9000", False)


def test_single_part_puts_carry_a_sha256_checksum_and_large_ones_go_multipart():
    b = backend()
    calls = []
    b.client.put_object = lambda *args, **kwargs: calls.append((args, kwargs))
    b.put("objects/o/small", io.BytesIO(b"hello"), 5, "text/plain")
    (args, kwargs), = calls
    assert args[:2] == ("bkt", "objects/o/small") and args[2].read() == b"hello"
    expected = base64.b64encode(hashlib.sha256(b"hello").digest()).decode()
    assert kwargs["metadata"]["x-amz-checksum-sha256"] == expected

    calls.clear()
    stream = io.BytesIO(b"\0" * (PART_SIZE + 1))
    b.put("objects/o/big", stream, PART_SIZE + 1, "application/octet-stream")
    (args, kwargs), = calls
    assert args[2] is stream and kwargs["part_size"] == PART_SIZE and "metadata" not in kwargs


def s3_error(code: str, message: str) -> S3Error:
    return S3Error(None, code, message, "/bkt/key", "req", "host")


def test_a_store_without_checksum_support_gets_plain_uploads():
    b = backend()
    calls = []

    def put_object(*args, **kwargs):
        calls.append(kwargs.get("metadata"))
        if kwargs.get("metadata"):
            raise s3_error("NotImplemented", "A header you provided implies functionality that is not implemented")

    b.client.put_object = put_object
    b.put("objects/o/1", io.BytesIO(b"abc"), 3, "text/plain")
    b.put("objects/o/2", io.BytesIO(b"def"), 3, "text/plain")
    assert [bool(m) for m in calls] == [True, False, False]  # tried once, then never again
    assert b.checksums is False


def test_a_checksum_mismatch_is_an_error_not_a_downgrade():
    b = backend()

    def put_object(*args, **kwargs):
        raise s3_error("XAmzContentChecksumMismatch", "The provided 'x-amz-checksum' header does not match")

    b.client.put_object = put_object
    with pytest.raises(S3Error):
        b.put("objects/o/1", io.BytesIO(b"abc"), 3, "text/plain")
    assert b.checksums is True


# ------------------------------------------------------------------ server-side encryption


class _Stat:
    def __init__(self, metadata):
        self.metadata = metadata


def probing(b: S3Backend, *, refuse: bool = False, answered: dict | None = None) -> list:
    """Stub the calls of the start probe; returns what was asked of the store."""
    calls = []

    def set_bucket_encryption(bucket, config):
        calls.append(("bucket-default", config.rule.sse_algorithm, config.rule.kms_master_key_id))

    def put_object(bucket, key, data, length, content_type=None, sse=None, **kwargs):
        calls.append(("put", key, sse.headers() if sse else {}))
        if refuse:
            raise S3Error("NotImplemented", "Server side encryption specified but KMS is not "
                          "configured", key, "r", "h", None)

    b.client.set_bucket_encryption = set_bucket_encryption
    b.client.put_object = put_object
    b.client.stat_object = lambda bucket, key: _Stat(answered or {})
    b.client.remove_object = lambda bucket, key: calls.append(("removed", key))
    return calls


def test_the_start_probe_accepts_a_store_that_encrypts():
    b = backend()
    calls = probing(b, answered={"X-Amz-Server-Side-Encryption": "AES256"})
    b.require_encryption()
    assert calls[0] == ("bucket-default", "AES256", None)
    assert calls[1][2] == {"X-Amz-Server-Side-Encryption": "AES256"}
    assert calls[-1][0] == "removed"


def test_the_start_probe_refuses_a_store_that_rejects_or_ignores_encryption():
    from services.storage.backends.s3 import EncryptionRefused

    b = backend()
    probing(b, refuse=True)
    with pytest.raises(EncryptionRefused, match="refuses server-side encryption AES256"):
        b.require_encryption()
    probing(b, answered={})  # stored, but in clear
    with pytest.raises(EncryptionRefused, match="without server-side encryption AES256"):
        b.require_encryption()


def test_kms_asks_for_the_configured_key_and_checks_the_store_used_it():
    from services.storage.backends.s3 import EncryptionRefused

    b = backend(sse="kms", kms_key_id="1234abcd-12ab-34cd-56ef-1234567890ab")
    calls = probing(b, answered={
        "x-amz-server-side-encryption": "aws:kms",
        "x-amz-server-side-encryption-aws-kms-key-id":
            "arn:aws:kms:eu-west-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab"})
    b.require_encryption()
    assert calls[0] == ("bucket-default", "aws:kms", "1234abcd-12ab-34cd-56ef-1234567890ab")
    assert calls[1][2]["X-Amz-Server-Side-Encryption-Aws-Kms-Key-Id"] == \
        "1234abcd-12ab-34cd-56ef-1234567890ab"
    probing(b, answered={"x-amz-server-side-encryption": "aws:kms",
                         "x-amz-server-side-encryption-aws-kms-key-id": "arn:...:key/another"})
    with pytest.raises(EncryptionRefused, match="another KMS key"):
        b.require_encryption()
    with pytest.raises(ValueError, match="STORAGE_S3_KMS_KEY_ID is not set"):
        backend(sse="kms")
