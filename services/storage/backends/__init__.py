"""Object store backends, chosen by ``STORAGE.BACKEND`` (``fs`` or ``s3``)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from services.storage.settings import StorageSettings

from .base import Backend, ObjectInfo
from .keys import InvalidKey, check_key

__all__ = ["Backend", "InvalidKey", "ObjectInfo", "check_key", "make_backend"]


def make_backend(settings: StorageSettings | Mapping[str, Any]) -> Backend:
    """The backend the settings (or a service config with a ``STORAGE`` section) name."""
    if not isinstance(settings, StorageSettings):
        settings = StorageSettings.from_config(settings)
    if settings.backend == "fs":
        from .fs import FsBackend

        return FsBackend(settings.fs_root, settings.public_base_url, settings.url_secret)
    if settings.backend == "s3":
        from .s3 import S3Backend

        return S3Backend(
            settings.s3_endpoint, settings.s3_access_key, settings.s3_secret_key, settings.s3_bucket,
            region=settings.s3_region, secure=settings.s3_secure,
            public_endpoint=settings.s3_public_endpoint,
        )
    raise ValueError(f"unknown STORAGE.BACKEND {settings.backend!r} (expected fs or s3)")
