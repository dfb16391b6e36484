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

from services.auth import lockout, passwords, sessions, totp
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


def begin(db: Session, settings: AuthSettings, user_id, now: datetime):
    """Take one attempt from the account's login budget before anything is
    checked (429 while locked or while the budget is in use); the caller
    commits, so parallel guesses are counted before any is checked. Returns
    ``(user, subjects)`` for :func:`reauthenticate`."""
    user = get_user(db, user_id)
    subjects = lockout.subjects_for(settings, user.email, None)
    lockout.take_attempt(db, subjects, now)
    return user, subjects


def reauthenticate(db: Session, user: User, subjects: list[lockout.Subject], password: str,
                   totp_code: str | None, now: datetime) -> User:
    """The user when ``password`` (and ``totp_code`` where needed) are right
    (after :func:`begin`). Wrong ones are recorded as failed logins and raised
    as RecordedFailure (the caller commits, then raises the error inside)."""
    if not passwords.verify_password(user.password_hash, password):
        lockout.record_failure(db, subjects, now)
        raise RecordedFailure(reauthentication_required("password"))
    if user.totp_enabled or user.is_admin:
        if not totp_code:
            lockout.give_back(db, subjects)  # not a guess: the code is missing
            raise RecordedFailure(reauthentication_required("totp"))
        step = (totp.matching_step(user.totp_secret, totp_code, now, user.totp_last_step)
                if user.totp_secret else None)
        if step is None or not sessions.claim_totp_step(db, user, step):
            lockout.record_failure(db, subjects, now)
            raise RecordedFailure(reauthentication_required("totp"))
    lockout.succeeded(db, subjects)
    return user
