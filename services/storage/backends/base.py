"""The one interface every object store backend implements.

Keys are relative paths such as ``objects/<owner>/<object id>`` or
``staging/<upload id>``; backends never interpret them beyond that.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import BinaryIO, Protocol

from services.common.errors import UNAVAILABLE_RETRY_AFTER_SECONDS, DomainError


def storage_unavailable(what: str) -> DomainError:
    """503 ``storage_unavailable``: the object store cannot serve now (down,
    throttling, answering 5xx); the caller tries again after ``retry_after``
    seconds (a job's storage steps do: services/generation/runner.py)."""
    return DomainError("storage_unavailable", f"the object store could not {what}; try again",
                       503, {"retry_after": UNAVAILABLE_RETRY_AFTER_SECONDS})


@dataclass(frozen=True)
class ObjectInfo:
    key: str
    size: int
    last_modified: datetime  # tz-aware UTC


class Backend(Protocol):
    name: str

    def ensure_ready(self, safety_expiry_days: int) -> None:
        """Create the bucket/directory if missing; for s3 also set the bucket
        lifecycle rule expiring objects after ``safety_expiry_days`` (a safety
        net, never the retention mechanism)."""

    def put(self, key: str, data: BinaryIO, length: int, content_type: str) -> None:
        """Store ``length`` bytes from ``data`` (multipart above the part size)."""

    def open(self, key: str) -> BinaryIO:
        """A readable stream of the object (close it); KeyError when absent."""

    def copy(self, source: str, target: str) -> None:
        """Store a copy of ``source`` as ``target`` (server-side where the store
        can); KeyError when ``source`` is absent."""

    def stat(self, key: str) -> ObjectInfo | None:
        """Size and time of the object, or None when absent."""

    def delete_many(self, keys: Iterable[str]) -> list[str]:
        """Delete every key (bulk where the store allows); absent keys are not
        errors. Returns the keys that could NOT be deleted."""

    def list(self, prefix: str) -> Iterator[ObjectInfo]:
        """Every object whose key starts with ``prefix``."""

    def presigned_get(self, key: str, ttl_seconds: int, internal: bool = False,
                      content_type: str | None = None) -> str:
        """A URL anyone holding it may GET until it expires; ``internal`` for
        our own services (signed for the store's address on the service
        network rather than the public one). The bytes are served as
        ``content_type`` (S3 has the type stored with the object)."""

    def presigned_put(self, key: str, ttl_seconds: int, content_type: str,
                      max_bytes: int, internal: bool = False) -> tuple[str, dict[str, str]]:
        """A URL (and the headers to send with it) to PUT the object until it
        expires. The fs backend's URL refuses more than ``max_bytes``; an S3
        presigned PUT cannot limit the size (the commit checks it)."""
