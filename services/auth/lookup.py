"""Finding rows by the ids and addresses callers pass in."""

from __future__ import annotations

import uuid

from sqlalchemy import select
from sqlalchemy.orm import Session

from services.auth.models import User
from services.common.errors import forbidden, not_found


def parse_id(value) -> uuid.UUID | None:
    """A UUID from a caller, or None when it is not one (callers answer 404)."""
    if isinstance(value, uuid.UUID):
        return value
    try:
        return uuid.UUID(str(value))
    except (TypeError, ValueError, AttributeError):
        return None


def get_user(db: Session, user_id) -> User:
    """The user, or 404 ``not_found``."""
    uid = parse_id(user_id)
    user = db.get(User, uid) if uid is not None else None
    if user is None:
        raise not_found("user")
    return user


def find_user_by_email(db: Session, email: str) -> User | None:
    """``email`` must already be normalised (the request schemas do it)."""
    return db.scalar(select(User).where(User.email == email))


def ensure_verified(user: User) -> None:
    """403 ``email_unverified`` until the account's address is verified."""
    if not user.email_verified:
        raise forbidden("verify your email address first", code="email_unverified")
