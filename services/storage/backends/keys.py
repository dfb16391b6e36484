"""Object key validation shared by every backend."""

from __future__ import annotations

import re

_SEGMENT = r"[A-Za-z0-9_\-][A-Za-z0-9_.\-]*"
_KEY = re.compile(rf"(?:{_SEGMENT}/)*{_SEGMENT}")


class InvalidKey(ValueError):
    """A key that is not a plain relative path (absolute, ``..``, empty segment...)."""


def check_key(key: str) -> str:
    """Return ``key`` when it is a relative path of plain names, else raise :class:`InvalidKey`.

    Every segment is letters, digits, ``_``, ``-`` and ``.`` and does not start
    with a dot: no ``..``, no hidden names (the fs backend's temporary files
    start with a dot), no empty segments, no leading ``/``, no backslashes.
    """
    if not isinstance(key, str) or len(key) > 1024 or not _KEY.fullmatch(key):
        raise InvalidKey(f"invalid object key: {key!r}")
    return key


def check_prefix(prefix: str) -> str:
    """A listing prefix: empty, or a key prefix (it may end with ``/`` or mid-segment)."""
    if prefix:
        check_key(prefix[:-1] if prefix.endswith("/") else prefix)
    return prefix
