"""Login, sessions and resolving a credential to the principal behind it."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import or_, select, update
from sqlalchemy.orm import Session
from sqlalchemy.orm.attributes import set_committed_value

from services.auth import keys, lockout, passwords, totp
from services.auth.errors import (
    RecordedFailure,
    account_disabled,
    invalid_credentials,
    invalid_totp,
    totp_required,
)
from services.auth.lookup import find_user_by_email
from services.auth.models import ApiKey, KnownNetwork, User, UserSession
from services.auth.networks import network_digest
from services.auth.settings import AuthSettings
from services.auth.tokens import api_key_prefix, is_api_key, new_session_token, sha256_hex
from services.common.errors import forbidden, invalid_request, not_found, unauthenticated
from services.common.ids import client_id, isoformat, parse_uuid, trusted_id
from services.common.networks import network_of
from services.common.pagination import paginate

# last_used_at is written at most this often per credential (not once a request).
TOUCH_INTERVAL = timedelta(seconds=60)
USER_AGENT_MAX = 300


@dataclass
class LoginResult:
    user: User
    token: str
    session: UserSession
    suspicious_login: dict | None  # the auth.suspicious_login payload, if any


def begin_login(
    db: Session, settings: AuthSettings, email: str, client_ip: str | None, now: datetime
) -> list[lockout.Subject]:
    """Take one attempt from the account's and the client address's budgets
    (429 ``rate_limited`` when there is none left). The caller commits before
    the password is checked, so parallel guesses are counted before any of
    them is checked; returns the subjects for :func:`login`."""
    subjects = lockout.subjects_for(settings, email, client_ip)
    lockout.take_attempt(db, subjects, now)
    return subjects


def login(
    db: Session,
    settings: AuthSettings,
    subjects: list[lockout.Subject],
    email: str,
    password: str,
    totp_code: str | None,
    client_ip: str | None,
    user_agent: str | None,
    now: datetime,
) -> LoginResult:
    """Check the credentials (after :func:`begin_login`) and open a session.

    Refusals that count as failures are raised as RecordedFailure (the caller
    commits, then raises the error inside)."""
    user = find_user_by_email(db, email)
    if user is None:
        passwords.burn_dummy_verification(password)
        _fail(db, subjects, now, invalid_credentials())
    if not passwords.verify_password(user.password_hash, password):
        _fail(db, subjects, now, invalid_credentials())
    if passwords.needs_rehash(user.password_hash):
        user.password_hash = passwords.hash_password(password)
    if user.disabled_at is not None:
        # told only after the right password: a guesser learns nothing
        lockout.give_back(db, subjects)
        raise RecordedFailure(account_disabled())

    if user.totp_enabled or user.is_admin:
        if not totp_code:
            # The password was right, the second factor missing: the attempt
            # is given back (not forgotten: TOTP guesses keep counting).
            lockout.give_back(db, subjects)
            raise RecordedFailure(totp_required())
        step = (
            totp.matching_step(user.totp_secret, totp_code, now, user.totp_last_step)
            if user.totp_secret
            else None
        )
        if step is None or not claim_totp_step(db, user, step):
            _fail(db, subjects, now, invalid_totp())

    lockout.succeeded(db, subjects)
    return open_session(db, settings, user, client_ip, user_agent, now)


def open_session(db: Session, settings: AuthSettings, user: User, client_ip: str | None,
                 user_agent: str | None, now: datetime) -> LoginResult:
    """A new session for ``user``, whose credentials were checked (a password,
    an OpenID provider's ID token, a passkey), and the new network it came from, if any."""
    token = new_session_token()
    network = network_of(client_ip)
    session = UserSession(
        user_id=user.id,
        token_hash=sha256_hex(token),
        created_at=now,
        expires_at=now + settings.session_ttl,
        user_agent=(user_agent or None) and user_agent[:USER_AGENT_MAX],
        network=network,
    )
    db.add(session)
    suspicious = None
    if network is not None and remember_network(db, settings, user, network, now):
        suspicious = {
            "user_id": str(user.id),
            "email": user.email,
            "network": network,
            "user_agent": session.user_agent,
            "login_at": isoformat(now),
        }
    db.flush()
    return LoginResult(user, token, session, suspicious)


def check_password(
    db: Session, user: User, password: str, subjects: list[lockout.Subject], now: datetime,
    error,
) -> None:
    """The account's password, re-entered to confirm a sensitive change (after
    :func:`begin_login` took the attempt): a wrong one counts toward the
    lockout like a failed login and raises RecordedFailure(``error``)."""
    if not passwords.verify_password(user.password_hash, password):
        _fail(db, subjects, now, error)
    lockout.succeeded(db, subjects)


def claim_totp_step(db: Session, user: User, step: int) -> bool:
    """Record ``step`` as the account's last accepted TOTP step, only if it is
    newer than the one stored: one conditional update, so a code used by two
    logins at once lets only one of them in."""
    claimed = db.execute(
        update(User)
        .where(User.id == user.id,
               or_(User.totp_last_step.is_(None), User.totp_last_step < step))
        .values(totp_last_step=step)
        .execution_options(synchronize_session=False)
    ).rowcount
    if claimed:
        set_committed_value(user, "totp_last_step", step)
    return bool(claimed)


def _fail(db, subjects, now, error):
    lockout.record_failure(db, subjects, now)
    raise RecordedFailure(error)


def remember_network(
    db: Session, settings: AuthSettings, user: User, network: str, now: datetime
) -> bool:
    """Record ``network`` for ``user``; True when the account never used it before."""
    digest = network_digest(settings.secret_key, network)
    known = db.scalar(
        select(KnownNetwork.id).where(
            KnownNetwork.user_id == user.id, KnownNetwork.network_hmac == digest
        )
    )
    if known is not None:
        return False
    db.add(KnownNetwork(user_id=user.id, network_hmac=digest, first_seen_at=now))
    return True


def authenticate(
    db: Session, token: str | None, api_key: str | None, now: datetime
) -> tuple[User, str, UserSession | ApiKey]:
    """Resolve exactly one credential to ``(user, credential_type, credential)``.
    400 ``invalid_request`` unless exactly one is given; 401 ``unauthenticated``
    for an unknown, revoked or expired one. A ``token`` that is an API key
    (:func:`services.auth.tokens.is_api_key`: a bearer API key) is resolved
    as the key, with the same rules (an administrator's key authenticates
    nobody)."""
    if (token is None) == (api_key is None):
        raise invalid_request("give exactly one of token and api_key")
    if token is not None and is_api_key(token):
        token, api_key = None, token
    if token is not None:
        credential = db.scalar(
            select(UserSession).where(
                UserSession.token_hash == sha256_hex(token),
                UserSession.revoked_at.is_(None),
                UserSession.expires_at > now,
            )
        )
        kind = "session"
    else:
        credential = keys.find_active(db, api_key) if api_key_prefix(api_key) else None
        kind = "api_key"
    user = db.get(User, credential.user_id) if credential is not None else None
    if user is None or user.disabled_at is not None:  # disabled: its credentials were revoked
        raise unauthenticated("the credential is not valid")
    if kind == "api_key":
        keys.ensure_usable(user)
    if credential.last_used_at is None or now - credential.last_used_at >= TOUCH_INTERVAL:
        credential.last_used_at = now
    return user, kind, credential


def ensure_signed_in(db: Session, user: User, session_id, now: datetime) -> UserSession:
    """The live session ``session_id`` of ``user``: what a change that hands
    out a way to sign in (a passkey) is made with, never an API key alone.
    403 ``session_required`` otherwise."""
    parsed = parse_uuid(session_id)
    session = db.get(UserSession, parsed) if parsed is not None else None
    if session is None or session.user_id != user.id or session.revoked_at is not None \
            or session.expires_at <= now:
        raise forbidden("sign in (a session, not an API key) to do this", code="session_required")
    return session


def principal(user: User, kind: str, credential: UserSession | ApiKey) -> dict:
    return {
        "user_id": user.id,
        "email_verified": user.email_verified,
        "is_admin": user.is_admin,
        "processing_restricted": user.processing_restricted,
        "plan": user.plan,
        "credential_type": kind,
        "credential_id": credential.id,
    }


def list_active(db: Session, user: User, now: datetime, limit: int,
                cursor: str | None) -> tuple[list[UserSession], str | None]:
    """A page of the user's live sessions, newest first, and the next cursor."""
    stmt = select(UserSession).where(
        UserSession.user_id == user.id,
        UserSession.revoked_at.is_(None),
        UserSession.expires_at > now,
    )
    return paginate(db, stmt, UserSession.created_at, UserSession.id, limit, cursor)


def view(session: UserSession, current_id) -> dict:
    return {
        "id": session.id,
        "created_at": session.created_at,
        "expires_at": session.expires_at,
        "last_used_at": session.last_used_at,
        "user_agent": session.user_agent,
        "network": session.network,
        "current": current_id is not None and session.id == trusted_id(current_id, "current_session_id"),
    }


def revoke(db: Session, session_id, now: datetime, user: User | None = None) -> None:
    """Revoke one live session (of ``user`` when given); 404 otherwise."""
    session = db.get(UserSession, client_id(session_id, "session"))
    if (
        session is None
        or (user is not None and session.user_id != user.id)
        or session.revoked_at is not None
        or session.expires_at <= now
    ):
        raise not_found("session")
    session.revoked_at = now


def end(db: Session, session_id, now: datetime) -> None:
    """Logout: revoke the session; nothing to do when it is already over."""
    session = db.get(UserSession, client_id(session_id, "session"))
    if session is not None and session.revoked_at is None:
        session.revoked_at = now


def revoke_all(db: Session, user: User, now: datetime) -> int:
    """Revoke every live session of ``user``; returns how many."""
    return db.execute(
        update(UserSession)
        .where(UserSession.user_id == user.id, UserSession.revoked_at.is_(None))
        .values(revoked_at=now)
        .execution_options(synchronize_session=False)
    ).rowcount or 0
