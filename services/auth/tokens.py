"""Secrets handed to clients and the forms they are stored in.

- session tokens ``drs_<random>`` and API keys ``drk_<prefix>_<random>``: stored
  as SHA-256 (they have 256 bits of entropy, a slow hash adds nothing);
- password-reset tokens: stored as SHA-256;
- 6-digit verification codes and other low-entropy values (login networks,
  lockout subjects): stored as HMAC-SHA256 keyed with ``AUTH.SECRET_KEY``, so a
  copy of the database alone cannot brute-force them.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import string

SESSION_PREFIX = "drs_"
API_KEY_PREFIX = "drk_"
API_KEY_PREFIX_LENGTH = 8
_PREFIX_ALPHABET = string.ascii_lowercase + string.digits
_API_KEY_RE = re.compile(r"^drk_([a-z0-9]{8})_[A-Za-z0-9_-]{20,}$")


def sha256_hex(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


def keyed_digest(secret_key: bytes, purpose: str, *parts: str) -> str:
    """HMAC-SHA256 of ``parts`` under ``purpose`` (domain separation: a digest
    made for one purpose never matches one made for another)."""
    message = "\x1f".join((purpose, *parts)).encode()
    return hmac.new(secret_key, message, hashlib.sha256).hexdigest()


def digests_equal(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode(), b.encode())


def new_session_token() -> str:
    return SESSION_PREFIX + secrets.token_urlsafe(32)


def new_api_key() -> tuple[str, str]:
    """``(prefix, key)``; the prefix is stored in clear to tell keys apart in lists."""
    prefix = "".join(secrets.choice(_PREFIX_ALPHABET) for _ in range(API_KEY_PREFIX_LENGTH))
    return prefix, f"{API_KEY_PREFIX}{prefix}_{secrets.token_urlsafe(32)}"


def is_api_key(credential: str) -> bool:
    """Whether a bearer credential is an API key (``drk_``) rather than a
    session token (``drs_``): OpenAI-style clients send their key as
    ``Authorization: Bearer <key>``, so a bearer value is told apart by its
    prefix, here and nowhere else."""
    return credential.startswith(API_KEY_PREFIX)


def api_key_prefix(key: str) -> str | None:
    """The prefix of a well-formed API key, else None."""
    match = _API_KEY_RE.match(key)
    return match.group(1) if match else None


def new_reset_token() -> str:
    return secrets.token_urlsafe(32)


def new_verification_code() -> str:
    return f"{secrets.randbelow(1_000_000):06d}"


def code_digest(secret_key: bytes, verification_id: str, code: str) -> str:
    """The stored form of a verification code, bound to its verification row."""
    return keyed_digest(secret_key, "email-code", str(verification_id), code)
