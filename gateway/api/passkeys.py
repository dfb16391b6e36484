"""Passkeys (docs/api.md "Passkeys"): /v1/me/passkeys* and /v1/auth/passkey/*,
mapped onto the auth service's passkey RPCs. The routes join the accounts
blueprints (the sign-in ones share /v1/auth's rate limit); the WebAuthn
checks are the auth service's (services/auth/passkeys.py)."""

from __future__ import annotations

from flask.views import MethodView

from gateway.api.accounts import auth_blp, client_info, me_blp
from gateway.api.common import call, errors, for_caller
from gateway.auth import authenticated, current_principal
from services.common.contracts import PageQuery
from services.common.contracts import auth as c
from services.common.contracts import passkeys as pc


def _session_id() -> str | None:
    """The caller's session, which the auth service requires to add a passkey."""
    principal = current_principal()
    return principal.credential_id if principal.credential_type == "session" else None


@me_blp.route("/passkeys")
class Passkeys(MethodView):
    @me_blp.arguments(PageQuery, location="query")
    @me_blp.response(200, pc.PasskeyPage)
    @authenticated
    def get(self, page):
        """The caller's passkeys, newest first"""
        return for_caller(pc.PasskeyPage, "auth.list_passkeys", page=page)

    @me_blp.response(201, pc.Passkey)
    @errors(403, 409)
    @authenticated
    @me_blp.arguments(pc.RegisterPasskey)
    def post(self, payload):
        """Add a passkey: the browser's answer to the options of POST /v1/me/passkeys/options
        (verified accounts, signed in with a session: not with an API key)"""
        return for_caller(pc.Passkey, "auth.register_passkey", payload, session_id=_session_id())


@me_blp.route("/passkeys/options", methods=["POST"])
@me_blp.response(200, pc.PasskeyOptions)
@errors(403, 409)
@authenticated
def passkey_registration_options():
    """Options for navigator.credentials.create() (a discoverable passkey with user
    verification), from a session (not an API key); its challenge is good once, for
    AUTH_WEBAUTHN_CHALLENGE_TTL_SECONDS"""
    return for_caller(pc.PasskeyOptions, "auth.passkey_registration_options",
                      session_id=_session_id())


@me_blp.route("/passkeys/<uuid:passkey_id>", methods=["DELETE"])
@me_blp.response(204)
@errors(409)
@authenticated
def delete_passkey(passkey_id):
    """Remove one of the caller's passkeys (never the account's last way to sign in)"""
    for_caller(None, "auth.delete_passkey", str(passkey_id))


@auth_blp.route("/passkey/options", methods=["POST"])
@auth_blp.response(200, pc.PasskeyOptions)
def passkey_login_options():
    """Options for navigator.credentials.get(): no account named (discoverable passkeys),
    user verification required"""
    return call(pc.PasskeyOptions, "auth.passkey_login_options")


@auth_blp.route("/passkey/login", methods=["POST"])
@errors(401, 403)
@auth_blp.arguments(pc.PasskeyLogin)
@auth_blp.response(200, c.LoggedIn)
def passkey_login(payload):
    """Start a session with a passkey: the browser's answer to the options of
    POST /v1/auth/passkey/options. Answered like a login; a passkey is two factors, so
    administrators give no TOTP code"""
    return call(c.LoggedIn, "auth.passkey_login", payload, **client_info())
