"""Accounts: registration, profile, email change, password reset, TOTP, admin."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from services.auth import history, keys, lockout, passwords, sessions, totp, verification
from services.auth.errors import email_taken, invalid_token, invalid_totp
from services.auth.lookup import ensure_verified, find_user_by_email
from services.auth.models import PasswordReset, User
from services.auth.settings import AuthSettings
from services.auth.tokens import new_reset_token, sha256_hex
from services.common.contracts.auth import normalise_email
from services.common.errors import conflict, invalid_request, not_found
from services.common.ids import isoformat, new_id
from services.common.networks import network_of


@dataclass
class Registration:
    user: User  # for an address that has an account: a stand-in, never stored
    events: list[tuple[str, dict]]  # (event type, payload) to publish


def register(
    db: Session,
    settings: AuthSettings,
    email: str,
    password: str,
    display_name: str | None,
    client_ip: str | None,
    now: datetime,
    minimum_age_met: bool = False,
) -> Registration:
    """Create an unverified account (no API key: keys come once the address is
    verified) and send a verification code. ``email`` is normalised. 400
    ``weak_password``.

    An address that already has an account gets the same answer, built on a
    stand-in user that is never stored, and its owner a mail saying someone
    tried to sign up with it (at most one per ``RESEND_MIN_INTERVAL_SECONDS``):
    registering tells nobody which addresses have accounts. The password is
    hashed either way, so the two take the same time. ``minimum_age_met``: the
    age gate (services/auth/age.py) was passed; only that fact is kept."""
    passwords.check_policy(password, email)
    password_hash = passwords.hash_password(password)
    user = User(
        id=new_id(),
        email=email,
        email_verified=False,
        password_hash=password_hash,
        display_name=display_name,
        plan=settings.default_plan,
        processing_restricted=False,
        is_admin=False,
        minimum_age_met_at=now if minimum_age_met else None,
        created_at=now,
        updated_at=now,
    )
    existing = find_user_by_email(db, email)
    if existing is not None:
        events = []
        if lockout.try_take(db, lockout.signup_notice_subject(settings, email), now):
            events.append(("signup_attempted", {
                "user_id": str(existing.id), "email": existing.email,
                "attempted_at": isoformat(now)}))
        return Registration(user, events)
    db.add(user)
    db.flush()
    network = network_of(client_ip)
    if network is not None:
        sessions.remember_network(db, settings, user, network, now)
    events = [("user_registered", {"user_id": str(user.id), "email": user.email,
                                   "display_name": user.display_name})]
    code = verification.issue(db, settings, user, verification.REGISTRATION, email, now)
    if code is not None:
        events.append(("email_verification_requested", code))
    return Registration(user, events)


def update_profile(db: Session, user: User, changes: dict, now: datetime) -> User:
    """Apply the profile fields given, and keep what changed in the account's
    history (its owner's export shows each rectification)."""
    changed = {}
    for field in ("display_name", "bio", "avatar_image_id"):
        if field in changes and changes[field] != getattr(user, field):
            changed[field] = {"from": history.plain(getattr(user, field)),
                              "to": history.plain(changes[field])}
            setattr(user, field, changes[field])
    if changed:
        history.record(db, user, history.PROFILE_UPDATED, changed, now)
    user.updated_at = now
    return user


def request_email_change(
    db: Session, settings: AuthSettings, user: User, new_email: str, now: datetime
) -> dict | None:
    """Send a code to ``new_email``; the change happens when it is verified.
    The caller has checked that the account is verified
    (:func:`lookup.ensure_verified`) and its password
    (:func:`sessions.check_password`, which counts a wrong one toward the
    lockout). Returns the auth.email_verification_requested payload, or None
    when a code went to that address less than
    ``AUTH.RESEND_MIN_INTERVAL_SECONDS`` ago (asking again later re-sends the
    code: the only resend of an address change)."""
    if new_email == user.email:
        raise invalid_request(
            "this is already the account's address",
            fields={"new_email": ["is already the account's address"]},
        )
    if find_user_by_email(db, new_email) is not None:
        raise email_taken()
    if verification.recently_sent(db, settings, user, verification.EMAIL_CHANGE, new_email, now):
        return None
    return verification.issue(db, settings, user, verification.EMAIL_CHANGE, new_email, now)


# ---------------------------------------------------------------- password reset


def request_password_reset(
    db: Session, settings: AuthSettings, email: str, now: datetime
) -> dict | None:
    """A reset token for the account with ``email``, if there is one and no
    token was sent within ``AUTH.PASSWORD_RESET_MIN_INTERVAL_SECONDS``.
    Returns the auth.password_reset_requested payload, or None."""
    user = find_user_by_email(db, email)
    if user is None:
        return None
    last = db.scalar(
        select(PasswordReset.created_at)
        .where(PasswordReset.user_id == user.id)
        .order_by(PasswordReset.created_at.desc())
        .limit(1)
    )
    if last is not None and now - last < settings.password_reset_min_interval:
        return None
    db.execute(
        update(PasswordReset)
        .where(
            PasswordReset.user_id == user.id,
            PasswordReset.used_at.is_(None),
            PasswordReset.superseded_at.is_(None),
        )
        .values(superseded_at=now)
        .execution_options(synchronize_session=False)
    )
    token = new_reset_token()
    expires_at = now + settings.password_reset_ttl
    db.add(
        PasswordReset(
            user_id=user.id, token_hash=sha256_hex(token), created_at=now, expires_at=expires_at
        )
    )
    return {
        "user_id": str(user.id),
        "email": user.email,
        "sealed_token": settings.sealer.seal(token),
        "expires_at": isoformat(expires_at),
    }


def confirm_password_reset(db: Session, token: str, new_password: str, now: datetime) -> dict:
    """Set the password; the token is spent and every session and API key of
    the account is revoked (whoever held the account before the reset keeps
    nothing). Returns the ``auth.password_changed`` payload (the owner is told
    by mail). 400 ``invalid_token`` for an unknown, used, superseded or
    expired token."""
    reset = db.scalar(select(PasswordReset).where(PasswordReset.token_hash == sha256_hex(token)))
    if (
        reset is None
        or reset.used_at is not None
        or reset.superseded_at is not None
        or reset.expires_at <= now
    ):
        raise invalid_token()
    user = db.get(User, reset.user_id)
    passwords.check_policy(new_password, user.email)
    user.password_hash = passwords.hash_password(new_password)
    user.updated_at = now
    reset.used_at = now
    revoked = revoke_credentials(db, user, now)
    return {"user_id": str(user.id), "email": user.email, "changed_at": isoformat(now), **revoked}


def revoke_credentials(db: Session, user: User, now: datetime) -> dict:
    """Revoke every live session and API key of ``user``: ``{sessions, api_keys}``."""
    return {"sessions": sessions.revoke_all(db, user, now),
            "api_keys": keys.revoke_all(db, user, now)}


# ---------------------------------------------------------------- TOTP and admin


def begin_totp_enrollment(user: User, issuer: str) -> dict:
    """A new pending secret (replacing any earlier pending one); TOTP is on only
    once a code from it is confirmed. 409 ``totp_already_enabled``; 403
    ``email_unverified`` before the address is verified (whoever squatted an
    address must not be able to lock its owner out after a password reset)."""
    ensure_verified(user)
    if user.totp_enabled:
        raise conflict("TOTP is already enabled", code="totp_already_enabled")
    user.totp_pending_secret = totp.new_secret()
    return {
        "secret": user.totp_pending_secret,
        "otpauth_uri": totp.provisioning_uri(user.totp_pending_secret, user.email, issuer),
    }


def confirm_totp_enrollment(user: User, code: str, now: datetime) -> None:
    """Turn TOTP on with the pending secret; 400 ``invalid_totp`` for a wrong code."""
    if user.totp_enabled:
        raise conflict("TOTP is already enabled", code="totp_already_enabled")
    if user.totp_pending_secret is None:
        raise invalid_totp(status=400)
    step = totp.matching_step(user.totp_pending_secret, code, now, None)
    if step is None:
        raise invalid_totp(status=400)
    user.totp_secret, user.totp_pending_secret = user.totp_pending_secret, None
    user.totp_last_step = step
    user.updated_at = now


def set_admin(
    db: Session, settings: AuthSettings, email: str, is_admin: bool, now: datetime
) -> dict:
    """Grant or withdraw admin (ops CLI). Granting it to an account without TOTP
    enrols TOTP at once and returns its otpauth URI (to show the operator once);
    granting ends the account's sessions, which were opened without a second
    factor. Granting or withdrawing revokes every API key of the account (an
    administrator signs in with a session and TOTP only; keys made while it
    was one must not outlive the change either). 404 ``not_found`` for an
    unknown email."""
    user = find_user_by_email(db, normalise_email(email))
    if user is None:
        raise not_found("user")
    uri = None
    if is_admin and not user.totp_enabled:
        secret = totp.new_secret()
        user.totp_secret, user.totp_pending_secret, user.totp_last_step = secret, None, None
        uri = totp.provisioning_uri(secret, user.email, settings.totp_issuer)
    if is_admin and not user.is_admin:
        sessions.revoke_all(db, user, now)
    revoked = keys.revoke_all(db, user, now) if is_admin or user.is_admin else 0
    user.is_admin = is_admin
    user.updated_at = now
    return {"user_id": user.id, "is_admin": user.is_admin, "otpauth_uri": uri,
            "api_keys_revoked": revoked}
