"""Signed, expiring URLs for objects of the ``fs`` storage backend.

The storage service signs; the gateway, which serves ``/v1/files/<key>``,
verifies. Both read the shared secret ``STORAGE_URL_SECRET``. A signature
covers the method, the key and the expiry, so a download URL cannot be used
to upload and neither outlives its expiry; an upload URL's signature also
covers its size cap (``max_bytes``), so a slot for a 300 MB video accepts
300 MB and a slot for a user's upload no more than the upload cap; a download
URL's signature covers the object's type (``content_type``), which the
gateway serves it with (the fs backend keeps no type beside the bytes).
"""

from __future__ import annotations

import hashlib
import hmac
import time
from urllib.parse import quote

FILES_PREFIX = "/v1/files/"


def signature(secret: str, method: str, key: str, expires: int, max_bytes: int | None = None,
              content_type: str | None = None) -> str:
    message = f"{method.upper()}\n{key}\n{int(expires)}"
    if max_bytes is not None:
        message += f"\n{int(max_bytes)}"
    if content_type is not None:
        message += f"\ncontent-type:{content_type}"
    return hmac.new(secret.encode(), message.encode(), hashlib.sha256).hexdigest()


def sign_url(base_url: str, secret: str, method: str, key: str, ttl_seconds: int,
             now: float | None = None, max_bytes: int | None = None,
             content_type: str | None = None) -> tuple[str, int]:
    """``(url, expires)`` for ``method`` on ``key`` under ``base_url``, limited
    to ``max_bytes`` and served as ``content_type`` when given."""
    expires = int((now if now is not None else time.time()) + ttl_seconds)
    sig = signature(secret, method, key, expires, max_bytes, content_type)
    cap = "" if max_bytes is None else f"&max_bytes={int(max_bytes)}"
    kind = "" if content_type is None else f"&content_type={quote(content_type, safe='')}"
    return (f"{base_url.rstrip('/')}{FILES_PREFIX}{quote(key)}?expires={expires}{cap}{kind}"
            f"&signature={sig}"), expires


def verify(secret: str, method: str, key: str, expires: str | int | None, sig: str | None,
           now: float | None = None, max_bytes: str | int | None = None,
           content_type: str | None = None) -> bool:
    try:
        expires = int(expires)
        max_bytes = None if max_bytes is None else int(max_bytes)
    except (TypeError, ValueError):
        return False
    if not sig or expires < (now if now is not None else time.time()):
        return False
    return hmac.compare_digest(signature(secret, method, key, expires, max_bytes, content_type),
                               sig)
