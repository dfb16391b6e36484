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
"""

from __future__ import annotations

import base64
import hashlib
import io
import itertools
import logging
from collections.abc import Iterable, Iterator
from datetime import timedelta
from typing import BinaryIO
from urllib.parse import urlsplit

from minio import Minio
from minio.commonconfig import ENABLED, CopySource, Filter
from minio.deleteobjects import DeleteObject
from minio.error import S3Error
from minio.lifecycleconfig import AbortIncompleteMultipartUpload, Expiration, LifecycleConfig, Rule

from .base import ObjectInfo
from .keys import check_key, check_prefix

log = logging.getLogger(__name__)

PART_SIZE = 16 * 1024 * 1024
DELETE_CHUNK = 1000  # the most one DeleteObjects request accepts
LIFECYCLE_RULE_ID = "darkroom-safety-expiry"
_MISSING = ("NoSuchKey", "NoSuchObject", "ResourceNotFound", "NotFound")


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
                 part_size: int = PART_SIZE):
        host, secure = split_endpoint(endpoint, secure)
        self.bucket = bucket
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
        self.set_safety_expiry(safety_expiry_days)

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
        if length <= self.part_size:
            body = _read_exactly(data, length)
            if self.checksums:
                checksum = base64.b64encode(hashlib.sha256(body).digest()).decode()
                try:
                    self.client.put_object(
                        self.bucket, key, io.BytesIO(body), length, content_type=content_type,
                        metadata={"x-amz-checksum-sha256": checksum,
                                  "x-amz-sdk-checksum-algorithm": "SHA256"},
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
                                   content_type=content_type)
        else:
            self.client.put_object(self.bucket, key, data, length, content_type=content_type,
                                   part_size=self.part_size)

    def copy(self, source: str, target: str) -> None:
        """A server-side copy (the content type goes with it); up to 5 GiB."""
        try:
            self.client.copy_object(self.bucket, check_key(target),
                                    CopySource(self.bucket, check_key(source)))
        except S3Error as exc:
            if exc.code in _MISSING:
                raise KeyError(source) from None
            raise

    def open(self, key: str) -> BinaryIO:
        try:
            response = self.client.get_object(self.bucket, check_key(key))
        except S3Error as exc:
            if exc.code in _MISSING:
                raise KeyError(key) from None
            raise
        return _ResponseStream(response)  # type: ignore[return-value]

    def stat(self, key: str) -> ObjectInfo | None:
        try:
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
            for error in self.client.remove_objects(self.bucket, [DeleteObject(k) for k in chunk]):
                if error.code not in _MISSING:
                    failed.append(error.name or "")
        return failed

    def list(self, prefix: str) -> Iterator[ObjectInfo]:
        check_prefix(prefix)
        for obj in self.client.list_objects(self.bucket, prefix=prefix or None, recursive=True):
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
