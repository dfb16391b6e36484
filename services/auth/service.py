"""The auth service: accounts, sessions, API keys, email verification, TOTP.

Entrypoints are thin: load the payload through its contract, call the domain
modules, dispatch events (into the outbox, in the same transaction), commit,
dump the answer through its contract.

    nameko run --config deploy/config/auth.yaml services.auth.service:AuthService
"""

from __future__ import annotations

import logging
from contextlib import contextmanager
from pathlib import Path

from services.auth import (
    accounts,
    age,
    keys,
    lookup,
    oidc,
    operators,
    passkeys,
    reauth,
    retention,
    sessions,
    verification,
    webhooks,
)
from services.auth import privacy as privacy_data
from services.auth.errors import RecordedFailure, email_taken, invalid_credentials
from services.auth.models import Base, outbox
from services.auth.settings import AuthSettings
from services.common.contracts import PageQuery, load_rpc
from services.common.contracts import auth as c
from services.common.contracts import oidc as oc
from services.common.contracts import passkeys as pc
from services.common.contracts import privacy as privacy_contracts
from services.common.db import Database
from services.common.errors import DomainError, conflict, invalid_request, unrecorded
from services.common.ids import utcnow
from services.common.messaging import EventPublisher, event_handler
from services.common.privacy_parts import PrivacyParticipant
from services.common.queues import rpc
from services.common.races import first_wins
from services.common.service import DarkroomService, FromConfig
from services.common.timers import timer

# Audit lines carry ids, never emails, passwords, codes or tokens.
log = logging.getLogger(__name__)


def _string_or_none(value, name: str) -> str | None:
    if value is None or isinstance(value, str):
        return value or None
    raise invalid_request(f"{name} must be a string", fields={name: ["Not a valid string."]})


class AuthService(PrivacyParticipant, DarkroomService):
    name = "auth"
    privacy = privacy_data  # its part of privacy requests

    db = Database(migrations=Path(__file__).parent / "migrations", metadata=Base.metadata)
    dispatch = EventPublisher(outbox=outbox)
    settings = FromConfig(AuthSettings.from_config)  # a missing SECRET_KEY stops the start

    # ------------------------------------------------------------ helpers

    def _user_updated(self, user_id) -> None:
        """``auth.user_updated``, in the transaction that changed what
        ``get_user`` answers (the gateways' read caches listen for it)."""
        self.dispatch("user_updated", {"user_id": str(user_id)})

    @contextmanager
    def _recording_failures(self):
        """Commit what a refusal recorded (attempts, failures), then refuse."""
        try:
            yield
        except RecordedFailure as failure:
            self.db.commit()
            if not unrecorded(failure.error):  # an under-age refusal leaves no line
                log.info("refused and recorded: %s", failure.error.code)
            raise failure.error from None

    # ------------------------------------------------------------ registration

    @rpc(expected_exceptions=DomainError)
    def register(self, payload, client_ip=None, user_agent=None) -> dict:
        """The same answer whether or not the address has an account (the
        owner of one is told by mail); never an API key."""
        data = load_rpc(c.Register, payload)
        client_ip = _string_or_none(client_ip, "client_ip")
        # The age gate first: under the minimum, nothing is written (nor logged here).
        minimum_age_met = age.check(self.settings, data.get("birth_date"),
                                    data.get("age_confirmed"), utcnow().date())

        def register_once():
            created = accounts.register(self.db, self.settings, data["email"], data["password"],
                                        data.get("display_name"), client_ip, utcnow(),
                                        minimum_age_met=minimum_age_met)
            for event_type, event in created.events:
                self.dispatch(event_type, event)
            self.db.commit()
            return created

        # A registration of the same address at the same moment may win: then
        # it is an address that has an account, answered the same way.
        created = first_wins(self.db, register_once)
        log.info("registration answered", extra={"new_account": any(
            kind == "user_registered" for kind, _ in created.events)})
        return c.Registered().dump({"user": created.user, "api_key": None})

    @rpc(expected_exceptions=DomainError)
    def verify_email(self, payload) -> dict:
        data = load_rpc(c.VerifyEmail, payload)

        def verify():
            with self._recording_failures():
                user = verification.verify(
                    self.db, self.settings, data["email"], data["code"], utcnow()
                )
                self._user_updated(user.id)
                self.db.commit()
            return user

        # two accounts verifying one address at once: the second is refused
        user = first_wins(self.db, verify, email_taken())
        log.info("email verified", extra={"user_id": str(user.id)})
        return c.VerifiedEmail().dump({"user": user})

    @rpc(expected_exceptions=DomainError)
    def resend_verification(self, payload) -> None:
        data = load_rpc(c.EmailOnly, payload)
        for event in verification.resend(self.db, self.settings, data["email"], utcnow()):
            self.dispatch("email_verification_requested", event)
        self.db.commit()
        return None

    # ------------------------------------------------------------ login and sessions

    @rpc(expected_exceptions=DomainError)
    def login(self, payload, client_ip=None, user_agent=None) -> dict:
        data = load_rpc(c.Login, payload)
        client_ip = _string_or_none(client_ip, "client_ip")
        user_agent = _string_or_none(user_agent, "user_agent")
        now = utcnow()
        # The attempt is counted (and committed) before the password is
        # checked: parallel guesses cannot get past the lockout.
        subjects = sessions.begin_login(self.db, self.settings, data["email"], client_ip, now)
        self.db.commit()

        def login_once():
            with self._recording_failures():
                result = sessions.login(self.db, self.settings, subjects, data["email"],
                                        data["password"], data.get("totp_code"), client_ip,
                                        user_agent, now)
            if result.suspicious_login is not None:
                self.dispatch("suspicious_login", result.suspicious_login)
            self.db.commit()
            return result

        # Two logins from one new network at once: the other one may record it
        # first; once more, and the network is known.
        result = first_wins(self.db, login_once)
        log.info(
            "login",
            extra={
                "user_id": str(result.user.id),
                "session_id": str(result.session.id),
                "new_network": result.suspicious_login is not None,
            },
        )
        return c.LoggedIn().dump(
            {"token": result.token, "expires_at": result.session.expires_at, "user": result.user}
        )

    @rpc(expected_exceptions=DomainError)
    def logout(self, session_id) -> None:
        sessions.end(self.db, session_id, utcnow())
        self.db.commit()
        return None

    @rpc(expected_exceptions=DomainError)
    def authenticate(self, payload) -> dict:
        data = load_rpc(c.Credentials, payload)
        user, kind, credential = sessions.authenticate(
            self.db, data.get("token"), data.get("api_key"), utcnow()
        )
        self.db.commit()
        return c.Principal().dump(sessions.principal(user, kind, credential))

    @rpc(expected_exceptions=DomainError)
    def list_sessions(self, user_id, current_session_id=None, page=None) -> dict:
        query = load_rpc(PageQuery, page)
        user = lookup.get_user(self.db, user_id)
        rows, next_cursor = sessions.list_active(
            self.db, user, utcnow(), query["limit"], query["cursor"]
        )
        items = [sessions.view(s, current_session_id) for s in rows]
        return c.SessionPage().dump({"items": items, "next_cursor": next_cursor})

    @rpc(expected_exceptions=DomainError)
    def revoke_session(self, user_id, session_id) -> None:
        user = lookup.get_user(self.db, user_id)
        sessions.revoke(self.db, session_id, utcnow(), user=user)
        self.db.commit()
        return None

    # ------------------------------------------------------------ OpenID Connect

    @rpc(expected_exceptions=DomainError)
    def oidc_providers(self) -> dict:
        return oc.ProviderList().dump({"items": [{"name": name} for name in
                                                 sorted(self.settings.oidc_providers)]})

    @rpc(expected_exceptions=DomainError)
    def oidc_start(self, name, payload) -> dict:
        """The provider's authorization URL for a new sign-in flow."""
        return self._oidc_start(name, payload, None)

    @rpc(expected_exceptions=DomainError)
    def oidc_start_link(self, user_id, name, payload) -> dict:
        """The same, for the signed-in account ``user_id`` linking the provider."""
        return self._oidc_start(name, payload, lookup.get_user(self.db, user_id).id)

    def _oidc_start(self, name, payload, user_id) -> dict:
        data = load_rpc(oc.Start, payload)
        url = oidc.start(self.db, self.settings, name, data["redirect_uri"], user_id, utcnow())
        self.db.commit()
        return oc.Started().dump({"authorization_url": url})

    @rpc(expected_exceptions=DomainError)
    def oidc_callback(self, name, params) -> dict:
        """Where to send the browser back: the app's redirect_uri with a
        one-time ``code``, or with an ``error`` code. 400
        ``oidc_invalid_state`` when the state names no flow (nowhere to go)."""
        data = load_rpc(oc.Callback, params)
        with self._recording_failures():
            flow = oidc.take_flow(self.db, name, data.get("state"), utcnow())
        self.db.commit()  # one use, whatever happens next

        def finish_once():
            code = oidc.finish(self.db, self.settings, flow, claims, utcnow())
            self.db.commit()
            return code

        try:
            claims = oidc.fetch_claims(self.settings, flow, data)
            # the same subject linked at the same moment by another sign-in:
            # once more, and it is there to sign in with
            code = first_wins(self.db, finish_once)
        except DomainError as error:
            self.db.rollback()
            log.info("OIDC sign-in refused", extra={"provider": flow.provider,
                                                    "code": error.code})
            return oc.Redirect().dump({"location": oidc.app_url(flow.redirect_uri,
                                                                error=error.code)})
        return oc.Redirect().dump({"location": oidc.app_url(flow.redirect_uri, code=code)})

    @rpc(expected_exceptions=DomainError)
    def oidc_exchange(self, payload, client_ip=None, user_agent=None) -> dict:
        """A session for the app's one-time code, exactly like a login."""
        data = load_rpc(oc.Exchange, payload)
        client_ip = _string_or_none(client_ip, "client_ip")
        user_agent = _string_or_none(user_agent, "user_agent")

        def exchange_once():
            with self._recording_failures():
                done = oidc.exchange(self.db, self.settings, data["code"], data.get("birth_date"),
                                     data.get("age_confirmed"), client_ip, user_agent, utcnow())
            for event_type, event in done.events:
                self.dispatch(event_type, event)
            if done.login.suspicious_login is not None and not done.new_account:
                self.dispatch("suspicious_login", done.login.suspicious_login)
            self.db.commit()
            return done

        done = first_wins(self.db, exchange_once, email_taken())
        result = done.login
        log.info("login", extra={"user_id": str(result.user.id),
                                 "session_id": str(result.session.id), "method": "oidc",
                                 "new_account": done.new_account})
        return c.LoggedIn().dump(
            {"token": result.token, "expires_at": result.session.expires_at, "user": result.user})

    @rpc(expected_exceptions=DomainError)
    def list_identities(self, user_id) -> dict:
        user = lookup.get_user(self.db, user_id)
        return oc.IdentityList().dump({"items": [oidc.view(i) for i in
                                                 oidc.list_identities(self.db, user)]})

    @rpc(expected_exceptions=DomainError)
    def unlink_identity(self, user_id, identity_id) -> None:
        user = lookup.get_user(self.db, user_id)
        identity = oidc.unlink(self.db, user, identity_id)
        self.db.commit()
        log.info("identity unlinked", extra={"user_id": str(user.id),
                                             "identity_id": str(identity.id)})
        return None

    # ------------------------------------------------------------ password reset

    @rpc(expected_exceptions=DomainError)
    def request_password_reset(self, payload) -> None:
        data = load_rpc(c.EmailOnly, payload)
        event = accounts.request_password_reset(self.db, self.settings, data["email"], utcnow())
        if event is not None:
            self.dispatch("password_reset_requested", event)
        self.db.commit()
        if event is not None:
            log.info("password reset requested", extra={"user_id": event["user_id"]})
        return None

    @rpc(expected_exceptions=DomainError)
    def confirm_password_reset(self, payload) -> None:
        data = load_rpc(c.ConfirmPasswordReset, payload)
        changed = accounts.confirm_password_reset(
            self.db, data["token"], data["new_password"], utcnow()
        )
        self.dispatch("password_changed", changed)
        self.db.commit()
        log.info("password reset; every session and API key revoked",
                 extra={"user_id": changed["user_id"], "sessions": changed["sessions"],
                        "api_keys": changed["api_keys"]})
        return None

    # ------------------------------------------------------------ profile

    @rpc(expected_exceptions=DomainError)
    def get_user(self, user_id) -> dict:
        return c.User().dump(lookup.get_user(self.db, user_id))

    @rpc(expected_exceptions=DomainError)
    def users_active_between(self, window) -> dict:
        """For a breach (privacy): ``{user_id: records}`` of the accounts
        created or signed in within ``window`` (``{"from", "to"}``)."""
        data = load_rpc(privacy_contracts.Window, window)
        found = lookup.users_active_between(self.db, data["window_from"], data["window_to"])
        return found

    @rpc(expected_exceptions=DomainError)
    def update_profile(self, user_id, payload) -> dict:
        data = load_rpc(c.UpdateProfile, payload)
        user = accounts.update_profile(self.db, lookup.get_user(self.db, user_id), data, utcnow())
        self._user_updated(user.id)
        self.db.commit()
        return c.User().dump(user)

    @rpc(expected_exceptions=DomainError)
    def request_email_change(self, user_id, payload, client_ip=None) -> None:
        data = load_rpc(c.ChangeEmail, payload)
        client_ip = _string_or_none(client_ip, "client_ip")
        user = lookup.get_user(self.db, user_id)
        lookup.ensure_verified(user)  # 403 email_unverified, before an attempt is taken
        now = utcnow()
        # The password is a guess like a login's: counted first (committed),
        # then checked; a wrong one stays counted, a right one is given back.
        subjects = sessions.begin_login(self.db, self.settings, user.email, client_ip, now)
        self.db.commit()
        with self._recording_failures():
            sessions.check_password(self.db, user, data["password"], subjects, now,
                                    invalid_credentials(status=403))
        self.db.commit()
        event = accounts.request_email_change(self.db, self.settings, user, data["new_email"], now)
        if event is not None:
            self.dispatch("email_verification_requested", event)
        self.db.commit()
        return None

    # ------------------------------------------------------------ API keys

    @rpc(expected_exceptions=DomainError)
    def list_api_keys(self, user_id, page=None) -> dict:
        query = load_rpc(PageQuery, page)
        user = lookup.get_user(self.db, user_id)
        rows, next_cursor = keys.list_active(self.db, user, query["limit"], query["cursor"])
        return c.ApiKeyPage().dump({"items": [keys.view(k) for k in rows], "next_cursor": next_cursor})

    @rpc(expected_exceptions=DomainError)
    def create_api_key(self, user_id, payload) -> dict:
        data = load_rpc(c.CreateApiKey, payload)
        user = lookup.get_user(self.db, user_id)
        created = keys.create(self.db, user, data["name"], utcnow())
        self.db.commit()
        log.info("API key created", extra={"user_id": str(user.id), "key_id": str(created["id"])})
        return c.NewApiKey().dump(created)

    @rpc(expected_exceptions=DomainError)
    def revoke_api_key(self, user_id, key_id) -> None:
        user = lookup.get_user(self.db, user_id)
        keys.revoke(self.db, user, key_id, utcnow())
        self.db.commit()
        log.info("API key revoked", extra={"user_id": str(user.id), "key_id": str(key_id)})
        return None

    # ------------------------------------------------------------ webhook secret

    @rpc(expected_exceptions=DomainError)
    def get_webhook_secret(self, user_id) -> dict:
        """``{secret, created_at}``, made on first use (the generation service
        signs each webhook with it)."""
        return self._webhook_secret(user_id, webhooks.get_or_create)

    @rpc(expected_exceptions=DomainError)
    def rotate_webhook_secret(self, user_id) -> dict:
        answer = self._webhook_secret(user_id, webhooks.rotate)
        log.info("webhook secret rotated", extra={"user_id": str(user_id)})
        return answer

    def _webhook_secret(self, user_id, action) -> dict:
        def once():
            row = action(self.db, lookup.get_user(self.db, user_id), utcnow())
            answer = c.WebhookSecret().dump(webhooks.view(row))
            self.db.commit()
            return answer

        # A call at the same moment may make this account's first secret:
        # once more, and it is there to read (or to replace).
        return first_wins(self.db, once)

    # ------------------------------------------------------------ TOTP and admin

    @rpc(expected_exceptions=DomainError)
    def begin_totp_enrollment(self, user_id) -> dict:
        user = lookup.get_user(self.db, user_id)
        enrollment = accounts.begin_totp_enrollment(user, self.settings.totp_issuer)
        self.db.commit()
        return c.TotpEnrollment().dump(enrollment)

    @rpc(expected_exceptions=DomainError)
    def confirm_totp_enrollment(self, user_id, payload) -> None:
        data = load_rpc(c.TotpCode, payload)
        user = lookup.get_user(self.db, user_id)
        accounts.confirm_totp_enrollment(user, data["code"], utcnow())
        self._user_updated(user.id)
        self.db.commit()
        log.info("TOTP enabled", extra={"user_id": str(user.id)})
        return None

    @rpc(expected_exceptions=DomainError)
    def set_admin(self, email, is_admin) -> dict:
        if not isinstance(email, str) or not email.strip():
            raise invalid_request("email must be a string", fields={"email": ["Not a valid email."]})
        if not isinstance(is_admin, bool):
            raise invalid_request(
                "is_admin must be a boolean", fields={"is_admin": ["Not a valid boolean."]}
            )
        changed = accounts.set_admin(self.db, self.settings, email, is_admin, utcnow())
        self._user_updated(changed["user_id"])
        self.db.commit()
        log.warning(
            "admin %s", "granted" if is_admin else "withdrawn",
            extra={"user_id": str(changed["user_id"]), "totp_enrolled": bool(changed["otpauth_uri"]),
                   "api_keys_revoked": changed["api_keys_revoked"]},
        )
        return c.AdminChanged().dump(changed)

    # ------------------------------------------------------------ passkeys (WebAuthn)

    @rpc(expected_exceptions=DomainError)
    def list_passkeys(self, user_id, page=None) -> dict:
        query = load_rpc(PageQuery, page)
        user = lookup.get_user(self.db, user_id)
        rows, next_cursor = passkeys.list_for(self.db, user, query["limit"], query["cursor"])
        return pc.PasskeyPage().dump({"items": [passkeys.view(p) for p in rows],
                                      "next_cursor": next_cursor})

    @rpc(expected_exceptions=DomainError)
    def passkey_registration_options(self, user_id, session_id=None) -> dict:
        """``session_id``: the caller's session (a passkey is added from one, never
        with an API key alone: 403 ``session_required``)."""
        user = lookup.get_user(self.db, user_id)
        options = passkeys.registration_options(self.db, self.settings, user, session_id,
                                                utcnow())
        self.db.commit()
        return pc.PasskeyOptions().dump(options)

    @rpc(expected_exceptions=DomainError)
    def register_passkey(self, user_id, payload, session_id=None) -> dict:
        data = load_rpc(pc.RegisterPasskey, payload)

        def register_once():
            user = lookup.get_user(self.db, user_id)
            with self._recording_failures():
                passkey = passkeys.register(self.db, self.settings, user, session_id,
                                            data["credential"], data["name"], utcnow())
            answer = pc.Passkey().dump(passkeys.view(passkey))
            self.db.commit()
            return answer

        # the same authenticator registered twice at once: one of them wins
        answer = first_wins(self.db, register_once,
                            conflict("this passkey is already registered", code="passkey_exists"))
        log.info("passkey registered", extra={"user_id": str(user_id), "passkey_id": answer["id"]})
        return answer

    @rpc(expected_exceptions=DomainError)
    def delete_passkey(self, user_id, passkey_id) -> None:
        user = lookup.get_user(self.db, user_id)
        passkeys.remove(self.db, user, passkey_id)
        self.db.commit()
        log.info("passkey removed", extra={"user_id": str(user.id), "passkey_id": str(passkey_id)})
        return None

    @rpc(expected_exceptions=DomainError)
    def passkey_login_options(self) -> dict:
        options = passkeys.authentication_options(self.db, self.settings, utcnow())
        self.db.commit()
        return pc.PasskeyOptions().dump(options)

    @rpc(expected_exceptions=DomainError)
    def passkey_login(self, payload, client_ip=None, user_agent=None) -> dict:
        """A session for the passkey's account, answered exactly like a login."""
        data = load_rpc(pc.PasskeyLogin, payload)
        client_ip = _string_or_none(client_ip, "client_ip")
        user_agent = _string_or_none(user_agent, "user_agent")

        def login_once():
            with self._recording_failures():
                result = passkeys.login(self.db, self.settings, data["credential"], client_ip,
                                        user_agent, utcnow())
            if result.suspicious_login is not None:
                self.dispatch("suspicious_login", result.suspicious_login)
            self.db.commit()
            return result

        result = first_wins(self.db, login_once)
        log.info("login", extra={"user_id": str(result.user.id),
                                 "session_id": str(result.session.id), "method": "passkey",
                                 "new_network": result.suspicious_login is not None})
        return c.LoggedIn().dump(
            {"token": result.token, "expires_at": result.session.expires_at, "user": result.user})

    # ------------------------------------------------------------ operators (darkroom-ops)

    @rpc(expected_exceptions=DomainError)
    def list_users(self, query=None) -> dict:
        data = load_rpc(c.UserQuery, query)
        rows, next_cursor = operators.list_users(self.db, data["email"], data["limit"],
                                                 data["cursor"])
        now = utcnow()
        return c.OperatorUserPage().dump({"items": [operators.view(self.db, u, now) for u in rows],
                                          "next_cursor": next_cursor})

    @rpc(expected_exceptions=DomainError)
    def find_user(self, ref) -> dict:
        """An account by id or address, with its state and live credentials."""
        return c.OperatorUser().dump(operators.view(self.db, operators.find(self.db, ref), utcnow()))

    @rpc(expected_exceptions=DomainError)
    def disable_user(self, ref) -> dict:
        return self._set_disabled(ref, True)

    @rpc(expected_exceptions=DomainError)
    def enable_user(self, ref) -> dict:
        return self._set_disabled(ref, False)

    def _set_disabled(self, ref, disabled: bool, actor: str | None = None) -> dict:
        changed = operators.set_disabled(self.db, operators.find(self.db, ref), disabled, utcnow())
        self._user_updated(changed["user_id"])
        self.db.commit()
        log.warning("account %s", "disabled" if disabled else "enabled",
                    extra={"user_id": str(changed["user_id"]), "actor": actor,
                           "sessions_revoked": changed["sessions_revoked"],
                           "api_keys_revoked": changed["api_keys_revoked"]})
        return c.UserDisabled().dump(changed)

    # ------------------------------------------------------------ operators (HTTP API)

    @rpc(expected_exceptions=DomainError)
    def require_operator(self, user_id) -> dict:
        """Every service's ``admin_*`` RPCs ask this first
        (services/common/operators.py): ``user_id`` may operate, else 403
        ``admin_required``."""
        return {"user_id": str(self._require_operator(user_id).id)}

    def _require_operator(self, actor):
        """Here, auth's own rule read in place (the other services ask it over RPC)."""
        user = operators.require_operator(self.db, actor)
        self.db.rollback()  # a read: end the transaction (the caller may write next)
        return user

    @rpc(expected_exceptions=DomainError)
    def admin_list_users(self, actor, query=None) -> dict:
        """``GET /v1/admin/users``: :meth:`list_users` for an operator."""
        self._require_operator(actor)
        return self.list_users(query)

    @rpc(expected_exceptions=DomainError)
    def admin_disable_user(self, actor, user_id) -> dict:
        """``POST /v1/admin/users/{id}/disable``: never the operator's own account
        (409 ``cannot_disable_self``)."""
        return self._admin_set_disabled(actor, user_id, True)

    @rpc(expected_exceptions=DomainError)
    def admin_enable_user(self, actor, user_id) -> dict:
        return self._admin_set_disabled(actor, user_id, False)

    def _admin_set_disabled(self, actor, user_id, disabled: bool) -> dict:
        operator = self._require_operator(actor)
        operators.check_not_self(operator, lookup.get_user(self.db, user_id), disabled)
        return self._set_disabled(user_id, disabled, actor=str(operator.id))

    @rpc(expected_exceptions=DomainError)
    def revoke_keys(self, selector) -> dict:
        """Revoke API keys by id, by prefix, or all of a user's (see operators.revoke_keys)."""
        found = operators.revoke_keys(self.db, load_rpc(c.RevokeKeys, selector), utcnow())
        self.db.commit()
        log.warning("API keys revoked by an operator", extra={"key_ids": [str(k.id) for k in found]})
        return c.KeysRevoked().dump({"items": [
            {"id": k.id, "prefix": k.prefix, "name": k.name, "user_id": k.user_id} for k in found]})

    # ------------------------------------------------------------ retention

    @timer("auth.retention", 600)
    def purge_expired(self) -> dict:
        """Delete dead sessions, codes, tokens and login failures (every 10 min)."""
        deleted = retention.purge_expired(self.db, self.settings, utcnow())
        self.db.commit()
        if any(deleted.values()):
            log.info("retention purge", extra={"deleted": deleted})
        return deleted

    # ------------------------------------------------------------ privacy

    @rpc(expected_exceptions=DomainError)
    def revoke_all(self, user_id) -> dict:
        """Every live session and API key of the account, revoked now (the
        privacy service calls it when an erasure is asked for)."""
        user = lookup.get_user(self.db, user_id)
        revoked = privacy_data.revoke_all(self.db, user.id, utcnow())
        self.db.commit()
        log.info("every credential revoked", extra={"user_id": str(user.id), **revoked})
        return revoked

    @event_handler("privacy", "restriction_changed")
    def privacy_restriction_changed(self, event: dict) -> None:
        if privacy_data.set_restricted(self.db, event["user_id"], event["restricted"]):
            self._user_updated(event["user_id"])
        self.db.commit()

    # ------------------------------------------------------------ re-authentication

    @rpc(expected_exceptions=DomainError)
    def reauthenticate(self, user_id, password, totp_code=None) -> dict:
        """The signed-in user's password (and TOTP code when two-factor sign-in
        is on) checked again before an erasure: 401 ``reauthentication_required``;
        a wrong one counts toward the account's lockout like a failed login."""
        data = load_rpc(c.Reauthenticate, {"user_id": user_id, "password": password,
                                           "totp_code": totp_code})
        now = utcnow()
        user, subjects = reauth.begin(self.db, self.settings, data["user_id"], now)
        self.db.commit()  # the attempt is counted before the password is checked
        with self._recording_failures():
            reauth.reauthenticate(self.db, user, subjects, data["password"],
                                  data["totp_code"], now)
        self.db.commit()
        log.info("re-authenticated", extra={"user_id": str(user.id)})
        return {"user_id": str(user.id)}
