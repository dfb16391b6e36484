"""Idempotency-Key: what identifies a request body.

A retried request with the same key must carry the same body; a different body
under a used key is the caller's mistake (409/422, per service). The body is
compared by the SHA-256 of its canonical JSON: keys sorted, no white space,
values JSON cannot hold (UUIDs, datetimes) as their ``str()``.
"""

from __future__ import annotations

import hashlib
import json


def request_hash(payload: dict) -> str:
    canonical = json.dumps(payload, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()
