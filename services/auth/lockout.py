"""Login throttling: failures counted per account and per client address.

Every failed login is recorded against two subjects: the normalised email
(whether or not an account has it, so probing unknown addresses is throttled
too) and the client's address. When a subject reaches its maximum number of
failures within the window, it is locked for the lockout period and its
failures are forgotten (after the lock it starts afresh). While locked, every
login for it is refused with 429, even with the right password. Subjects are
stored as HMACs: the table never holds an address or an unknown email in clear.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from services.auth.models import LoginFailure, LoginLockout
from services.auth.settings import AuthSettings
from services.auth.tokens import keyed_digest
from services.common.errors import rate_limited
from services.common.networks import parse_address


@dataclass(frozen=True)
class Subject:
    key: str
    max_failures: int


def subjects_for(settings: AuthSettings, email: str, client_ip: str | None) -> list[Subject]:
    """The account subject, then the address subject when the address is known."""
    subjects = [
        Subject(
            keyed_digest(settings.secret_key, "login-account", email),
            settings.login_max_failures_per_account,
        )
    ]
    address = parse_address(client_ip)
    if address is not None:
        subjects.append(
            Subject(
                keyed_digest(settings.secret_key, "login-address", str(address)),
                settings.login_max_failures_per_address,
            )
        )
    return subjects


def retry_after_seconds(locked_until: datetime, now: datetime) -> int:
    """Whole seconds until ``locked_until`` (at least 1 while still locked)."""
    return max(1, math.ceil((locked_until - now).total_seconds()))


def locked_until(db: Session, subjects: list[Subject], now: datetime) -> datetime | None:
    """The latest lock still running on any of ``subjects``, or None."""
    return db.scalar(
        select(func.max(LoginLockout.locked_until)).where(
            LoginLockout.subject.in_([s.key for s in subjects]),
            LoginLockout.locked_until > now,
        )
    )


def ensure_not_locked(db: Session, subjects: list[Subject], now: datetime) -> None:
    """Raise 429 ``rate_limited`` (with ``retry_after``) while any subject is locked."""
    until = locked_until(db, subjects, now)
    if until is not None:
        raise rate_limited(
            "too many failed logins; try again later", retry_after_seconds(until, now)
        )


def record_failure(
    db: Session, settings: AuthSettings, subjects: list[Subject], now: datetime
) -> bool:
    """Count a failed login against every subject; lock those that reach their
    maximum. Returns True when a subject got locked."""
    window_start = now - settings.login_failure_window
    locked = False
    for subject in subjects:
        db.execute(
            delete(LoginFailure).where(
                LoginFailure.subject == subject.key, LoginFailure.created_at <= window_start
            )
        )
        db.execute(
            delete(LoginLockout).where(
                LoginLockout.subject == subject.key, LoginLockout.locked_until <= now
            )
        )
        db.add(LoginFailure(subject=subject.key, created_at=now))
        db.flush()
        count = db.scalar(
            select(func.count()).select_from(LoginFailure).where(
                LoginFailure.subject == subject.key, LoginFailure.created_at > window_start
            )
        )
        if count >= subject.max_failures:
            db.add(LoginLockout(subject=subject.key, locked_until=now + settings.login_lockout))
            db.execute(delete(LoginFailure).where(LoginFailure.subject == subject.key))
            locked = True
    return locked


def clear_failures(db: Session, subject: Subject) -> None:
    """Forget a subject's failures (after a successful login to the account)."""
    db.execute(delete(LoginFailure).where(LoginFailure.subject == subject.key))
