"""Email verification codes: for a new account's address (``registration``) and
for moving an account to a new address (``email_change``).

A code is 6 digits, stored only as an HMAC bound to its row, valid for
``AUTH.VERIFICATION_CODE_TTL_MINUTES`` and for ``AUTH.VERIFICATION_MAX_ATTEMPTS``
wrong tries. Issuing a code supersedes the user's earlier codes for the same
purpose, and an account has at most one live code per address (a unique
index: two requests at once cannot leave two codes to guess at). Codes tried
for an address are also counted across every account and code that aim at it
(``AUTH.VERIFICATION_MAX_ATTEMPTS_PER_ADDRESS`` per
``AUTH.VERIFICATION_ADDRESS_WINDOW_SECONDS``, atomically: services/auth/lockout.py),
so neither many accounts asking to move to one address nor new codes asked for
it give a guesser more tries. A wrong code, or an address with no code, is
``invalid_code`` (the same answer, so the endpoint does not tell which
addresses have accounts); an address whose codes are all expired or used up
is ``code_expired``.

The code travels sealed in its event (services/common/sealed.py): only the
notifications service can read it, to write the mail.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from services.auth import history, lockout
from services.auth.errors import RecordedFailure, code_expired, email_taken, invalid_code
from services.auth.models import EmailVerification, User
from services.auth.settings import AuthSettings
from services.auth.tokens import code_digest, digests_equal, new_verification_code
from services.common.fieldcrypt import email_index
from services.common.ids import isoformat, new_id
from services.common.races import first_wins

REGISTRATION = "registration"
EMAIL_CHANGE = "email_change"


def _active(query):
    return query.where(
        EmailVerification.used_at.is_(None), EmailVerification.superseded_at.is_(None)
    )


def supersede(db: Session, user: User, now: datetime, purpose: str | None = None) -> None:
    """Invalidate the user's unused codes (of one purpose, or all)."""
    stmt = _active(update(EmailVerification).where(EmailVerification.user_id == user.id))
    if purpose is not None:
        stmt = stmt.where(EmailVerification.purpose == purpose)
    db.execute(stmt.values(superseded_at=now).execution_options(synchronize_session=False))


def issue(
    db: Session, settings: AuthSettings, user: User, purpose: str, email: str, now: datetime
) -> dict | None:
    """Create a code for ``email`` (superseding the user's earlier ones for
    ``purpose``) and return the ``auth.email_verification_requested`` payload,
    its code sealed; None when a request made at the same moment made the
    account's live code for ``email`` first."""
    supersede(db, user, now, purpose)
    code = new_verification_code()
    verification_id = new_id()
    expires_at = now + settings.verification_code_ttl

    def add() -> bool:
        db.add(
            EmailVerification(
                id=verification_id,
                user_id=user.id,
                purpose=purpose,
                email=email,
                code_hmac=code_digest(settings.secret_key, str(verification_id), code),
                attempts=0,
                created_at=now,
                expires_at=expires_at,
            )
        )
        return True

    if not first_wins(db, add, lambda: False, savepoint=True):
        return None
    return {
        "user_id": str(user.id),
        "email": email,
        "sealed_code": settings.sealer.seal(code),
        "expires_at": isoformat(expires_at),
        "purpose": purpose,
    }


def verify(db: Session, settings: AuthSettings, email: str, code: str, now: datetime) -> User:
    """Check ``code`` for ``email`` and apply what it confirms; returns the user.

    Raises ``invalid_code`` / ``code_expired``, or 429 ``rate_limited`` once
    the address has used up its budget of tries. A wrong code uses up one try
    of the address and one attempt of every live code for it (raised as
    RecordedFailure so that they are committed). The address's throttle row is
    updated first and stays locked until the commit: tries for one address are
    checked one after the other."""
    candidates = db.scalars(
        _active(select(EmailVerification).where(EmailVerification.email_index == email_index(email)))
        .order_by(EmailVerification.created_at.desc())
    ).all()
    if not candidates:
        raise invalid_code()
    subject = lockout.verification_subject(settings, email)
    lockout.take_attempt(db, [subject], now)
    for verification in candidates:
        db.refresh(verification)  # as they are now that the address is ours
    usable = [
        v for v in candidates
        if v.used_at is None and v.superseded_at is None
        and v.expires_at > now and v.attempts < settings.verification_max_attempts
    ]
    if not usable:
        raise code_expired()
    for verification in usable:
        expected = verification.code_hmac
        if digests_equal(expected, code_digest(settings.secret_key, str(verification.id), code)):
            lockout.succeeded(db, [subject])
            return _complete(db, verification, now)
    for verification in usable:
        verification.attempts += 1
    lockout.record_failure(db, [subject], now)
    raise RecordedFailure(invalid_code())


def _complete(db: Session, verification: EmailVerification, now: datetime) -> User:
    user = db.get(User, verification.user_id)
    verification.used_at = now
    if verification.purpose == EMAIL_CHANGE:
        taken = db.scalar(
            select(User.id).where(User.email_index == verification.email_index, User.id != user.id)
        )
        if taken is not None:
            raise email_taken()
        history.record(db, user, history.EMAIL_CHANGED,
                       {"email": {"from": user.email, "to": verification.email}}, now)
        user.email = verification.email
        # Every other code of the account (sent to the old address) is void now.
        supersede(db, user, now)
    user.email_verified = True
    user.updated_at = now
    return user


def resend(db: Session, settings: AuthSettings, email: str, now: datetime) -> list[dict]:
    """A new code for the unverified account of ``email``, at most once per
    ``AUTH.RESEND_MIN_INTERVAL_SECONDS``. Only that account's own code: codes
    of other accounts moving to ``email`` are not touched (their owners ask
    again with ``POST /v1/me/email``), so a stranger cannot renew them, nor
    their attempts. Returns the event payloads to publish (often none)."""
    user = db.scalar(select(User).where(User.email_index == email_index(email)))
    if user is None or user.email_verified:
        return []
    if recently_sent(db, settings, user, REGISTRATION, email, now):
        return []
    event = issue(db, settings, user, REGISTRATION, email, now)
    return [event] if event is not None else []


def recently_sent(
    db: Session, settings: AuthSettings, user: User, purpose: str, email: str, now: datetime
) -> bool:
    """Whether the user got a code for ``purpose`` sent to ``email`` less than
    ``AUTH.RESEND_MIN_INTERVAL_SECONDS`` ago.

    The account's row is locked first, until the caller commits: two requests at
    once are then answered one after the other, and the second sees the code the
    first sent. (Without the lock, a request that checked before the first
    committed could supersede its code just after, and send a second one.)"""
    db.execute(select(User.id).where(User.id == user.id).with_for_update())
    last = db.scalar(
        select(EmailVerification.created_at)
        .where(
            EmailVerification.user_id == user.id,
            EmailVerification.purpose == purpose,
            EmailVerification.email_index == email_index(email),
        )
        .order_by(EmailVerification.created_at.desc())
        .limit(1)
    )
    return last is not None and now - last < settings.resend_min_interval
