"""Throttling guesses: logins per account and per client address, codes per
address being verified.

Every login is counted against two subjects: the normalised email (whether or
not an account has it, so probing unknown addresses is throttled too) and the
client's address. Every code tried is counted against the address it is
for, whatever the account or code it aims at. Subjects are stored as HMACs:
the table never holds an address or an unknown email in clear.

Counting is atomic. An attempt is *taken* before the password or code is
checked, by one conditional update of the subject's row (``attempts <
max``, or a window that has run out): on PostgreSQL parallel updates of one
row wait for each other and each re-reads the row, so no more than the budget
of attempts can ever be checked, however many arrive at once. A failed attempt
keeps its count; a subject that has used up its budget in its window is locked
for its lockout period and starts afresh after it. A successful login forgets
the account's count and gives the address back the attempt it took. While
locked, or while the budget is in use by attempts still being checked, every
attempt is refused with 429, even with the right password.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import case, delete, or_, select, update
from sqlalchemy.orm import Session

from services.auth.models import Throttle
from services.auth.settings import AuthSettings
from services.auth.tokens import keyed_digest
from services.common.db import insert_for
from services.common.errors import rate_limited
from services.common.networks import parse_address


@dataclass(frozen=True)
class Subject:
    key: str
    max_attempts: int
    window: timedelta
    lockout: timedelta


def subjects_for(settings: AuthSettings, email: str, client_ip: str | None) -> list[Subject]:
    """Login: the account subject, then the address subject when the address is known."""
    subjects = [
        Subject(
            keyed_digest(settings.secret_key, "login-account", email),
            settings.login_max_failures_per_account,
            settings.login_failure_window,
            settings.login_lockout,
        )
    ]
    address = parse_address(client_ip)
    if address is not None:
        subjects.append(
            Subject(
                keyed_digest(settings.secret_key, "login-address", str(address)),
                settings.login_max_failures_per_address,
                settings.login_failure_window,
                settings.login_lockout,
            )
        )
    return subjects


def verification_subject(settings: AuthSettings, email: str) -> Subject:
    """Codes tried for ``email``, across every account and code."""
    window = settings.verification_address_window
    return Subject(keyed_digest(settings.secret_key, "verify-address", email),
                   settings.verification_max_attempts_per_address, window, window)


def signup_notice_subject(settings: AuthSettings, email: str) -> Subject:
    """"Someone tried to sign up with your address" mails: one per
    ``RESEND_MIN_INTERVAL_SECONDS`` (a stranger cannot flood the inbox)."""
    window = settings.resend_min_interval
    return Subject(keyed_digest(settings.secret_key, "signup-notice", email), 1, window,
                   timedelta(0))


def retry_after_seconds(locked_until: datetime, now: datetime) -> int:
    """Whole seconds until ``locked_until`` (at least 1 while still locked)."""
    return max(1, math.ceil((locked_until - now).total_seconds()))


def take_attempt(db: Session, subjects: list[Subject], now: datetime) -> None:
    """Count one attempt against every subject before it is checked; 429
    ``rate_limited`` (with ``retry_after``) when one is locked or has no
    attempt left in its window. Rows are taken in key order (no deadlock
    between two calls with the same subjects). The caller commits (so the
    count stands while the check runs) or rolls back a refusal."""
    for subject in sorted(subjects, key=lambda s: s.key):
        refusing = _take(db, subject, now)
        if refusing is not None:
            raise rate_limited("too many attempts; try again later",
                               retry_after_seconds(refusing, now))


def try_take(db: Session, subject: Subject, now: datetime) -> bool:
    """Take one attempt from ``subject``'s budget if it has one; False when it
    has none."""
    return _take(db, subject, now) is None


def _take(db: Session, subject: Subject, now: datetime) -> datetime | None:
    """Take an attempt with one conditional update of the subject's row (made
    first if need be); None when taken, else until when it is refused."""
    expired = Throttle.window_started_at <= now - subject.window
    for _ in range(3):
        db.execute(insert_for(db, Throttle).values(subject=subject.key, attempts=0, window_started_at=now)
                   .on_conflict_do_nothing(index_elements=["subject"]))
        taken = db.execute(
            update(Throttle)
            .where(
                Throttle.subject == subject.key,
                or_(Throttle.locked_until.is_(None), Throttle.locked_until <= now),
                or_(Throttle.attempts < subject.max_attempts, expired),
            )
            .values(
                attempts=case((expired, 1), else_=Throttle.attempts + 1),
                window_started_at=case((expired, now), else_=Throttle.window_started_at),
                locked_until=None,
            )
            .execution_options(synchronize_session=False)
        ).rowcount
        if taken:
            return None
        row = db.execute(select(Throttle.locked_until, Throttle.window_started_at)
                         .where(Throttle.subject == subject.key)).one_or_none()
        if row is not None:
            if row.locked_until is not None and row.locked_until > now:
                return row.locked_until
            return row.window_started_at + subject.window
        # A success forgot the row between the insert and the update: again.
    return now  # refused (for a second) rather than counted wrong


def record_failure(db: Session, subjects: list[Subject], now: datetime) -> bool:
    """The attempt failed: its count stands, and a subject that has used up its
    budget is locked for its lockout period (its count starts afresh after).
    Returns True when a subject got locked."""
    locked = False
    for subject in sorted(subjects, key=lambda s: s.key):
        locked |= bool(db.execute(
            update(Throttle)
            .where(Throttle.subject == subject.key, Throttle.attempts >= subject.max_attempts)
            .values(locked_until=now + subject.lockout, attempts=0, window_started_at=now)
            .execution_options(synchronize_session=False)
        ).rowcount)
    return locked


def succeeded(db: Session, subjects: list[Subject]) -> None:
    """The attempt succeeded: the first subject (the account, the address
    verified) forgets its count (its row goes, unless it is locked: an attempt
    taken before the lock may still succeed); the others (the client address)
    get back the attempt taken for it."""
    first, *others = subjects
    db.execute(delete(Throttle).where(Throttle.subject == first.key,
                                      Throttle.locked_until.is_(None))
               .execution_options(synchronize_session=False))
    db.execute(update(Throttle).where(Throttle.subject == first.key).values(attempts=0)
               .execution_options(synchronize_session=False))
    give_back(db, others)


def give_back(db: Session, subjects: list[Subject]) -> None:
    """Return the attempt taken for a check that was not a guess."""
    for subject in sorted(subjects, key=lambda s: s.key):
        db.execute(update(Throttle).where(Throttle.subject == subject.key, Throttle.attempts > 0)
                   .values(attempts=Throttle.attempts - 1)
                   .execution_options(synchronize_session=False))
