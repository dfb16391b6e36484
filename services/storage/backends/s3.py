"""``s3`` backend: any S3-compatible store (MinIO, AWS S3...) through ``minio``.

Integrity on upload: objects up to one part (``part_size``, 16 MiB) are sent in
one PutObject carrying ``x-amz-checksum-sha256``, which S3 and MinIO verify and
store (minio 7.2.20's ``put_object`` has no checksum argument, so the header
goes in through ``metadata``; headers starting with ``x-amz-`` are passed as
they are; a store that refuses the header gets uploads without it from then
on, with a warning in the log). Larger objects go multipart: minio-py cannot attach per-part
checksums there, so each part is protected by the signed
``x-amz-content-sha256`` (plain HTTP) or ``Content-MD5`` (HTTPS) that the
server verifies before accepting the part.

Encryption at rest: every object the backend writes (put, multipart, copy)
asks for server-side encryption, SSE-S3 (``x-amz-server-side-encryption:
AES256``) or, with ``STORAGE.S3_SSE: kms``, SSE-KMS under
``STORAGE.S3_KMS_KEY_ID``. Presigned PUT URLs cannot make the uploader send
that header (minio-py signs only the host), so :meth:`S3Backend.ensure_ready`
also sets the same rule as the bucket's default encryption, which the store
applies to those uploads. It then writes, checks and deletes a probe object:
a store that refuses or ignores the encryption stops the service from
starting (:class:`EncryptionRefused`).

An outage of the store: minio-py's connection pool retries a request that
fails to connect or is answered 500/502/503/504 a few times (about six
seconds); when the store still does not serve, every operation but
``ensure_ready`` raises 503 ``storage_unavailable`` (``details.retry_after``)
instead of the client's exception, so the caller gets a clear answer (the
gateway: 503 with Retry-After) and a job waits it out
(services/generation/runner.py). ``SlowDown``, ``ServiceUnavailable``,
``InternalError`` and ``RequestTimeout`` are S3's codes for "try again".
"""

from __future__ import annotations

import base64
import hashlib
import io
import itertools
import logging
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import BinaryIO
from urllib.parse import urlsplit

from minio import Minio
from minio.commonconfig import ENABLED, CopySource, Filter
from minio.deleteobjects import DeleteObject
from minio.error import S3Error, ServerError
from minio.lifecycleconfig import AbortIncompleteMultipartUpload, Expiration, LifecycleConfig, Rule
from minio.sse import Sse, SseKMS, SseS3
from minio.sseconfig import Rule as SseRule
from minio.sseconfig import SSEConfig
from urllib3.exceptions import HTTPError as Urllib3Error

from .base import ObjectInfo, storage_unavailable
from .keys import check_key, check_prefix

log = logging.getLogger(__name__)

PART_SIZE = 16 * 1024 * 1024
DELETE_CHUNK = 1000  # the most one DeleteObjects request accepts
LIFECYCLE_RULE_ID = "darkroom-safety-expiry"
_MISSING = ("NoSuchKey", "NoSuchObject", "ResourceNotFound", "NotFound")
PROBE_KEY = "darkroom-probes/server-side-encryption"
SSE_HEADER = "x-amz-server-side-encryption"
SSE_KMS_KEY_HEADER = "x-amz-server-side-encryption-aws-kms-key-id"
SSE_ALGORITHMS = {"s3": "AES256", "kms": "aws:kms"}
RETRY_CODES = ("SlowDown", "ServiceUnavailable", "InternalError", "RequestTimeout")


@contextmanager
def _serving(what: str):
    """503 ``storage_unavailable`` when the store is down or says "try again"."""
    try:
        yield
    except S3Error as exc:
        if exc.code in RETRY_CODES:
            log.warning("the object store could not %s: %s", what, exc.code)
            raise storage_unavailable(what) from None
        raise
    except (ServerError, Urllib3Error, OSError) as exc:  # a 5xx; MaxRetryError (5xx or no
        # connection after the pool's retries) and co.
        log.warning("the object store could not %s: %s", what, type(exc).__name__)
        raise storage_unavailable(what) from None


class EncryptionRefused(RuntimeError):
    """The bucket does not encrypt objects as configured: the service must not start."""


def split_endpoint(endpoint: str, secure: bool) -> tuple[str, bool]:
    """``host:port`` and whether it is https, from ``host:port`` or a URL."""
    if "://" in endpoint:
        parts = urlsplit(endpoint)
        return parts.netloc, parts.scheme == "https"
    return endpoint.rstrip("/"), secure


class S3Backend:
    name = "s3"

    def __init__(self, endpoint: str, access_key: str, secret_key: str, bucket: str, *,
                 region: str = "us-east-1", secure: bool = False, public_endpoint: str = "",
                 part_size: int = PART_SIZE, sse: str = "s3", kms_key_id: str = ""):
        host, secure = split_endpoint(endpoint, secure)
        self.bucket = bucket
        if sse not in SSE_ALGORITHMS:
            raise ValueError(f"unknown server-side encryption {sse!r} (expected s3 or kms)")
        if sse == "kms" and not kms_key_id:
            raise ValueError("STORAGE.S3_SSE is kms but STORAGE_S3_KMS_KEY_ID is not set")
        self.sse_mode, self.kms_key_id = sse, kms_key_id
        self.sse: Sse = SseKMS(kms_key_id, None) if sse == "kms" else SseS3()
        self.part_size = part_size
        self.checksums = True  # until the store says it does not support them
        self.client = Minio(host, access_key=access_key, secret_key=secret_key,
                            secure=secure, region=region)
        # Presigned URLs carry the host they are signed for: when clients reach
        # the store at another address, sign with a client for that address.
        # Its region is set, so signing never calls the server.
        self.signer = self.client
        if public_endpoint:
            public_host, public_secure = split_endpoint(public_endpoint, secure)
            self.signer = Minio(public_host, access_key=access_key, secret_key=secret_key,
                                secure=public_secure, region=region)

    # ------------------------------------------------------------ Backend

    def ensure_ready(self, safety_expiry_days: int) -> None:
        try:
            if not self.client.bucket_exists(self.bucket):
                self.client.make_bucket(self.bucket)
        except S3Error as exc:  # another instance created it meanwhile
            if exc.code != "BucketAlreadyOwnedByYou":
                raise
        self.require_encryption()
        self.set_safety_expiry(safety_expiry_days)

    def require_encryption(self) -> None:
        """Make the configured server-side encryption the bucket's default
        (presigned uploads get it), then prove the store applies it: a probe
        object written with the encryption header must come back encrypted
        that way. :class:`EncryptionRefused` otherwise."""
        import uuid

        rule = (SseRule.new_sse_kms_rule(self.kms_key_id) if self.sse_mode == "kms"
                else SseRule.new_sse_s3_rule())
        algorithm = SSE_ALGORITHMS[self.sse_mode]
        # a probe of its own: replicas starting together would delete each other's
        probe = f"{PROBE_KEY}-{uuid.uuid4().hex}"
        try:
            self.client.set_bucket_encryption(self.bucket, SSEConfig(rule))
            self.client.put_object(self.bucket, probe, io.BytesIO(b"probe"), 5,
                                   content_type="text/plain", sse=self.sse)
            stat = self.client.stat_object(self.bucket, probe)
        except S3Error as exc:
            raise EncryptionRefused(
                f"the bucket {self.bucket!r} refuses server-side encryption {algorithm} "
                f"({exc.code}: {exc.message}); fix the store or STORAGE_S3_SSE") from None
        headers = {k.lower(): v for k, v in (stat.metadata or {}).items()}
        applied = headers.get(SSE_HEADER)
        if applied != algorithm:
            raise EncryptionRefused(
                f"the bucket {self.bucket!r} stored a probe object without server-side "
                f"encryption {algorithm} (it answered {applied or 'none'})")
        if self.sse_mode == "kms" and not _same_kms_key(headers.get(SSE_KMS_KEY_HEADER),
                                                         self.kms_key_id):
            raise EncryptionRefused(
                f"the bucket {self.bucket!r} encrypted the probe object with another KMS key "
                "than STORAGE_S3_KMS_KEY_ID")
        self.client.remove_object(self.bucket, probe)

    def set_safety_expiry(self, days: int) -> None:
        """Expire every object ``days`` after creation (and abandoned multipart
        uploads after a day); other lifecycle rules on the bucket are kept."""
        existing = self.client.get_bucket_lifecycle(self.bucket)
        rules = [r for r in (existing.rules if existing else []) if r.rule_id != LIFECYCLE_RULE_ID]
        rules.append(Rule(
            ENABLED,
            rule_filter=Filter(prefix=""),
            rule_id=LIFECYCLE_RULE_ID,
            expiration=Expiration(days=int(days)),
            abort_incomplete_multipart_upload=AbortIncompleteMultipartUpload(days_after_initiation=1),
        ))
        self.client.set_bucket_lifecycle(self.bucket, LifecycleConfig(rules))

    def safety_expiry_days(self) -> int | None:
        """The expiry of the rule :meth:`set_safety_expiry` set, or None."""
        config = self.client.get_bucket_lifecycle(self.bucket)
        for rule in config.rules if config else []:
            if rule.rule_id == LIFECYCLE_RULE_ID and rule.expiration:
                return rule.expiration.days
        return None

    def put(self, key: str, data: BinaryIO, length: int, content_type: str) -> None:
        check_key(key)
        # a short source is the caller's error, not an outage: read before the store is asked
        body = _read_exactly(data, length) if length <= self.part_size else None
        with _serving("store the object"):
            self._put(key, body, data, length, content_type)

    def _put(self, key: str, body: bytes | None, data: BinaryIO, length: int,
             content_type: str) -> None:
        if body is not None:
            if self.checksums:
                checksum = base64.b64encode(hashlib.sha256(body).digest()).decode()
                try:
                    self.client.put_object(
                        self.bucket, key, io.BytesIO(body), length, content_type=content_type,
                        metadata={"x-amz-checksum-sha256": checksum,
                                  "x-amz-sdk-checksum-algorithm": "SHA256"},
                        sse=self.sse,
                    )
                    return
                except S3Error as exc:
                    if not _checksum_unsupported(exc):
                        raise  # BadDigest & co: the bytes were damaged on the way
                    log.warning("the store refuses x-amz-checksum-sha256 (%s: %s); "
                                "uploading without it from now on", exc.code, exc.message)
                    self.checksums = False
            # the signed x-amz-content-sha256 (http) or Content-MD5 (https) still protects it
            self.client.put_object(self.bucket, key, io.BytesIO(body), length,
                                   content_type=content_type, sse=self.sse)
        else:
            self.client.put_object(self.bucket, key, data, length, content_type=content_type,
                                   part_size=self.part_size, sse=self.sse)

    def copy(self, source: str, target: str) -> None:
        """A server-side copy (the content type goes with it); up to 5 GiB."""
        try:
            with _serving("copy the object"):
                self.client.copy_object(self.bucket, check_key(target),
                                        CopySource(self.bucket, check_key(source)), sse=self.sse)
        except S3Error as exc:
            if exc.code in _MISSING:
                raise KeyError(source) from None
            raise

    def open(self, key: str) -> BinaryIO:
        try:
            with _serving("read the object"):
                response = self.client.get_object(self.bucket, check_key(key))
        except S3Error as exc:
            if exc.code in _MISSING:
                raise KeyError(key) from None
            raise
        return _ResponseStream(response)  # type: ignore[return-value]

    def stat(self, key: str) -> ObjectInfo | None:
        try:
            with _serving("find the object"):
                obj = self.client.stat_object(self.bucket, check_key(key))
        except S3Error as exc:
            if exc.code in _MISSING:
                return None
            raise
        return ObjectInfo(key, int(obj.size or 0), obj.last_modified)

    def delete_many(self, keys: Iterable[str]) -> list[str]:
        failed: list[str] = []
        iterator = iter(keys)
        while chunk := [check_key(k) for k in itertools.islice(iterator, DELETE_CHUNK)]:
            # remove_objects is lazy: nothing is deleted until its errors are iterated
            with _serving("delete objects"):
                for error in self.client.remove_objects(self.bucket,
                                                        [DeleteObject(k) for k in chunk]):
                    if error.code not in _MISSING:
                        failed.append(error.name or "")
        return failed

    def list(self, prefix: str) -> Iterator[ObjectInfo]:
        check_prefix(prefix)
        with _serving("list objects"):
            for obj in self.client.list_objects(self.bucket, prefix=prefix or None,
                                                recursive=True):
                if not obj.is_dir:
                    yield ObjectInfo(obj.object_name, int(obj.size or 0), obj.last_modified)

    def presigned_get(self, key: str, ttl_seconds: int, internal: bool = False,
                      content_type: str | None = None) -> str:
        signer = self.client if internal else self.signer
        return signer.presigned_get_object(self.bucket, check_key(key),
                                                expires=timedelta(seconds=ttl_seconds))

    def presigned_put(self, key: str, ttl_seconds: int, content_type: str,
                      max_bytes: int, internal: bool = False) -> tuple[str, dict[str, str]]:
        signer = self.client if internal else self.signer
        url = signer.presigned_put_object(self.bucket, check_key(key),
                                               expires=timedelta(seconds=ttl_seconds))
        return url, {"Content-Type": content_type}


def _same_kms_key(answered: str | None, configured: str) -> bool:
    """AWS answers the key's full ARN for a key configured by id or alias ARN:
    the configured id must be (the end of) what the store answers."""
    if "alias/" in configured:  # the store answers the key an alias points to
        return bool(answered)
    return bool(answered) and (answered == configured or answered.endswith("/" + configured)
                               or answered.endswith(":" + configured))


def _checksum_unsupported(exc: S3Error) -> bool:
    """An older or partial S3 implementation that does not know checksum headers."""
    if exc.code == "NotImplemented":
        return True
    return exc.code in ("InvalidArgument", "InvalidRequest") and "checksum" in (exc.message or "").lower()


def _read_exactly(data: BinaryIO, length: int) -> bytes:
    parts, remaining = [], length
    while remaining > 0:
        chunk = data.read(remaining)
        if not chunk:
            raise OSError(f"stream ended {remaining} bytes short of {length}")
        parts.append(bytes(chunk))
        remaining -= len(chunk)
    return b"".join(parts)


class _ResponseStream(io.RawIOBase):
    """A urllib3 response as a file object; closing it returns the connection to the pool."""

    def __init__(self, response):
        self._response = response

    def readable(self) -> bool:
        return True

    def read(self, size: int | None = -1) -> bytes:
        return self._response.read(None if size is None or size < 0 else size)

    def readall(self) -> bytes:
        return self._response.read()

    def readinto(self, buffer) -> int:
        data = self._response.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def close(self) -> None:
        if not self.closed:
            self._response.close()
            self._response.release_conn()
        super().close()
