"""Object key validation shared by every backend, and the keys of public copies."""

from __future__ import annotations

import re
import secrets

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


# ------------------------------------------------------------------ public copies

PUBLIC_PREFIX = "public/"
PUBLIC_ID = re.compile(r"[A-Za-z0-9_-]{32}")


def new_public_id() -> str:
    """32 URL-safe characters from 24 random bytes: unrelated to the owner,
    the object id or any other public id."""
    return secrets.token_urlsafe(24)


def public_key(public_id: str) -> str:
    """Where a public object's copy lives: ``public/<public_id>``."""
    return f"{PUBLIC_PREFIX}{public_id}"


def stored_keys(obj) -> list[str]:
    """Every key holding an object's bytes: its own, and its public copy."""
    return [obj.key] + ([public_key(obj.public_id)] if obj.public_id else [])
