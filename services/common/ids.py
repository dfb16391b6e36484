"""Identifiers and clocks: time-ordered UUIDs (version 7), UTC times, whole
calendar years (:func:`add_years`), the keyed pseudonym that stands for an
erased user (:func:`pseudonym`), and the two ways a service reads an id it is
given (both through :func:`parse_uuid`):

- :func:`trusted_id`: an id a trusted caller (the gateway, another service, the
  ops CLI) names, such as the signed-in user's. A malformed one is the caller's
  bug: 400 ``invalid_request`` naming the field.
- :func:`client_id`: an id an API client put in a path or a body, such as a job
  or object id. A malformed one names nothing: 404 ``not_found``, exactly as a
  well-formed id of something that does not exist (or is not the caller's).
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import time
import uuid
from datetime import UTC, datetime, timedelta

from services.common.errors import invalid_request, not_found


def new_id() -> uuid.UUID:
    """A UUIDv7 (RFC 9562): 48-bit millisecond timestamp, then randomness.

    Ids sort by creation time, so "newest first" pagination can use them.
    """
    ms = time.time_ns() // 1_000_000
    rand = int.from_bytes(os.urandom(10), "big")
    value = (ms & ((1 << 48) - 1)) << 80
    value |= 0x7 << 76  # version
    value |= ((rand >> 62) & 0xFFF) << 64  # rand_a (12 bits)
    value |= 0b10 << 62  # variant
    value |= rand & ((1 << 62) - 1)  # rand_b
    return uuid.UUID(int=value)


def utcnow() -> datetime:
    return datetime.now(UTC)


def isoformat(dt: datetime | None) -> str | None:
    """ISO-8601 in UTC with a ``Z`` suffix, as docs/api.md wants."""
    if dt is None:
        return None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return dt.astimezone(UTC).isoformat().replace("+00:00", "Z")


def add_years(when: datetime, years: int) -> datetime:
    """``when`` moved by whole calendar years (29 February becomes the 28th)."""
    try:
        return when.replace(year=when.year + years)
    except ValueError:  # 29 February
        return when.replace(year=when.year + years, day=28)


PSEUDONYM_PREFIX = "psn:"


def pseudonym(key: bytes, user_id) -> str:
    """``psn:`` + HMAC-SHA256(``key``, user id): stands for an erased user in
    the records kept about them; it cannot be turned back into the id, but
    whoever has the key can tell which records were the user's."""
    return PSEUDONYM_PREFIX + hmac.new(key, str(user_id).encode(), hashlib.sha256).hexdigest()


def parse_uuid(value) -> uuid.UUID | None:
    """``value`` as a UUID, or None when it is not one (nor a string of one).

    For ids found in data from outside that may or may not be ours (a Stripe
    event's metadata, an object store key); ids a caller names go through
    :func:`trusted_id` or :func:`client_id`."""
    if isinstance(value, uuid.UUID):
        return value
    try:
        return uuid.UUID(str(value))
    except ValueError:
        return None


def trusted_id(value, name: str = "user_id") -> uuid.UUID:
    """The UUID a trusted caller names in ``name``; 400 ``invalid_request`` if malformed."""
    parsed = parse_uuid(value)
    if parsed is None:
        raise invalid_request(f"{name} is not a valid id", fields={name: ["Not a valid UUID."]})
    return parsed


def client_id(value, what: str = "resource") -> uuid.UUID:
    """The UUID of a ``what`` a client names; 404 ``not_found`` if malformed."""
    parsed = parse_uuid(value)
    if parsed is None:
        raise not_found(what)
    return parsed


_AGE = re.compile(r"^\s*(\d+)\s*([smhdw])\s*$")
_AGE_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def parse_since(value: str, now: datetime | None = None) -> datetime:
    """``30m``, ``2h``, ``3d`` (s, m, h, d, w) before ``now``, or an ISO-8601
    time (UTC when it has no offset); ValueError for anything else. The
    operators' ``since`` (``darkroom-ops jobs list --since``, ``GET /v1/admin/jobs?since=``)."""
    now = now or datetime.now(UTC)
    age = _AGE.match(value)
    if age:
        return now - timedelta(**{_AGE_UNITS[age.group(2)]: int(age.group(1))})
    when = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    return when if when.tzinfo is not None else when.replace(tzinfo=UTC)
