"""Re-authentication of a signed-in user before an irreversible act (an
erasure): the account's password, and the current TOTP code when two-factor
sign-in is on (always for an admin), checked like a login.

A wrong password or code counts as a failed login against the account
(:mod:`lockout`), so a stolen session cannot guess the password here faster
than at the login; while the account is locked every attempt is refused with
429. Every refusal is 401 ``reauthentication_required`` (``details.reason``:
``password`` or ``totp``): the caller asks the user again.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy.orm import Session

from services.auth import lockout, passwords, totp
from services.auth.errors import RecordedFailure
from services.auth.lookup import get_user
from services.auth.models import User
from services.auth.settings import AuthSettings
from services.common.errors import DomainError


def reauthentication_required(reason: str) -> DomainError:
    message = ("give the account's password" if reason == "password"
               else "give the current one-time code of the authenticator app")
    return DomainError("reauthentication_required", f"confirm it is you: {message}", 401,
                       {"reason": reason})


def reauthenticate(db: Session, settings: AuthSettings, user_id, password: str,
                   totp_code: str | None, now: datetime) -> User:
    """The user when ``password`` (and ``totp_code`` where needed) are right.
    Wrong ones are recorded as failed logins and raised as RecordedFailure
    (the caller commits, then raises the error inside)."""
    user = get_user(db, user_id)
    subjects = lockout.subjects_for(settings, user.email, None)
    lockout.ensure_not_locked(db, subjects, now)
    if not passwords.verify_password(user.password_hash, password):
        lockout.record_failure(db, settings, subjects, now)
        raise RecordedFailure(reauthentication_required("password"))
    if user.totp_enabled or user.is_admin:
        if not totp_code:
            raise reauthentication_required("totp")
        step = (totp.matching_step(user.totp_secret, totp_code, now, user.totp_last_step)
                if user.totp_secret else None)
        if step is None:
            lockout.record_failure(db, settings, subjects, now)
            raise RecordedFailure(reauthentication_required("totp"))
        user.totp_last_step = step
    lockout.clear_failures(db, subjects[0])
    return user
