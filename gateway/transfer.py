"""Streaming a file to an upload slot's URL (a presigned S3 PUT, or the
``/v1/files/`` URL of a gateway serving the fs backend).

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
from typing import BinaryIO
from urllib.parse import urlsplit

import requests

from gateway.rpc import ServiceUnavailable
from services.common.errors import payload_too_large

log = logging.getLogger("gateway.transfer")

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
