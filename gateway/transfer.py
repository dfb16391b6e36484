"""Putting a file where an upload slot says: :func:`send_to_slot` writes it
straight into ``FILES.ROOT`` when the slot is this gateway's own ``/v1/files/``
URL (the fs backend's :class:`~services.storage.backends.fs.SignedFiles`,
:func:`store_file`), else streams it to the slot's URL with :func:`put_file`
(a presigned S3 PUT, or the ``/v1/files/`` URL of another gateway).

The body is streamed from the file object with an exact ``Content-Length``
(presigned S3 PUTs accept no chunked bodies); nothing is read into memory
whole. Bytes are counted as they go: a source that turns out longer than
declared is cut off before its last chunk is sent, so the receiver never gets
a complete body. Connecting and every socket operation are bounded by
timeouts. Failures are DomainErrors: 413 ``payload_too_large`` past
``max_bytes``, 503 ``service_unavailable`` when the transfer fails. URLs carry
their signature in the query string: only the host is ever logged.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from functools import lru_cache
from typing import BinaryIO
from urllib.parse import urlsplit

import requests
from flask import current_app
from werkzeug.exceptions import RequestEntityTooLarge

from gateway.rpc import ServiceUnavailable
from services.common.errors import DomainError, not_found, payload_too_large
from services.storage.backends.fs import ShortStream, SignedFiles
from services.storage.backends.keys import InvalidKey
from services.storage.backends.sealed import KeyRing
from services.storage.settings import DEV_ENCRYPTION_KEYS

log = logging.getLogger("gateway.transfer")

DEFAULT_MAX_BYTES = 20 * 1024 * 1024
CONNECT_TIMEOUT_SECONDS = 5.0
# waiting for the answer once the body is sent (S3 may checksum a large object first)
READ_TIMEOUT_SECONDS = 60.0
CHUNK = 256 * 1024


class _SourceTooLong(Exception):
    pass


class _SourceTooShort(Exception):
    pass


class CountingReader:
    """Exactly ``length`` bytes of ``source``, read on demand.

    ``len()`` gives requests the Content-Length. Reading more than ``length``
    bytes from the source raises before the last chunk leaves; a source that
    ends early raises too (the receiver would wait for the missing bytes).
    """

    def __init__(self, source: BinaryIO, length: int):
        self.source = source
        self.length = length
        self.sent = 0

    def __len__(self) -> int:
        return self.length

    def read(self, size: int = -1) -> bytes:
        remaining = self.length - self.sent
        if remaining <= 0:
            return b""
        chunk = self.source.read(min(size if size and size > 0 else CHUNK, remaining))
        if not chunk:
            raise _SourceTooShort(f"the source ended {remaining} bytes short")
        self.sent += len(chunk)
        if self.sent == self.length and self.source.read(1):
            raise _SourceTooLong(f"the source holds more than {self.length} bytes")
        return chunk


def put_file(url: str, source: BinaryIO, length: int, *, max_bytes: int, method: str = "PUT",
             headers: Mapping[str, str] | None = None,
             timeout: tuple[float, float] = (CONNECT_TIMEOUT_SECONDS, READ_TIMEOUT_SECONDS)) -> None:
    """Send ``length`` bytes of ``source`` (from its current position) to ``url``."""
    if length > max_bytes:
        raise payload_too_large(max_bytes)
    host = urlsplit(url).netloc
    send_headers = {k: v for k, v in (headers or {}).items() if k.lower() != "content-length"}
    body = CountingReader(source, length)
    try:
        response = requests.request(method, url, data=body, headers=send_headers, timeout=timeout,
                                    allow_redirects=False)
    except _SourceTooLong:
        raise payload_too_large(length) from None
    except (_SourceTooShort, requests.RequestException) as exc:
        log.warning("upload transfer to %s failed after %d of %d bytes: %s",
                    host, body.sent, length, type(exc).__name__)
        raise ServiceUnavailable("the file could not be stored, try again shortly") from None
    try:
        if response.status_code == 413:
            raise payload_too_large(max_bytes)
        if not 200 <= response.status_code < 300:
            log.warning("upload transfer to %s answered %d", host, response.status_code)
            raise ServiceUnavailable("the file could not be stored, try again shortly")
    finally:
        response.close()


# ------------------------------------------------------------ the fs backend's files


def upload_max_bytes() -> int:
    """``UPLOAD_MAX_BYTES``: the cap of uploads (and of file URLs without a signed one)."""
    return int(current_app.extensions["darkroom"].config.get("UPLOAD_MAX_BYTES")
               or DEFAULT_MAX_BYTES)


def signed_files() -> SignedFiles | None:
    """This gateway's files: None unless ``FILES.ROOT`` and ``FILES.URL_SECRET``
    are set. They are sealed with the key ring ``FILES.ENCRYPTION_KEYS`` (the
    storage service's ``STORAGE_ENCRYPTION_KEYS``; the built-in development
    ring when the config has none, which production refuses)."""
    files = current_app.extensions["darkroom"].config.get("FILES") or {}
    root, secret = files.get("ROOT"), files.get("URL_SECRET")
    if not root or not secret:
        return None
    return SignedFiles(str(root), str(secret), keys=key_ring(files.get("ENCRYPTION_KEYS",
                                                                        DEV_ENCRYPTION_KEYS)))


@lru_cache(maxsize=4)
def _parsed_ring(value: str) -> KeyRing:
    return KeyRing.parse(value)


def key_ring(value) -> KeyRing:
    """The key ring of a config value (a comma-separated string or a list), parsed once."""
    return _parsed_ring(",".join(value) if isinstance(value, list | tuple) else str(value or ""))


def store_file(files: SignedFiles, key: str, stream: BinaryIO, length: int | None,
               max_bytes: int) -> int:
    """:meth:`SignedFiles.write` with HTTP's answers: 413 past ``max_bytes``,
    400 for a body shorter than its ``Content-Length``, 503 when the disk fails."""
    try:
        return files.write(key, stream, length=length, max_bytes=max_bytes)
    except RequestEntityTooLarge:  # werkzeug's own cap on the request stream
        raise payload_too_large(max_bytes) from None
    except ShortStream:
        raise DomainError("invalid_request", "the body is shorter than its Content-Length",
                          400) from None
    except InvalidKey:
        raise not_found("file") from None
    except OSError as exc:
        log.warning("cannot write %s: %s", key, exc)
        raise ServiceUnavailable("the file could not be stored") from None


def send_to_slot(slot: dict, stream: BinaryIO, size: int, max_bytes: int) -> None:
    """Put the bytes where the slot says: straight into FILES.ROOT when the
    slot is this gateway's own /v1/files/ URL (fs backend), else over HTTP."""
    method = str(slot.get("method") or "PUT").upper()
    limit = min(max_bytes, int(slot.get("max_bytes") or max_bytes))
    files = signed_files()
    key = files.key_of_url(slot["url"], method) if files is not None and method == "PUT" else None
    if key is not None:
        store_file(files, key, stream, size, limit)
    else:
        put_file(slot["url"], stream, size, max_bytes=limit, method=method,
                 headers=slot.get("headers") or {})
