"""Accounts (docs/api.md "Accounts"): /v1/auth/* and /v1/me*, mapped onto the auth
service's RPC surface. Request bodies and responses use the auth contracts."""

from __future__ import annotations

from contextlib import suppress

from flask import current_app, g, request
from flask.views import MethodView
from marshmallow import Schema, fields
from nameko.exceptions import RemoteError, UnknownService

from gateway.api.common import Blueprint, cached_answer, call, errors, for_caller
from gateway.auth import authenticated, current_principal
from gateway.readcache import wrote
from services.common.contracts import PageQuery
from services.common.contracts import auth as c
from services.common.contracts.privacy import PolicyStatus
from services.common.errors import DomainError

USER_AGENT_MAX = 512

auth_blp = Blueprint("auth", __name__, url_prefix="/v1/auth",
                     description="Registration, email verification, login and password reset")
me_blp = Blueprint("me", __name__, url_prefix="/v1/me",
                   description="The caller's account: profile, API keys, sessions, two-factor, "
                               "webhook secret")


class Accepted(Schema):
    """An empty object: the request was accepted."""


class Me(c.User):
    """The caller's account, and where it stands with the privacy policy
    (null when the privacy service did not answer)."""

    policy = fields.Nested(PolicyStatus, allow_none=True, metadata={
        "description": "acceptance_required: the current material policy version awaits "
                       "acceptance (POST /v1/privacy/policy/accept)"})


POLICY_TIMEOUT_SECONDS = 2.0
READ_CACHE_SECONDS = float("inf")  # the read cache's own bound: a profile with a policy status


def _user_and_policy(user_id: str) -> tuple[dict, dict | None]:
    """The account (auth) and its policy status (privacy), both requests in
    flight at once over one pooled proxy. The policy status is None when
    privacy does not answer within a short wait (the account page must not
    fail, or hang, for it)."""
    user = None
    try:
        with current_app.extensions["darkroom"].rpc.get() as proxy:
            try:
                pending = proxy.privacy.policy_status.call_async(user_id)
            except UnknownService:  # no privacy service runs: no policy status
                pending = None
            try:
                user = proxy.auth.get_user(user_id)
            except Exception:
                # collect privacy's reply all the same: a reply left unread
                # would stay on this pooled proxy's reply queue
                if pending is not None:
                    with suppress(DomainError, RemoteError):
                        proxy.wait(pending, POLICY_TIMEOUT_SECONDS)
                raise
            if pending is None:
                return user, None
            return user, proxy.wait(pending, POLICY_TIMEOUT_SECONDS)
    except DomainError as exc:
        if user is None or exc.status < 500:
            raise
        return user, None


def client_info() -> dict:
    agent = request.headers.get("User-Agent")
    return {
        "client_ip": request.remote_addr,
        "user_agent": agent[:USER_AGENT_MAX] if agent else None,
    }


def _cache():
    return current_app.extensions["darkroom"].auth_cache


# ------------------------------------------------------------ /v1/auth


@auth_blp.route("/register", methods=["POST"])
@errors(409)
@auth_blp.arguments(c.Register)
@auth_blp.response(201, c.Registered)
def register(payload):
    """Create an account and mail a code to verify it (the same answer for an address that has
    an account; its owner is told by mail). No API key: create one once the address is verified"""
    return call(c.Registered, "auth.register", payload, **client_info())


@auth_blp.route("/verify-email", methods=["POST"])
@auth_blp.arguments(c.VerifyEmail)
@auth_blp.response(200, c.VerifiedEmail)
def verify_email(payload):
    """Confirm an address (after registering or changing email) with its code"""
    answer = call(c.VerifiedEmail, "auth.verify_email", payload)
    wrote(str(answer["user"]["id"]))  # no credential: the write stamp is the verified user's
    return answer


@auth_blp.route("/resend-verification", methods=["POST"])
@auth_blp.arguments(c.EmailOnly)
@auth_blp.response(202, Accepted)
def resend_verification(payload):
    """Send a new verification code (same answer whether or not the address has an account)"""
    call(None, "auth.resend_verification", payload)
    return {}


@auth_blp.route("/login", methods=["POST"])
@errors(401)
@auth_blp.arguments(c.Login)
@auth_blp.response(200, c.LoggedIn)
def login(payload):
    """Start a session (7 days); totp_code is needed when two-factor is on"""
    return call(c.LoggedIn, "auth.login", payload, **client_info())


@auth_blp.route("/logout", methods=["POST"])
@auth_blp.response(204)
@authenticated
def logout():
    """Revoke the session used for this request (a bearer session token)"""
    principal = current_principal()
    if principal.credential_type != "session":
        raise DomainError("invalid_request", "logout revokes a session: call it with the session's bearer token", 400)
    call(None, "auth.logout", principal.credential_id)
    _cache().evict(g.credential_key)
    _cache().evict_credential(principal.credential_id)


@auth_blp.route("/password-reset", methods=["POST"])
@auth_blp.arguments(c.EmailOnly)
@auth_blp.response(202, Accepted)
def request_password_reset(payload):
    """Mail a reset link (same answer whether or not the address has an account)"""
    call(None, "auth.request_password_reset", payload)
    return {}


@auth_blp.route("/password-reset/confirm", methods=["POST"])
@auth_blp.arguments(c.ConfirmPasswordReset)
@auth_blp.response(204)
def confirm_password_reset(payload):
    """Set a new password with the mailed token; revokes every session and API key of the
    account, and the owner is told by mail"""
    call(None, "auth.confirm_password_reset", payload)


# ------------------------------------------------------------ /v1/me


@me_blp.route("")
class MeView(MethodView):
    @me_blp.response(200, Me)
    @authenticated
    def get(self):
        """The caller's account, and whether a new privacy policy version awaits acceptance"""
        user_id = current_principal().user_id
        return cached_answer(Me, "me", user_id, None, lambda: _user_and_policy(user_id),
                             lambda answer: None if answer[1] is None else READ_CACHE_SECONDS,
                             lambda answer: {**answer[0], "policy": answer[1]})

    @me_blp.response(200, c.User)
    @authenticated
    @me_blp.arguments(c.UpdateProfile)
    def patch(self, payload):
        """Change display name, bio or avatar"""
        return for_caller(c.User, "auth.update_profile", payload)


@me_blp.route("/email", methods=["POST"])
@me_blp.response(202, Accepted)
@errors(403, 409)
@authenticated
@me_blp.arguments(c.ChangeEmail)
def change_email(payload):
    """Change the address (verified accounts): a code is mailed to the new one (confirm with
    /v1/auth/verify-email); a wrong password counts toward the login lockout"""
    for_caller(None, "auth.request_email_change", payload, client_ip=client_info()["client_ip"])
    return {}


@me_blp.route("/api-keys")
class ApiKeys(MethodView):
    @me_blp.arguments(PageQuery, location="query")
    @me_blp.response(200, c.ApiKeyPage)
    @authenticated
    def get(self, page):
        """The caller's API keys (never their secrets), newest first"""
        return for_caller(c.ApiKeyPage, "auth.list_api_keys", page=page)

    @me_blp.response(201, c.NewApiKey)
    @errors(409)
    @authenticated
    @me_blp.arguments(c.CreateApiKey)
    def post(self, payload):
        """Create an API key (verified accounts, not administrators); its secret (key) is shown
        only in this answer"""
        return for_caller(c.NewApiKey, "auth.create_api_key", payload)


@me_blp.route("/api-keys/<uuid:key_id>", methods=["DELETE"])
@me_blp.response(204)
@authenticated
def revoke_api_key(key_id):
    """Revoke an API key"""
    for_caller(None, "auth.revoke_api_key", str(key_id))
    _cache().evict_credential(str(key_id))


@me_blp.route("/sessions", methods=["GET"])
@me_blp.arguments(PageQuery, location="query")
@me_blp.response(200, c.SessionPage)
@authenticated
def list_sessions(page):
    """The caller's active sessions, newest first; `current` marks the one making this request"""
    principal = current_principal()
    current = principal.credential_id if principal.credential_type == "session" else None
    return call(c.SessionPage, "auth.list_sessions", principal.user_id, current_session_id=current,
                page=page)


@me_blp.route("/sessions/<uuid:session_id>", methods=["DELETE"])
@me_blp.response(204)
@authenticated
def revoke_session(session_id):
    """Revoke one of the caller's sessions"""
    for_caller(None, "auth.revoke_session", str(session_id))
    _cache().evict_credential(str(session_id))


@me_blp.route("/totp", methods=["POST"])
@me_blp.response(201, c.TotpEnrollment)
@errors(409)
@authenticated
def begin_totp():
    """Start two-factor enrollment: a secret and otpauth:// URI for an authenticator app"""
    return for_caller(c.TotpEnrollment, "auth.begin_totp_enrollment")


@me_blp.route("/totp/confirm", methods=["POST"])
@me_blp.response(204)
@authenticated
@me_blp.arguments(c.TotpCode)
def confirm_totp(payload):
    """Turn two-factor on with a first code from the authenticator app"""
    for_caller(None, "auth.confirm_totp_enrollment", payload)


@me_blp.route("/webhook-secret", methods=["GET"])
@me_blp.response(200, c.WebhookSecret)
@authenticated
def webhook_secret():
    """The whsec_ secret that signs the caller's webhooks (Standard Webhooks); made on first use"""
    return for_caller(c.WebhookSecret, "auth.get_webhook_secret")


@me_blp.route("/webhook-secret/rotate", methods=["POST"])
@me_blp.response(200, c.WebhookSecret)
@authenticated
def rotate_webhook_secret():
    """Replace the webhook secret; webhooks are signed with the new one from now on"""
    return for_caller(c.WebhookSecret, "auth.rotate_webhook_secret")
