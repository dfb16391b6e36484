"""Auth service contracts: its events, RPC payloads and the objects it returns.

The gateway uses the request schemas as its HTTP body schemas too, so the HTTP
contract (docs/api.md "Accounts") and the RPC contract cannot drift apart.
"""

from __future__ import annotations

import unicodedata

from marshmallow import fields, validate

from services.common.contracts.base import (
    EventSchema,
    PageQuery,
    RpcSchema,
    Sealed,
    page_of,
    register_event,
)

EMAIL_MAX = 254
PASSWORD_MIN = 10
PASSWORD_MAX = 128
DISPLAY_NAME_MAX = 80
BIO_MAX = 500
KEY_NAME_MAX = 64

_code = validate.Regexp(r"^\d{6}$", error="must be 6 digits")


def normalise_email(value: str) -> str:
    """The one spelling of an address the auth service stores and compares:
    surrounding whitespace stripped, Unicode NFKC, lower case."""
    return unicodedata.normalize("NFKC", value.strip()).lower()


class NormalisedEmail(fields.Email):
    """An email address, normalised (:func:`normalise_email`) before validation."""

    def _deserialize(self, value, attr, data, **kwargs):
        if isinstance(value, str):
            value = normalise_email(value)
        return super()._deserialize(value, attr, data, **kwargs)


def Email(**kw):
    return NormalisedEmail(validate=validate.Length(max=EMAIL_MAX), **kw)


def Password(**kw):
    return fields.String(validate=validate.Length(min=PASSWORD_MIN, max=PASSWORD_MAX), **kw)


# ---------------------------------------------------------------- events


class AccountEvent(EventSchema):
    """Base of auth's events: the account, and the address to mail about it."""

    user_id = fields.UUID(required=True)
    email = fields.Email(required=True)


@register_event("auth.user_registered")
class UserRegistered(AccountEvent):
    display_name = fields.String(allow_none=True, load_default=None)


@register_event("auth.email_verification_requested")
class EmailVerificationRequested(AccountEvent):
    sealed_code = Sealed(required=True, metadata={"description": "the 6-digit code, sealed"})
    expires_at = fields.AwareDateTime(required=True)
    purpose = fields.String(required=True, validate=validate.OneOf(["registration", "email_change"]))


@register_event("auth.password_reset_requested")
class PasswordResetRequested(AccountEvent):
    sealed_token = Sealed(required=True, metadata={"description": "the reset token, sealed"})
    expires_at = fields.AwareDateTime(required=True)


@register_event("auth.password_changed")
class PasswordChanged(AccountEvent):
    """A new password was set (a reset): every session and API key was revoked."""

    changed_at = fields.AwareDateTime(required=True)
    sessions = fields.Integer(required=True, metadata={"description": "sessions revoked"})
    api_keys = fields.Integer(required=True, metadata={"description": "API keys revoked"})


@register_event("auth.signup_attempted")
class SignupAttempted(AccountEvent):
    """Someone registered an address that already has this account."""

    attempted_at = fields.AwareDateTime(required=True)


@register_event("auth.suspicious_login")
class SuspiciousLogin(AccountEvent):
    network = fields.String(required=True)
    user_agent = fields.String(allow_none=True, load_default=None)
    login_at = fields.AwareDateTime(required=True)


@register_event("auth.user_updated")
class UserUpdated(EventSchema):
    """What ``get_user`` answers for the account changed (profile, address,
    verification, two-factor, restriction, administrator, disabled): the
    gateways' read caches drop the account's entries. No address: nothing
    mails on it."""

    user_id = fields.UUID(required=True)


# ---------------------------------------------------------------- requests


class AgeFields(RpcSchema):
    """The age gate's answers (AUTH_MINIMUM_AGE, docs/api.md): checked, never stored."""

    birth_date = fields.Date(metadata={"description": "YYYY-MM-DD; needed when the operator "
                                                      "sets a minimum age; never stored"})
    age_confirmed = fields.Boolean(metadata={"description": "true: the person meets the minimum "
                                                            "age (AUTH_AGE_CHECK=attestation)"})


class Register(AgeFields):
    email = Email(required=True)
    password = Password(required=True)
    display_name = fields.String(validate=validate.Length(min=1, max=DISPLAY_NAME_MAX))


class VerifyEmail(RpcSchema):
    email = Email(required=True)
    code = fields.String(required=True, validate=_code)


class EmailOnly(RpcSchema):
    email = Email(required=True)


class Login(RpcSchema):
    email = Email(required=True)
    # Login accepts any password up to the maximum: a policy tightened later
    # must not lock out accounts whose passwords were valid when set.
    password = fields.String(required=True, validate=validate.Length(min=1, max=PASSWORD_MAX))
    totp_code = fields.String(validate=_code)


class ConfirmPasswordReset(RpcSchema):
    token = fields.String(required=True, validate=validate.Length(min=1, max=200))
    new_password = Password(required=True)


class UpdateProfile(RpcSchema):
    display_name = fields.String(allow_none=True, validate=validate.Length(min=1, max=DISPLAY_NAME_MAX))
    bio = fields.String(allow_none=True, validate=validate.Length(max=BIO_MAX))
    avatar_image_id = fields.UUID(allow_none=True)


class ChangeEmail(RpcSchema):
    new_email = Email(required=True)
    password = fields.String(required=True, validate=validate.Length(min=1, max=PASSWORD_MAX))


class CreateApiKey(RpcSchema):
    name = fields.String(required=True, validate=validate.Length(min=1, max=KEY_NAME_MAX))


class TotpCode(RpcSchema):
    code = fields.String(required=True, validate=_code)


class Credentials(RpcSchema):
    """What ``auth.authenticate`` resolves: exactly one of the two."""

    token = fields.String(validate=validate.Length(min=1, max=200))
    api_key = fields.String(validate=validate.Length(min=1, max=200))


# ---------------------------------------------------------------- responses


class User(RpcSchema):
    id = fields.UUID(required=True)
    email = fields.Email(required=True)
    email_verified = fields.Boolean(required=True)
    display_name = fields.String(allow_none=True)
    bio = fields.String(allow_none=True)
    avatar_image_id = fields.UUID(allow_none=True)
    created_at = fields.AwareDateTime(required=True)
    plan = fields.String(required=True)
    processing_restricted = fields.Boolean(required=True)
    totp_enabled = fields.Boolean(required=True)
    is_admin = fields.Boolean(required=True)


class ApiKey(RpcSchema):
    id = fields.UUID(required=True)
    name = fields.String(required=True)
    prefix = fields.String(required=True)
    created_at = fields.AwareDateTime(required=True)
    last_used_at = fields.AwareDateTime(allow_none=True)


class NewApiKey(ApiKey):
    key = fields.String(required=True, metadata={"description": "the secret, shown only once"})


class Session(RpcSchema):
    id = fields.UUID(required=True)
    created_at = fields.AwareDateTime(required=True)
    expires_at = fields.AwareDateTime(required=True)
    last_used_at = fields.AwareDateTime(allow_none=True)
    user_agent = fields.String(allow_none=True)
    network = fields.String(allow_none=True)
    current = fields.Boolean(required=True)


class Registered(RpcSchema):
    """The same for a new address and one that has an account (which is not
    told apart). No API key: create one with ``POST /v1/me/api-keys`` once the
    address is verified."""

    user = fields.Nested(User, required=True)
    api_key = fields.Nested(NewApiKey, required=True, allow_none=True, metadata={
        "description": "always null: API keys are made once the address is verified"})


class LoggedIn(RpcSchema):
    token = fields.String(required=True)
    expires_at = fields.AwareDateTime(required=True)
    user = fields.Nested(User, required=True)


class TotpEnrollment(RpcSchema):
    secret = fields.String(required=True)
    otpauth_uri = fields.String(required=True)


class Principal(RpcSchema):
    """Who a credential belongs to, as the gateway caches it."""

    user_id = fields.UUID(required=True)
    email_verified = fields.Boolean(required=True)
    is_admin = fields.Boolean(required=True)
    processing_restricted = fields.Boolean(required=True)
    plan = fields.String(required=True)
    credential_type = fields.String(required=True, validate=validate.OneOf(["session", "api_key"]))
    credential_id = fields.UUID(required=True)


class VerifiedEmail(RpcSchema):
    """``auth.verify_email``'s answer."""

    user = fields.Nested(User, required=True)


ApiKeyPage = page_of(ApiKey, "ApiKeyPage")
SessionPage = page_of(Session, "SessionPage")


class WebhookSecret(RpcSchema):
    """``auth.get_webhook_secret`` and ``auth.rotate_webhook_secret``'s answer."""

    secret = fields.String(required=True, metadata={
        "description": "whsec_<base64>: the Standard Webhooks secret whose decoded bytes "
                       "key the HMAC-SHA256 in webhook-signature"})
    created_at = fields.AwareDateTime(required=True)


class AdminChanged(RpcSchema):
    """``auth.set_admin``'s answer; ``otpauth_uri`` only when TOTP was enrolled just now."""

    user_id = fields.UUID(required=True)
    is_admin = fields.Boolean(required=True)
    otpauth_uri = fields.String(allow_none=True, required=True)
    api_keys_revoked = fields.Integer(required=True)


class Reauthenticate(RpcSchema):
    """``auth.reauthenticate``: a signed-in user proves again who they are
    (the password, and the TOTP code when two-factor sign-in is on) before
    an irreversible act, an erasure."""

    user_id = fields.UUID(required=True)
    password = fields.String(required=True, validate=validate.Length(min=1, max=PASSWORD_MAX))
    totp_code = fields.String(allow_none=True, load_default=None, validate=_code)


# ---------------------------------------------------------------- operators (darkroom-ops)


class UserQuery(PageQuery):
    """``auth.list_users``: newest first, optionally the addresses containing ``email``."""

    email = fields.String(load_default=None, validate=validate.Length(min=1, max=EMAIL_MAX))


class OperatorUser(User):
    """An account as operators see it: its state and live credentials."""

    disabled_at = fields.AwareDateTime(allow_none=True, required=True)
    updated_at = fields.AwareDateTime(required=True)
    sessions_active = fields.Integer(required=True)
    api_keys_active = fields.Integer(required=True)


OperatorUserPage = page_of(OperatorUser, "OperatorUserPage")


class UserDisabled(RpcSchema):
    """``auth.disable_user`` / ``auth.enable_user``."""

    user_id = fields.UUID(required=True)
    email = fields.Email(required=True)
    disabled = fields.Boolean(required=True)
    sessions_revoked = fields.Integer(required=True)
    api_keys_revoked = fields.Integer(required=True)


class RevokeKeys(RpcSchema):
    """``auth.revoke_keys``: exactly one of a key's id, its prefix, or a user (all its keys)."""

    key_id = fields.UUID(load_default=None)
    prefix = fields.String(load_default=None, validate=validate.Length(min=1, max=200),
                           metadata={"description": "drk_<prefix>, the prefix, or the whole key"})
    user = fields.String(load_default=None, validate=validate.Length(min=1, max=EMAIL_MAX),
                         metadata={"description": "a user's id or address"})


class RevokedKey(RpcSchema):
    id = fields.UUID(required=True)
    prefix = fields.String(required=True)
    name = fields.String(required=True)
    user_id = fields.UUID(required=True)


class KeysRevoked(RpcSchema):
    items = fields.List(fields.Nested(RevokedKey), required=True)
