"""An in-memory backend with controllable times and failures, an in-memory
SQLite session, and an event recorder, for the storage domain unit tests."""

from __future__ import annotations

import io
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime

from services.storage.backends.base import ObjectInfo


class StoreDown(ConnectionError):
    """What the fake store raises once it is told to fail."""


class MemoryBackend:
    name = "memory"

    def __init__(self, now: datetime | None = None):
        self.now = now or datetime(2026, 1, 1, tzinfo=UTC)  # the time new objects get
        self.objects: dict[str, tuple[bytes, str, datetime]] = {}
        self.refuse: set[str] = set()  # keys delete_many reports as not deleted
        self.raise_after: int | None = None  # raise after this many more deletions
        self.deleted: list[str] = []
        self.safety_expiry_days: int | None = None

    def add(self, key: str, data: bytes = b"x", last_modified: datetime | None = None,
            content_type: str = "application/octet-stream") -> None:
        self.objects[key] = (data, content_type, last_modified or self.now)

    def ensure_ready(self, safety_expiry_days: int) -> None:
        self.safety_expiry_days = safety_expiry_days

    def put(self, key: str, data, length: int, content_type: str) -> None:
        self.add(key, data.read(length), content_type=content_type)

    def copy(self, source: str, target: str) -> None:
        if source not in self.objects:
            raise KeyError(source)
        data, content_type, _ = self.objects[source]
        self.add(target, data, content_type=content_type)

    def open(self, key: str):
        if key not in self.objects:
            raise KeyError(key)
        return io.BytesIO(self.objects[key][0])

    def stat(self, key: str) -> ObjectInfo | None:
        if key not in self.objects:
            return None
        data, _, modified = self.objects[key]
        return ObjectInfo(key, len(data), modified)

    def delete_many(self, keys: Iterable[str]) -> list[str]:
        failed = []
        for key in keys:
            if key in self.refuse:
                failed.append(key)
                continue
            if self.raise_after is not None:
                if self.raise_after <= 0:
                    raise StoreDown("the store went away")
                self.raise_after -= 1
            if self.objects.pop(key, None) is not None:
                self.deleted.append(key)
        return failed

    def list(self, prefix: str) -> Iterator[ObjectInfo]:
        for key in sorted(self.objects):
            if key.startswith(prefix):
                yield self.stat(key)

    def presigned_get(self, key: str, ttl_seconds: int, internal: bool = False,
                      content_type: str | None = None) -> str:
        return (f"memory://{key}?method=GET&ttl={ttl_seconds}" + ("&internal" if internal else "")
                + (f"&type={content_type}" if content_type else ""))

    def presigned_put(self, key: str, ttl_seconds: int, content_type: str,
                      max_bytes: int, internal: bool = False) -> tuple[str, dict[str, str]]:
        return (f"memory://{key}?method=PUT&ttl={ttl_seconds}&max_bytes={max_bytes}",
                {"Content-Type": content_type})
