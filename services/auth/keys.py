"""API keys: ``drk_<prefix>_<secret>``, shown once, stored as SHA-256."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from services.auth.lookup import ensure_verified
from services.auth.models import ApiKey, User
from services.auth.tokens import new_api_key, sha256_hex
from services.common.errors import conflict, forbidden, not_found, unauthenticated
from services.common.ids import client_id
from services.common.pagination import paginate

MAX_ACTIVE_KEYS = 20
DEFAULT_KEY_NAME = "default"


def ensure_allowed(user: User) -> None:
    """Only a verified account that is not an administrator holds API keys:
    403 ``email_unverified`` before the address is verified (an address
    squatted before its owner came must not leave a working key behind), 403
    ``admin_api_keys_refused`` for an administrator (who signs in with a
    session and a one-time code only)."""
    if user.is_admin:
        raise forbidden("administrators sign in with a session and a one-time code; "
                        "they hold no API keys", code="admin_api_keys_refused")
    ensure_verified(user)


def ensure_usable(user: User) -> None:
    """A key of an account that may not hold one (an administrator's, or one
    made before its address was verified) authenticates nobody: 401."""
    if user.is_admin or not user.email_verified:
        raise unauthenticated("this API key cannot be used: administrators sign in with a "
                              "session and a one-time code, and keys need a verified address")


def create(db: Session, user: User, name: str, now: datetime) -> dict:
    """A new key for ``user`` (see :func:`ensure_allowed`); the returned dict
    (NewApiKey) is the only place the secret ever appears. 409
    ``too_many_keys`` past MAX_ACTIVE_KEYS."""
    ensure_allowed(user)
    active = db.scalar(
        select(func.count()).select_from(ApiKey).where(
            ApiKey.user_id == user.id, ApiKey.revoked_at.is_(None)
        )
    )
    if active >= MAX_ACTIVE_KEYS:
        raise conflict(
            f"at most {MAX_ACTIVE_KEYS} active API keys; revoke one first",
            code="too_many_keys",
            limit=MAX_ACTIVE_KEYS,
        )
    prefix, secret = new_api_key()
    key = ApiKey(
        user_id=user.id, name=name, prefix=prefix, key_hash=sha256_hex(secret), created_at=now
    )
    db.add(key)
    db.flush()
    return {**view(key), "key": secret}


def view(key: ApiKey) -> dict:
    return {
        "id": key.id,
        "name": key.name,
        "prefix": key.prefix,
        "created_at": key.created_at,
        "last_used_at": key.last_used_at,
    }


def list_active(db: Session, user: User, limit: int, cursor: str | None) -> tuple[list[ApiKey], str | None]:
    """A page of the user's unrevoked keys, newest first, and the next cursor."""
    stmt = select(ApiKey).where(ApiKey.user_id == user.id, ApiKey.revoked_at.is_(None))
    return paginate(db, stmt, ApiKey.created_at, ApiKey.id, limit, cursor)


def revoke(db: Session, user: User, key_id, now: datetime) -> None:
    """404 for an id that is not one of the user's active keys."""
    key = db.get(ApiKey, client_id(key_id, "API key"))
    if key is None or key.user_id != user.id or key.revoked_at is not None:
        raise not_found("API key")
    key.revoked_at = now


def find_active(db: Session, secret: str) -> ApiKey | None:
    return db.scalar(
        select(ApiKey).where(ApiKey.key_hash == sha256_hex(secret), ApiKey.revoked_at.is_(None))
    )


def revoke_all(db: Session, user: User, now: datetime) -> int:
    """Revoke every live key of ``user``; returns how many."""
    return db.execute(
        update(ApiKey).where(ApiKey.user_id == user.id, ApiKey.revoked_at.is_(None))
        .values(revoked_at=now).execution_options(synchronize_session=False)
    ).rowcount or 0
