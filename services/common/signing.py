"""Signed, expiring URLs for objects of the ``fs`` storage backend.

The storage service signs; the gateway, which serves ``/v1/files/<key>``,
verifies. Both read the shared secret ``STORAGE_URL_SECRET``. A signature
covers the method, the key and the expiry, so a download URL cannot be used
to upload and neither outlives its expiry.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from urllib.parse import quote

FILES_PREFIX = "/v1/files/"


def signature(secret: str, method: str, key: str, expires: int) -> str:
    message = f"{method.upper()}\n{key}\n{int(expires)}".encode()
    return hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()


def sign_url(base_url: str, secret: str, method: str, key: str, ttl_seconds: int,
             now: float | None = None) -> tuple[str, int]:
    """``(url, expires)`` for ``method`` on ``key`` under ``base_url``."""
    expires = int((now if now is not None else time.time()) + ttl_seconds)
    sig = signature(secret, method, key, expires)
    return f"{base_url.rstrip('/')}{FILES_PREFIX}{quote(key)}?expires={expires}&signature={sig}", expires


def verify(secret: str, method: str, key: str, expires: str | int | None, sig: str | None,
           now: float | None = None) -> bool:
    try:
        expires = int(expires)
    except (TypeError, ValueError):
        return False
    if not sig or expires < (now if now is not None else time.time()):
        return False
    return hmac.compare_digest(signature(secret, method, key, expires), sig)
