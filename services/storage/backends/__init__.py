"""Object store backends, chosen by ``STORAGE.BACKEND`` (``fs`` or ``s3``)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from services.storage.settings import StorageSettings

from .base import Backend, ObjectInfo
from .keys import InvalidKey, check_key
from .sealed import KeyRing, KeyRingError, TamperedObject

__all__ = ["Backend", "InvalidKey", "KeyRing", "KeyRingError", "ObjectInfo", "TamperedObject",
           "check_key", "make_backend"]


def make_backend(settings: StorageSettings | Mapping[str, Any]) -> Backend:
    """The backend the settings (or a service config with a ``STORAGE`` section) name."""
    if not isinstance(settings, StorageSettings):
        settings = StorageSettings.from_config(settings)
    if settings.backend == "fs":
        from .fs import FsBackend

        return FsBackend(settings.fs_root, settings.public_base_url, settings.url_secret,
                         keys=KeyRing.parse(settings.encryption_keys))
    if settings.backend == "s3":
        from .s3 import S3Backend

        return S3Backend(
            settings.s3_endpoint, settings.s3_access_key, settings.s3_secret_key, settings.s3_bucket,
            region=settings.s3_region, secure=settings.s3_secure,
            public_endpoint=settings.s3_public_endpoint,
            sse=settings.s3_sse, kms_key_id=settings.s3_kms_key_id,
        )
    raise ValueError(f"unknown STORAGE.BACKEND {settings.backend!r} (expected fs or s3)")
