"""The auth service's tables.

Personal fields (addresses, display names, bios, sessions' user agents and
networks, the history of changes) are encrypted (services/common/fieldcrypt.py);
addresses are found by their blind index (``email_index``).

Secrets are never stored in a form that can be replayed: session tokens, API
keys and password-reset tokens as SHA-256, verification codes and login
networks as HMACs keyed with ``AUTH.SECRET_KEY``, passwords as argon2id. TOTP
secrets and webhook signing secrets are the exceptions: the server must compute
codes and signatures from them.
"""

from __future__ import annotations

import uuid
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, declared_attr, mapped_column, validates

from services.common.contracts.auth import KEY_NAME_MAX
from services.common.contracts.passkeys import PASSKEY_CREDENTIAL_ID_MAX
from services.common.db import UtcDateTime
from services.common.fieldcrypt import Encrypted, EncryptedJSON, email_index, email_index_of
from services.common.models import IdMixin, service_base
from services.common.outbox import outbox_table

Base = service_base()


def _user_fk() -> sa.ForeignKey:
    return sa.ForeignKey("users.id", ondelete="CASCADE")


class User(IdMixin, Base):
    __tablename__ = "users"

    # Encrypted (services/common/fieldcrypt.py); found by its blind index,
    # kept in step by _index_email.
    email: Mapped[str] = mapped_column(Encrypted("users.email"))
    email_index: Mapped[str] = mapped_column(sa.String(64), unique=True,
                                             default=email_index_of("email"))
    email_verified: Mapped[bool] = mapped_column(
        sa.Boolean, default=False, server_default=sa.false()
    )
    password_hash: Mapped[str] = mapped_column(sa.String(255))
    display_name: Mapped[str | None] = mapped_column(Encrypted("users.display_name"))
    bio: Mapped[str | None] = mapped_column(Encrypted("users.bio"))
    avatar_image_id: Mapped[uuid.UUID | None] = mapped_column(sa.Uuid)
    plan: Mapped[str] = mapped_column(sa.String(32))
    processing_restricted: Mapped[bool] = mapped_column(
        sa.Boolean, default=False, server_default=sa.false()
    )
    is_admin: Mapped[bool] = mapped_column(sa.Boolean, default=False, server_default=sa.false())
    # set by an operator (services/auth/operators.py): no sign-in while set
    disabled_at: Mapped[datetime | None] = mapped_column(UtcDateTime())
    # Base32 secret of the confirmed TOTP enrolment (None: TOTP off), one waiting
    # for its first code, and the last time step accepted (replay protection).
    totp_secret: Mapped[str | None] = mapped_column(sa.String(64))
    totp_pending_secret: Mapped[str | None] = mapped_column(sa.String(64))
    totp_last_step: Mapped[int | None] = mapped_column(sa.BigInteger)
    # The age gate (services/auth/age.py): when the account was found to meet
    # AUTH_MINIMUM_AGE. Only that fact is kept, never the birth date.
    minimum_age_met_at: Mapped[datetime | None] = mapped_column(UtcDateTime())
    created_at: Mapped[datetime] = mapped_column(UtcDateTime())
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime())

    @property
    def totp_enabled(self) -> bool:
        return self.totp_secret is not None

    @validates("email")
    def _index_email(self, _key, value):
        self.email_index = email_index(value)
        return value


class UserSession(IdMixin, Base):
    __tablename__ = "sessions"
    __table_args__ = (sa.Index("ix_sessions_user_id_created_at", "user_id", "created_at"),)

    user_id: Mapped[uuid.UUID] = mapped_column(sa.Uuid, _user_fk())
    token_hash: Mapped[str] = mapped_column(sa.String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime())
    expires_at: Mapped[datetime] = mapped_column(UtcDateTime())
    last_used_at: Mapped[datetime | None] = mapped_column(UtcDateTime())
    revoked_at: Mapped[datetime | None] = mapped_column(UtcDateTime())
    user_agent: Mapped[str | None] = mapped_column(Encrypted("sessions.user_agent"))
    # The client's network (IPv4 /24, IPv6 /48), shown in the sessions list.
    network: Mapped[str | None] = mapped_column(Encrypted("sessions.network"))


class ApiKey(IdMixin, Base):
    __tablename__ = "api_keys"
    __table_args__ = (sa.Index("ix_api_keys_user_id_created_at", "user_id", "created_at"),)

    user_id: Mapped[uuid.UUID] = mapped_column(sa.Uuid, _user_fk())
    name: Mapped[str] = mapped_column(sa.String(KEY_NAME_MAX))
    prefix: Mapped[str] = mapped_column(sa.String(16))
    key_hash: Mapped[str] = mapped_column(sa.String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime())
    last_used_at: Mapped[datetime | None] = mapped_column(UtcDateTime())
    revoked_at: Mapped[datetime | None] = mapped_column(UtcDateTime())


class EmailVerification(IdMixin, Base):
    """A 6-digit code sent to ``email``: to verify a new account's address
    (purpose ``registration``) or to move an account to a new one (``email_change``)."""

    __tablename__ = "email_verifications"
    # One live code per account and address: a second request made at the same
    # moment as the first cannot leave two codes to guess at.
    __table_args__ = (
        sa.Index("uq_email_verifications_live", "user_id", "email_index", unique=True,
              postgresql_where=sa.text("used_at IS NULL AND superseded_at IS NULL"),
              sqlite_where=sa.text("used_at IS NULL AND superseded_at IS NULL")),
    )

    user_id: Mapped[uuid.UUID] = mapped_column(sa.Uuid, _user_fk(), index=True)
    purpose: Mapped[str] = mapped_column(sa.String(20))
    email: Mapped[str] = mapped_column(Encrypted("email_verifications.email"))
    email_index: Mapped[str] = mapped_column(sa.String(64), index=True,
                                             default=email_index_of("email"))
    code_hmac: Mapped[str] = mapped_column(sa.String(64))
    attempts: Mapped[int] = mapped_column(sa.Integer, default=0, server_default="0")
    created_at: Mapped[datetime] = mapped_column(UtcDateTime())
    expires_at: Mapped[datetime] = mapped_column(UtcDateTime())
    used_at: Mapped[datetime | None] = mapped_column(UtcDateTime())
    superseded_at: Mapped[datetime | None] = mapped_column(UtcDateTime())

    @validates("email")
    def _index_email(self, _key, value):
        self.email_index = email_index(value)
        return value


class PasswordReset(IdMixin, Base):
    __tablename__ = "password_resets"

    user_id: Mapped[uuid.UUID] = mapped_column(sa.Uuid, _user_fk(), index=True)
    token_hash: Mapped[str] = mapped_column(sa.String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime())
    expires_at: Mapped[datetime] = mapped_column(UtcDateTime())
    used_at: Mapped[datetime | None] = mapped_column(UtcDateTime())
    superseded_at: Mapped[datetime | None] = mapped_column(UtcDateTime())


class Throttle(Base):
    """Attempts counted against a subject: the HMAC of a normalised email
    (a login to that account, known or not), of a client address (logins from
    it), or of an address being verified (codes tried for it, whatever the
    account). ``attempts`` is taken *before* the password or code is checked
    (a conditional update, so parallel attempts cannot outrun the budget) and
    counts from ``window_started_at``; a subject that uses up its budget is
    refused until ``locked_until`` (services/auth/lockout.py)."""

    __tablename__ = "throttles"

    subject: Mapped[str] = mapped_column(sa.String(64), primary_key=True)
    attempts: Mapped[int] = mapped_column(sa.Integer, default=0, server_default="0")
    window_started_at: Mapped[datetime] = mapped_column(UtcDateTime())
    locked_until: Mapped[datetime | None] = mapped_column(UtcDateTime())


class KnownNetwork(IdMixin, Base):
    """A network an account has logged in from, as an HMAC (never in clear)."""

    __tablename__ = "known_networks"
    __table_args__ = (sa.UniqueConstraint("user_id", "network_hmac"),)

    user_id: Mapped[uuid.UUID] = mapped_column(sa.Uuid, _user_fk())
    network_hmac: Mapped[str] = mapped_column(sa.String(64))
    first_seen_at: Mapped[datetime] = mapped_column(UtcDateTime())


class WebhookSecret(Base):
    """The account's webhook signing secret (``whsec_...``), made on first use.
    Kept in clear: the generation service signs each webhook with it."""

    __tablename__ = "webhook_secrets"

    user_id: Mapped[uuid.UUID] = mapped_column(sa.Uuid, _user_fk(), primary_key=True)
    secret: Mapped[str] = mapped_column(sa.String(64))
    created_at: Mapped[datetime] = mapped_column(UtcDateTime())


class AccountChange(IdMixin, Base):
    """The history of an account's rectifications, for its owner's export:
    each address change (from, to) and profile change (the fields, before
    and after). Kept until the account is erased."""

    __tablename__ = "account_changes"

    user_id: Mapped[uuid.UUID] = mapped_column(sa.Uuid, _user_fk(), index=True)
    kind: Mapped[str] = mapped_column(sa.String(32))  # email_changed | profile_updated
    # {field: {"from": ..., "to": ...}}: addresses, names, bios, so encrypted
    changes: Mapped[dict] = mapped_column(EncryptedJSON("account_changes.changes"))
    created_at: Mapped[datetime] = mapped_column(UtcDateTime())


class Passkey(IdMixin, Base):
    """A WebAuthn credential (services/auth/passkeys.py): a passwordless sign-in
    and a second factor. Only its public key is kept; ``sign_count`` is the
    authenticator's counter at its last use (a counter that goes backwards
    betrays a cloned authenticator)."""

    __tablename__ = "passkeys"
    __table_args__ = (sa.Index("ix_passkeys_user_id_created_at", "user_id", "created_at"),)

    user_id: Mapped[uuid.UUID] = mapped_column(sa.Uuid, _user_fk())
    # base64url of the credential id (at most 1023 bytes by WebAuthn)
    credential_id: Mapped[str] = mapped_column(sa.String(PASSKEY_CREDENTIAL_ID_MAX), unique=True)
    public_key: Mapped[bytes] = mapped_column(sa.LargeBinary)  # COSE_Key
    sign_count: Mapped[int] = mapped_column(sa.BigInteger, default=0, server_default="0")
    name: Mapped[str] = mapped_column(sa.String(KEY_NAME_MAX))
    aaguid: Mapped[str] = mapped_column(sa.String(36))  # the authenticator's model
    transports: Mapped[list] = mapped_column(sa.JSON)
    backed_up: Mapped[bool] = mapped_column(sa.Boolean, default=False, server_default=sa.false())
    created_at: Mapped[datetime] = mapped_column(UtcDateTime())
    last_used_at: Mapped[datetime | None] = mapped_column(UtcDateTime())


class PasskeyChallenge(IdMixin, Base):
    """A WebAuthn challenge handed out with registration or sign-in options,
    as its SHA-256: used once (deleted as it is checked), valid for
    ``AUTH_WEBAUTHN_CHALLENGE_TTL_SECONDS``. A registration's names its
    account; a sign-in's none (the passkey names the account)."""

    __tablename__ = "passkey_challenges"

    challenge_hash: Mapped[str] = mapped_column(sa.String(64), unique=True)
    purpose: Mapped[str] = mapped_column(sa.String(20))  # registration | authentication
    user_id: Mapped[uuid.UUID | None] = mapped_column(sa.Uuid, _user_fk(), index=True)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime())
    expires_at: Mapped[datetime] = mapped_column(UtcDateTime(), index=True)


# Events waiting to be published (services.common.outbox).
outbox = outbox_table(Base.metadata)


# ---------------------------------------------------------------- OpenID Connect (services/auth/oidc.py)


class ProviderAccount:
    """An account at an OpenID provider: its subject id, and the address and
    ``email_verified`` its ID token gave."""

    provider: Mapped[str] = mapped_column(sa.String(32))
    subject: Mapped[str] = mapped_column(sa.String(255))
    email_verified: Mapped[bool] = mapped_column(sa.Boolean, default=False,
                                                 server_default=sa.false())

    @declared_attr
    def email(cls) -> Mapped[str | None]:  # a personal field, encrypted per table
        return mapped_column(Encrypted(f"{cls.__tablename__}.email"), nullable=True)


class Identity(IdMixin, ProviderAccount, Base):
    """A provider account linked to a Darkroom account: it signs the account
    in (as the provider's ID token described it when it was linked)."""

    __tablename__ = "identities"
    __table_args__ = (sa.UniqueConstraint("provider", "subject"),)

    user_id: Mapped[uuid.UUID] = mapped_column(sa.Uuid, _user_fk(), index=True)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime())


class OidcFlow(IdMixin, Base):
    """A sign-in started at a provider, waiting for the browser to come back:
    the state (as SHA-256), the nonce and PKCE verifier, where to send the app
    afterwards, and the account that asked to link (None: a sign-in). Deleted
    when the browser comes back (one use) or once expired."""

    __tablename__ = "oidc_flows"

    state_hash: Mapped[str] = mapped_column(sa.String(64), unique=True)
    provider: Mapped[str] = mapped_column(sa.String(32))
    nonce: Mapped[str] = mapped_column(sa.String(64))
    code_verifier: Mapped[str] = mapped_column(sa.String(128))
    redirect_uri: Mapped[str] = mapped_column(sa.String(2000))
    user_id: Mapped[uuid.UUID | None] = mapped_column(sa.Uuid, _user_fk(), index=True)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime())
    expires_at: Mapped[datetime] = mapped_column(UtcDateTime(), index=True)


class OidcCode(IdMixin, ProviderAccount, Base):
    """The one-time code handed to the app (as SHA-256), exchanged for a
    session: for an account (``user_id``), or for the account a new subject
    signs up (the provider's claims, until the exchange). Deleted on use, on
    an under-age answer, or once expired."""

    __tablename__ = "oidc_codes"

    code_hash: Mapped[str] = mapped_column(sa.String(64), unique=True)
    user_id: Mapped[uuid.UUID | None] = mapped_column(sa.Uuid, _user_fk(), index=True)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime())
    expires_at: Mapped[datetime] = mapped_column(UtcDateTime(), index=True)
