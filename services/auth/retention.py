"""Retention of the auth database: what is dead is deleted, on a timer.

Expired or revoked sessions, verification codes and reset tokens a day past
their end, login failures outside the counting window and lockouts that have
ended. Accounts and API keys (revoked ones included, for the audit of who
could call the API when) are kept until the account is erased.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import delete, or_
from sqlalchemy.orm import Session

from services.auth.models import (
    EmailVerification,
    LoginFailure,
    LoginLockout,
    PasswordReset,
    UserSession,
)
from services.auth.settings import AuthSettings

GRACE = timedelta(days=1)


def purge_expired(db: Session, settings: AuthSettings, now: datetime) -> dict[str, int]:
    """Delete what has outlived its use; returns the rows deleted per table."""
    window = settings.login_failure_window
    statements = {
        "sessions": delete(UserSession).where(
            or_(UserSession.expires_at < now, UserSession.revoked_at.is_not(None))
        ),
        "email_verifications": delete(EmailVerification).where(
            EmailVerification.expires_at < now - GRACE
        ),
        "password_resets": delete(PasswordReset).where(PasswordReset.expires_at < now - GRACE),
        "login_failures": delete(LoginFailure).where(LoginFailure.created_at < now - window),
        "login_lockouts": delete(LoginLockout).where(LoginLockout.locked_until < now),
    }
    return {table: db.execute(stmt).rowcount for table, stmt in statements.items()}
