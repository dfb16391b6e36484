"""The auth service's part of privacy requests (the protocol of
:mod:`services.common.privacy_parts`): the account's export, its erasure
(which frees the address: it can register again as a new account), and the
retention schedule this service enforces; besides, revoking every credential
at once, and restriction.

The database's ON DELETE CASCADE is not relied on (SQLite enforces it only
with a pragma): the erasure deletes each table's rows itself, and counts them.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session

from services.auth import history, passwords
from services.auth.lockout import subjects_for
from services.auth.models import (
    AccountChange,
    ApiKey,
    EmailVerification,
    Identity,
    KnownNetwork,
    OidcCode,
    OidcFlow,
    Passkey,
    PasskeyChallenge,
    PasswordReset,
    Throttle,
    User,
    UserSession,
    WebhookSecret,
)
from services.auth.settings import AuthSettings
from services.common.db import locked
from services.common.ids import isoformat, trusted_id
from services.common.privacy_parts import Erasure

ABOUT = (
    "Your account: address, profile, plan, whether two-factor sign-in is on; the "
    "history of its address and profile changes (when, from what, to what); your "
    "sessions (when, which browser, which network: a /24 or /48, never a full address) "
    "and API keys (name and prefix) until they are purged; your passkeys (name, "
    "authenticator model, when added and last used); verification codes and "
    "password resets still on record (when, for which address; never the code or token); "
    "the accounts at sign-in providers (Google...) linked to it (provider, address, when); "
    "whether it was found to meet the minimum age (never a birth date)."
)
WITHHELD = [
    {"what": "your password",
     "why": "only an argon2id hash is stored; it cannot be turned back into the password"},
    {"what": "session tokens, API key secrets, verification codes and reset tokens",
     "why": "only hashes are stored, and handing them out would weaken your account"},
    {"what": "the two-factor (TOTP) secret and the webhook signing secret",
     "why": "they are credentials: an archive that leaks must not give access to your account "
            "(the webhook secret is shown at GET /v1/me/webhook-secret)"},
    {"what": "your passkeys' public keys and signature counters, and passkey challenges",
     "why": "they only check your authenticator's signatures; challenges are single-use and "
            "live for minutes"},
    {"what": "the networks you signed in from, beyond their count and dates",
     "why": "they are stored only as keyed hashes, used to notice sign-ins from new places"},
    {"what": "failed sign-in attempts",
     "why": "they are kept as keyed hashes of the address for 15 minutes, to stop password "
            "guessing, and are not linked to the account"},
]
CHILD_TABLES = (
    ("account_changes", AccountChange), ("sessions", UserSession), ("api_keys", ApiKey), ("email_verifications", EmailVerification),
    ("password_resets", PasswordReset), ("known_networks", KnownNetwork),
    ("webhook_secrets", WebhookSecret), ("identities", Identity), ("oidc_flows", OidcFlow),
    ("oidc_codes", OidcCode),
    ("passkeys", Passkey), ("passkey_challenges", PasskeyChallenge),
)


def revoke_all(db: Session, user_id, now: datetime) -> dict:
    """Revoke every live session and API key of the user (an erasure was
    asked for): ``{"sessions": n, "api_keys": m}``. Zeros for an unknown user."""
    uid = trusted_id(user_id)
    sessions = db.execute(
        update(UserSession).where(UserSession.user_id == uid, UserSession.revoked_at.is_(None))
        .values(revoked_at=now).execution_options(synchronize_session=False)).rowcount or 0
    keys = db.execute(
        update(ApiKey).where(ApiKey.user_id == uid, ApiKey.revoked_at.is_(None))
        .values(revoked_at=now).execution_options(synchronize_session=False)).rowcount or 0
    return {"sessions": sessions, "api_keys": keys}


def export(db: Session, settings: AuthSettings, user_id) -> dict:
    uid = trusted_id(user_id)
    user = db.get(User, uid)
    if user is None:
        return {"account": None}

    def rows(model, order):
        return db.scalars(select(model).where(model.user_id == uid).order_by(order)).all()

    networks = rows(KnownNetwork, KnownNetwork.first_seen_at)
    secret = db.get(WebhookSecret, uid)
    return {
        "account": {
            "id": str(user.id), "email": user.email, "email_verified": user.email_verified,
            "display_name": user.display_name, "bio": user.bio,
            "avatar_image_id": str(user.avatar_image_id) if user.avatar_image_id else None,
            "plan": user.plan, "processing_restricted": user.processing_restricted,
            "is_admin": user.is_admin, "two_factor_enabled": user.totp_enabled,
            "has_password": passwords.has_password(user.password_hash),
            "minimum_age_met_at": isoformat(user.minimum_age_met_at),
            "created_at": isoformat(user.created_at), "updated_at": isoformat(user.updated_at),
        },
        "sessions": [
            {"id": str(s.id), "created_at": isoformat(s.created_at),
             "expires_at": isoformat(s.expires_at), "last_used_at": isoformat(s.last_used_at),
             "revoked_at": isoformat(s.revoked_at), "user_agent": s.user_agent,
             "network": s.network}
            for s in rows(UserSession, UserSession.created_at)
        ],
        "api_keys": [
            {"id": str(k.id), "name": k.name, "prefix": k.prefix,
             "created_at": isoformat(k.created_at), "last_used_at": isoformat(k.last_used_at),
             "revoked_at": isoformat(k.revoked_at)}
            for k in rows(ApiKey, ApiKey.created_at)
        ],
        "passkeys": [
            {"id": str(p.id), "name": p.name, "aaguid": p.aaguid, "transports": p.transports,
             "backed_up": p.backed_up, "created_at": isoformat(p.created_at),
             "last_used_at": isoformat(p.last_used_at)}
            for p in rows(Passkey, Passkey.created_at)
        ],
        "email_verifications": [
            {"purpose": v.purpose, "email": v.email, "created_at": isoformat(v.created_at),
             "expires_at": isoformat(v.expires_at), "used_at": isoformat(v.used_at)}
            for v in rows(EmailVerification, EmailVerification.created_at)
        ],
        "password_resets": [
            {"created_at": isoformat(r.created_at), "expires_at": isoformat(r.expires_at),
             "used_at": isoformat(r.used_at)}
            for r in rows(PasswordReset, PasswordReset.created_at)
        ],
        "known_networks": {"count": len(networks),
                           "first_seen": [isoformat(n.first_seen_at) for n in networks]},
        "webhook_secret": {"created_at": isoformat(secret.created_at)} if secret else None,
        "identities": [
            {"id": str(i.id), "provider": i.provider, "subject": i.subject, "email": i.email,
             "email_verified": i.email_verified, "created_at": isoformat(i.created_at)}
            for i in rows(Identity, Identity.created_at)
        ],
        "changes": history.export(db, uid),
    }


def erase(db: Session, settings: AuthSettings, user_id, now: datetime,
          recheck: bool = False) -> Erasure:
    """Delete the account and everything hanging off it, and the sign-in
    failures and lockouts counted against its address; the address is free
    to register again. Rows deleted per table (zeros when already erased);
    the address names the user in dead letters too. The caller commits."""
    uid = trusted_id(user_id)
    user = locked(db, User, uid)
    named = (user.email,) if user is not None else ()  # read before the row is gone
    tables = {}
    for name, model in CHILD_TABLES:
        tables[name] = db.execute(delete(model).where(model.user_id == uid)
                                  .execution_options(synchronize_session=False)).rowcount or 0
    throttles = 0
    if user is not None:
        subject = subjects_for(settings, user.email, None)[0].key
        throttles = db.execute(delete(Throttle).where(Throttle.subject == subject)
                               .execution_options(synchronize_session=False)).rowcount or 0
        db.delete(user)
        db.flush()
    tables.update(throttles=throttles, users=1 if user is not None else 0)
    return Erasure(tables, also_named=named)


def set_restricted(db: Session, user_id, restricted: bool) -> bool:
    """Mirror the privacy service's restriction on the account (``/v1/me``
    and the gateway's principal show it); False for an unknown account."""
    return bool(db.execute(
        update(User).where(User.id == trusted_id(user_id)).values(processing_restricted=restricted)
        .execution_options(synchronize_session=False)).rowcount)


def retention_items(settings: AuthSettings) -> list[dict]:
    days = settings.session_ttl.total_seconds() / 86400
    code_minutes = settings.verification_code_ttl.total_seconds() / 60
    reset_minutes = settings.password_reset_ttl.total_seconds() / 60
    window = settings.login_failure_window.total_seconds()
    challenge_seconds = settings.webauthn.challenge_ttl.total_seconds()
    purge = "the auth service's purge, every 10 minutes"
    return [
        {"data": "account (address, profile, password hash), API keys, passkeys, linked "
                 "sign-in providers",
         "kept": "until the account is erased", "days": None,
         "enforced_by": "erasure (privacy request)"},
        {"data": "sessions", "kept": f"{days:g} days, less when revoked (signed out)",
         "days": days, "enforced_by": purge},
        {"data": "email verification codes (hashed)",
         "kept": f"valid {code_minutes:g} minutes; deleted a day after they expire",
         "days": round(code_minutes / 1440 + 1, 6), "enforced_by": purge},
        {"data": "password reset tokens (hashed)",
         "kept": f"valid {reset_minutes:g} minutes; deleted a day after they expire",
         "days": round(reset_minutes / 1440 + 1, 6), "enforced_by": purge},
        {"data": "sign-ins with an OpenID provider under way, and their one-time codes",
         "kept": f"{settings.oidc_flow_ttl.total_seconds():g} seconds (a flow), "
                 f"{settings.oidc_code_ttl.total_seconds():g} seconds (a code), less when used",
         "days": round(settings.oidc_flow_ttl.total_seconds() / 86400, 6), "enforced_by": purge},
        {"data": "passkey challenges (hashed)",
         "kept": f"valid {challenge_seconds:g} seconds, deleted once used; the rest a day "
                 "after they expire",
         "days": round(challenge_seconds / 86400 + 1, 6), "enforced_by": purge},
        {"data": "failed sign-in attempts (keyed hashes of address and network)",
         "kept": f"{window:g} seconds", "days": round(window / 86400, 6), "enforced_by": purge},
    ]

