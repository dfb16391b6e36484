"""What operators do to accounts (``darkroom-ops users`` and ``keys``): list
and show accounts with their state, disable and enable them, revoke API keys
by id, by prefix or all of an account's.

A disabled account cannot sign in (403 ``account_disabled``, told only after
the right password, so the refusal names no account to a guesser) and every
session and API key it had is revoked when it is disabled; enabling it again
gives back the sign-in, not the credentials. Erasing an account is not here:
it is the privacy service's erasure (``darkroom-ops users delete``).

Who is an operator of the HTTP API (``/v1/admin``, docs/api.md "Operators"):
:func:`require_operator`, the one home of that rule; every service's
``admin_*`` RPCs ask it through ``auth.require_operator``
(services/common/operators.py) before they act.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from services.auth import keys, sessions
from services.auth.lookup import find_user_by_email, get_user
from services.auth.models import ApiKey, User, UserSession
from services.auth.tokens import API_KEY_PREFIX, api_key_prefix
from services.common.contracts.auth import normalise_email
from services.common.errors import admin_required, conflict, invalid_request, not_found
from services.common.ids import parse_uuid
from services.common.pagination import encode_cursor, paginate

SCAN_PAGE = 200  # accounts decrypted at a time by an address filter


def require_operator(db: Session, user_id) -> User:
    """The account of ``user_id`` when it may operate: it exists, is enabled
    and is an administrator; 403 ``admin_required`` otherwise (the same
    answer for an unknown id: nothing is told about other accounts)."""
    parsed = parse_uuid(user_id)
    user = db.get(User, parsed) if parsed is not None else None
    if user is None or not user.is_admin or user.disabled_at is not None:
        raise admin_required()
    return user


def check_not_self(actor: User, user: User, disabled: bool) -> None:
    """An operator does not disable their own account (409
    ``cannot_disable_self``): it would lock them out mid-action."""
    if disabled and actor.id == user.id:
        raise conflict("you cannot disable your own account", code="cannot_disable_self")


def find(db: Session, ref: str) -> User:
    """The account an operator names by id or address; 404 ``not_found``."""
    if not isinstance(ref, str) or not ref.strip():
        raise invalid_request("name a user by id or email address")
    ref = ref.strip()
    if parse_uuid(ref) is not None:
        return get_user(db, ref)
    user = find_user_by_email(db, normalise_email(ref))
    if user is None:
        raise not_found("user")
    return user


def view(db: Session, user: User, now: datetime) -> dict:
    """The account with its state and how many live credentials it holds."""
    live_sessions = db.scalar(select(func.count()).select_from(UserSession).where(
        UserSession.user_id == user.id, UserSession.revoked_at.is_(None),
        UserSession.expires_at > now))
    live_keys = db.scalar(select(func.count()).select_from(ApiKey).where(
        ApiKey.user_id == user.id, ApiKey.revoked_at.is_(None)))
    return {**{column: getattr(user, column) for column in (
        "id", "email", "email_verified", "display_name", "bio", "avatar_image_id", "created_at",
        "updated_at", "plan", "processing_restricted", "totp_enabled", "is_admin",
        "disabled_at")}, "sessions_active": live_sessions, "api_keys_active": live_keys}


def list_users(db: Session, email: str | None, limit: int, cursor: str | None
               ) -> tuple[list[User], str | None]:
    """A page of accounts, newest first; ``email``: only addresses containing it.
    Addresses are encrypted, so the filter decrypts them page by page of the
    accounts from ``cursor`` on (an operator's command, not a hot path)."""
    stmt = select(User)
    if not email:
        return paginate(db, stmt, User.created_at, User.id, limit, cursor)
    needle = email.strip().lower()
    found: list[User] = []
    while len(found) <= limit:
        rows, cursor = paginate(db, stmt, User.created_at, User.id, SCAN_PAGE, cursor)
        found += [user for user in rows if needle in user.email]
        if cursor is None:
            break
    if len(found) <= limit:
        return found, None
    last = found[limit - 1]
    return found[:limit], encode_cursor(last.created_at, last.id)


def set_disabled(db: Session, user: User, disabled: bool, now: datetime) -> dict:
    """Disable (every session and key revoked) or enable an account; doing it
    twice changes nothing the second time."""
    revoked = {"sessions_revoked": 0, "api_keys_revoked": 0}
    if disabled:
        revoked = {"sessions_revoked": sessions.revoke_all(db, user, now),
                   "api_keys_revoked": keys.revoke_all(db, user, now)}
        if user.disabled_at is None:
            user.disabled_at = now
    else:
        user.disabled_at = None
    user.updated_at = now
    return {"user_id": user.id, "email": user.email, "disabled": disabled, **revoked}


def revoke_keys(db: Session, selector: dict, now: datetime) -> list[ApiKey]:
    """Revoke live API keys: the one with ``key_id``, the one whose prefix is
    ``prefix`` (``drk_<prefix>``, or a whole key, accepted), or every key of
    ``user``. Exactly one selector (400 ``invalid_request``); 404 when no
    live key matches an id or prefix; 409 ``ambiguous_prefix`` when several do."""
    given = [name for name in ("key_id", "prefix", "user") if selector.get(name)]
    if len(given) != 1:
        raise invalid_request("name exactly one of a key id, a key prefix or a user")
    live = select(ApiKey).where(ApiKey.revoked_at.is_(None))
    if given == ["user"]:
        found = list(db.scalars(live.where(ApiKey.user_id == find(db, selector["user"]).id)))
    else:
        if given == ["key_id"]:
            found = list(db.scalars(live.where(ApiKey.id == selector["key_id"])))
        else:
            prefix = selector["prefix"].strip()
            prefix = api_key_prefix(prefix) or prefix.removeprefix(API_KEY_PREFIX)
            found = list(db.scalars(live.where(ApiKey.prefix == prefix)))
            if len(found) > 1:
                raise conflict(f"{len(found)} live keys have the prefix {prefix}; give the id",
                               code="ambiguous_prefix", key_ids=[str(k.id) for k in found])
        if not found:
            raise not_found("API key")
    for key in found:
        key.revoked_at = now
    return found
