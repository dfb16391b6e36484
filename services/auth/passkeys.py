"""Passkeys (WebAuthn): registration, passwordless sign-in, and the list.

Ceremonies are checked by the ``webauthn`` package (py_webauthn) against the
relying party id and origins of ``AUTH_WEBAUTHN_*`` (services/auth/settings.py).
Each ceremony has two steps: options with a fresh challenge, kept server side
as its SHA-256 (:class:`PasskeyChallenge`), then the browser's answer, which
names its challenge in clientDataJSON. A challenge is used once (deleted as it
is checked, by one conditional DELETE, so two answers to it cannot both pass)
and expires after ``AUTH_WEBAUTHN_CHALLENGE_TTL_SECONDS``. A refusal after the
challenge was taken is raised as RecordedFailure: the deletion is committed.

Passkeys are discoverable (resident) and require user verification (a PIN or
biometric on the authenticator): a passkey sign-in is two factors at once, what
the password and TOTP are together, so it satisfies the TOTP administrators
must give at a password login (services/auth/sessions.py).

The signature counter is checked at each sign-in: a counter that does not go
up (when the authenticator keeps one) means a copy of the passkey, and the
sign-in is refused (401 ``passkey_clone_suspected``).
"""

from __future__ import annotations

import hashlib
import json
import logging
from datetime import datetime

from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session
from sqlalchemy.orm.attributes import set_committed_value

# webauthn (with pyOpenSSL) is imported inside the functions of a ceremony:
# not resident in an auth service that has run none (issue 15)
from services.auth import sessions
from services.auth.errors import (
    RecordedFailure,
    account_disabled,
    invalid_passkey,
    passkey_challenge_invalid,
    passkey_clone_suspected,
)
from services.auth.lookup import ensure_verified, other_ways_to_sign_in
from services.auth.models import Passkey, PasskeyChallenge, User
from services.auth.settings import AuthSettings
from services.common.contracts.passkeys import PASSKEY_CREDENTIAL_ID_MAX
from services.common.db import locked
from services.common.errors import conflict, not_found
from services.common.ids import client_id
from services.common.pagination import paginate

log = logging.getLogger(__name__)

REGISTRATION, AUTHENTICATION = "registration", "authentication"
MAX_PER_ACCOUNT = 20
# What the webauthn package's parsers raise on a malformed answer, besides its
# own exceptions: bad base64 (ValueError), wrong JSON types (TypeError,
# AttributeError), missing members (KeyError).
def _malformed() -> tuple:
    from webauthn.helpers.exceptions import WebAuthnException

    return (WebAuthnException, ValueError, TypeError, AttributeError, KeyError)


def user_handle(user: User) -> bytes:
    """The WebAuthn user.id of the account: its id's 16 bytes (no email, no name)."""
    return user.id.bytes


def _challenge_hash(challenge: bytes) -> str:
    return hashlib.sha256(challenge).hexdigest()


def _keep_challenge(db: Session, settings: AuthSettings, challenge: bytes, purpose: str,
                    user: User | None, now: datetime) -> None:
    db.add(PasskeyChallenge(challenge_hash=_challenge_hash(challenge), purpose=purpose,
                            user_id=user.id if user is not None else None, created_at=now,
                            expires_at=now + settings.webauthn.challenge_ttl))
    db.flush()


def _take_challenge(db: Session, challenge: bytes, purpose: str, user: User | None,
                    now: datetime) -> None:
    """Delete the live challenge (of ``user``'s registration, or a sign-in's);
    400 ``passkey_challenge_invalid`` when there is none to delete."""
    stmt = delete(PasskeyChallenge).where(
        PasskeyChallenge.challenge_hash == _challenge_hash(challenge),
        PasskeyChallenge.purpose == purpose,
        PasskeyChallenge.expires_at > now,
        (PasskeyChallenge.user_id == user.id) if user is not None
        else PasskeyChallenge.user_id.is_(None),
    ).execution_options(synchronize_session=False)
    if db.execute(stmt).rowcount != 1:
        raise passkey_challenge_invalid()


def _options(options) -> dict:
    from webauthn import options_to_json

    return {"options": json.loads(options_to_json(options))}


def _timeout_ms(settings: AuthSettings) -> int:
    return int(settings.webauthn.challenge_ttl.total_seconds() * 1000)


def _parse(parser, credential: dict, status: int):
    """The browser's answer parsed, and the challenge its clientDataJSON names."""
    from webauthn.helpers import parse_client_data_json

    try:
        parsed = parser(credential)
        client_data = parse_client_data_json(bytes(parsed.response.client_data_json))
    except _malformed():
        raise invalid_passkey(status, "malformed") from None
    if len(parsed.id) > PASSKEY_CREDENTIAL_ID_MAX:
        raise invalid_passkey(status, "malformed")
    return parsed, client_data.challenge


# ---------------------------------------------------------------- registration


def registration_options(db: Session, settings: AuthSettings, user: User, session_id,
                         now: datetime) -> dict:
    """Options for navigator.credentials.create(): a discoverable credential
    with user verification, none of the account's passkeys again. Only from a
    live session of the account (403 ``session_required``: an API key must
    not turn into a way to sign in) of a verified address (403
    ``email_unverified``); 409 ``passkey_limit``."""
    from webauthn import generate_registration_options
    from webauthn.helpers.structs import (
        AuthenticatorSelectionCriteria,
        ResidentKeyRequirement,
        UserVerificationRequirement,
    )

    sessions.ensure_signed_in(db, user, session_id, now)
    ensure_verified(user)
    existing = db.scalars(select(Passkey).where(Passkey.user_id == user.id)).all()
    if len(existing) >= MAX_PER_ACCOUNT:
        raise conflict(f"an account has at most {MAX_PER_ACCOUNT} passkeys", code="passkey_limit")
    rp = settings.webauthn
    options = generate_registration_options(
        rp_id=rp.rp_id, rp_name=rp.rp_name, user_id=user_handle(user), user_name=user.email,
        user_display_name=user.display_name or user.email, timeout=_timeout_ms(settings),
        authenticator_selection=AuthenticatorSelectionCriteria(
            resident_key=ResidentKeyRequirement.REQUIRED,
            user_verification=UserVerificationRequirement.REQUIRED),
        exclude_credentials=[_descriptor(p) for p in existing],
    )
    _keep_challenge(db, settings, options.challenge, REGISTRATION, user, now)
    return _options(options)


def _descriptor(passkey: Passkey):
    from webauthn import base64url_to_bytes
    from webauthn.helpers.structs import PublicKeyCredentialDescriptor

    return PublicKeyCredentialDescriptor(id=base64url_to_bytes(passkey.credential_id))


def register(db: Session, settings: AuthSettings, user: User, session_id, credential: dict,
             name: str, now: datetime) -> Passkey:
    """Check the browser's answer to the options of :func:`registration_options`
    (from a live session of the account, 403 ``session_required``) and keep
    the passkey. 400 ``invalid_passkey`` (details.reason), 400
    ``passkey_challenge_invalid``, 409 ``passkey_exists``; a refusal after the
    challenge was taken is a RecordedFailure."""
    from webauthn import verify_registration_response
    from webauthn.helpers import bytes_to_base64url, parse_registration_credential_json

    sessions.ensure_signed_in(db, user, session_id, now)
    ensure_verified(user)
    parsed, challenge = _parse(parse_registration_credential_json, credential, 400)
    _take_challenge(db, challenge, REGISTRATION, user, now)
    rp = settings.webauthn
    try:
        verified = verify_registration_response(
            credential=parsed, expected_challenge=challenge, expected_rp_id=rp.rp_id,
            expected_origin=list(rp.origins), require_user_verification=True)
    except _malformed() as exc:
        log.info("passkey registration refused: %s", exc, extra={"user_id": str(user.id)})
        raise RecordedFailure(invalid_passkey(400, "verification")) from None
    credential_id = bytes_to_base64url(verified.credential_id)
    if db.scalar(select(Passkey.id).where(Passkey.credential_id == credential_id)) is not None:
        raise RecordedFailure(conflict("this passkey is already registered", code="passkey_exists"))
    passkey = Passkey(
        user_id=user.id, credential_id=credential_id, public_key=verified.credential_public_key,
        sign_count=verified.sign_count, name=name, aaguid=verified.aaguid,
        transports=[str(getattr(t, "value", t)) for t in (parsed.response.transports or [])],
        backed_up=verified.credential_backed_up, created_at=now,
    )
    db.add(passkey)
    db.flush()
    return passkey


# ---------------------------------------------------------------- sign-in


def authentication_options(db: Session, settings: AuthSettings, now: datetime) -> dict:
    """Options for navigator.credentials.get(): no account named (the
    authenticator offers its discoverable passkeys), user verification required."""
    from webauthn import generate_authentication_options
    from webauthn.helpers.structs import UserVerificationRequirement

    options = generate_authentication_options(
        rp_id=settings.webauthn.rp_id, timeout=_timeout_ms(settings),
        user_verification=UserVerificationRequirement.REQUIRED)
    _keep_challenge(db, settings, options.challenge, AUTHENTICATION, None, now)
    return _options(options)


def login(db: Session, settings: AuthSettings, credential: dict, client_ip: str | None,
          user_agent: str | None, now: datetime) -> sessions.LoginResult:
    """Check the browser's answer to :func:`authentication_options` and open a
    session, as a password login does (no TOTP asked: see the module's doc).
    401 ``invalid_passkey``, 401 ``passkey_clone_suspected``, 403
    ``account_disabled``, 400 ``passkey_challenge_invalid``."""
    from webauthn import verify_authentication_response
    from webauthn.helpers import parse_authentication_credential_json

    parsed, challenge = _parse(parse_authentication_credential_json, credential, 401)
    _take_challenge(db, challenge, AUTHENTICATION, None, now)
    passkey = db.scalar(select(Passkey).where(Passkey.credential_id == parsed.id))
    if passkey is None:
        raise RecordedFailure(invalid_passkey(401, "unknown"))
    user = db.get(User, passkey.user_id)
    handle = parsed.response.user_handle
    if handle is not None and bytes(handle) != user_handle(user):
        raise RecordedFailure(invalid_passkey(401, "verification"))
    rp = settings.webauthn
    try:
        verified = verify_authentication_response(
            credential=parsed, expected_challenge=challenge, expected_rp_id=rp.rp_id,
            expected_origin=list(rp.origins), credential_public_key=passkey.public_key,
            credential_current_sign_count=passkey.sign_count, require_user_verification=True)
    except _malformed() as exc:
        if _counter_went_back(parsed, passkey.sign_count):
            log.warning("passkey refused: its counter went backwards (a copy?)",
                        extra={"user_id": str(user.id), "passkey_id": str(passkey.id)})
            raise RecordedFailure(passkey_clone_suspected()) from None
        log.info("passkey sign-in refused: %s", exc, extra={"passkey_id": str(passkey.id)})
        raise RecordedFailure(invalid_passkey(401, "verification")) from None
    if user.disabled_at is not None:
        raise RecordedFailure(account_disabled())
    # The counter moves only from the value this check saw: of two answers
    # checked at once (two challenges), one wins; the other is refused.
    moved = db.execute(
        update(Passkey).where(Passkey.id == passkey.id, Passkey.sign_count == passkey.sign_count)
        .values(sign_count=verified.new_sign_count, last_used_at=now,
                backed_up=verified.credential_backed_up)
        .execution_options(synchronize_session=False)).rowcount
    if moved != 1:
        raise RecordedFailure(invalid_passkey(401, "verification"))
    for name, value in (("sign_count", verified.new_sign_count), ("last_used_at", now),
                        ("backed_up", verified.credential_backed_up)):
        set_committed_value(passkey, name, value)
    return sessions.open_session(db, settings, user, client_ip, user_agent, now)


def _counter_went_back(parsed, stored: int) -> bool:
    from webauthn.helpers import parse_authenticator_data

    try:
        count = parse_authenticator_data(bytes(parsed.response.authenticator_data)).sign_count
    except _malformed():
        return False
    return (count > 0 or stored > 0) and count <= stored


# ---------------------------------------------------------------- the caller's passkeys


def list_for(db: Session, user: User, limit: int, cursor: str | None):
    stmt = select(Passkey).where(Passkey.user_id == user.id)
    return paginate(db, stmt, Passkey.created_at, Passkey.id, limit, cursor)


def view(passkey: Passkey) -> dict:
    return {"id": passkey.id, "name": passkey.name, "created_at": passkey.created_at,
            "last_used_at": passkey.last_used_at, "aaguid": passkey.aaguid,
            "transports": list(passkey.transports or []), "backed_up": passkey.backed_up}


def remove(db: Session, user: User, passkey_id) -> None:
    """Delete one of ``user``'s passkeys (404 for anyone else's). 409
    ``last_sign_in_method`` when the account would be left with no way to sign in."""
    locked(db, User, user.id)  # two removals at once cannot both take the last two
    passkey = db.get(Passkey, client_id(passkey_id, "passkey"))
    if passkey is None or passkey.user_id != user.id:
        raise not_found("passkey")
    if not other_ways_to_sign_in(db, user, passkey=passkey):
        raise conflict("this passkey is the account's last way to sign in",
                       code="last_sign_in_method")
    db.delete(passkey)
    db.flush()
