"""Finding rows by the ids and addresses callers pass in."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from services.auth.models import User
from services.common.errors import forbidden, not_found
from services.common.ids import trusted_id


def get_user(db: Session, user_id) -> User:
    """The user a trusted caller names (400 ``invalid_request`` for a malformed
    id), or 404 ``not_found``."""
    user = db.get(User, trusted_id(user_id))
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
