"""Finding rows by the ids and addresses callers pass in."""

from __future__ import annotations

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from services.auth import passwords
from services.auth.models import Identity, Passkey, User, UserSession
from services.common.errors import forbidden, not_found
from services.common.fieldcrypt import email_index
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
    return db.scalar(select(User).where(User.email_index == email_index(email)))


def other_ways_to_sign_in(db: Session, user: User, *, identity=None, passkey=None) -> int:
    """How many ways to sign in ``user`` keeps besides the ``identity`` or
    ``passkey`` about to be removed: its password, linked provider accounts,
    passkeys. Zero: removing it would lock the account out for good."""

    def count(model, leaving) -> int:
        stmt = select(func.count()).select_from(model).where(model.user_id == user.id)
        if leaving is not None:
            stmt = stmt.where(model.id != leaving.id)
        return db.scalar(stmt)

    return (int(passwords.has_password(user.password_hash)) + count(Identity, identity)
            + count(Passkey, passkey))


def ensure_verified(user: User) -> None:
    """403 ``email_unverified`` until the account's address is verified."""
    if not user.email_verified:
        raise forbidden("verify your email address first", code="email_unverified")


def users_active_between(db: Session, window_from, window_to) -> dict[str, int]:
    """Accounts created, or signed in (a session started), within
    ``[window_from, window_to)``: ``{user_id: sessions started + 1 if created}``
    (a breach's affected users; services/privacy/breaches.py)."""
    found: dict[str, int] = {}
    for (user_id,) in db.execute(select(User.id).where(User.created_at >= window_from,
                                                       User.created_at < window_to)):
        found[str(user_id)] = 1
    for user_id, count in db.execute(
            select(UserSession.user_id, func.count())
            .where(UserSession.created_at >= window_from, UserSession.created_at < window_to)
            .group_by(UserSession.user_id)):
        found[str(user_id)] = found.get(str(user_id), 0) + count
    return found
