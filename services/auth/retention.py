"""Retention of the auth database: what is dead is deleted, on a timer.

Expired or revoked sessions, verification codes, reset tokens and passkey
challenges a day past
their end, and throttles (attempts counted against a login or an address)
whose window and lock have both run out: such a row counts nothing any more;
OpenID sign-in flows and one-time codes once expired (minutes). Accounts and API keys (revoked ones included, for the audit of who
could call the API when) are kept until the account is erased.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import and_, delete, or_
from sqlalchemy.orm import Session

from services.auth.models import (
    EmailVerification,
    OidcCode,
    OidcFlow,
    PasskeyChallenge,
    PasswordReset,
    Throttle,
    UserSession,
)
from services.auth.settings import AuthSettings

GRACE = timedelta(days=1)


def purge_expired(db: Session, settings: AuthSettings, now: datetime) -> dict[str, int]:
    """Delete what has outlived its use; returns the rows deleted per table."""
    window = max(settings.login_failure_window, settings.verification_address_window,
                 settings.resend_min_interval)
    statements = {
        "sessions": delete(UserSession).where(
            or_(UserSession.expires_at < now, UserSession.revoked_at.is_not(None))
        ),
        "email_verifications": delete(EmailVerification).where(
            EmailVerification.expires_at < now - GRACE
        ),
        "password_resets": delete(PasswordReset).where(PasswordReset.expires_at < now - GRACE),
        # OpenID sign-ins never finished, and one-time codes never exchanged
        "oidc_flows": delete(OidcFlow).where(OidcFlow.expires_at <= now),
        "oidc_codes": delete(OidcCode).where(OidcCode.expires_at <= now),
        "passkey_challenges": delete(PasskeyChallenge).where(
            PasskeyChallenge.expires_at < now - GRACE),
        "throttles": delete(Throttle).where(and_(
            Throttle.window_started_at < now - window,
            or_(Throttle.locked_until.is_(None), Throttle.locked_until < now),
        )),
    }
    return {table: db.execute(stmt).rowcount for table, stmt in statements.items()}
