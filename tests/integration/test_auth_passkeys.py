"""Passkeys through the auth service's real entrypoint (`nameko run`) on
RabbitMQ and PostgreSQL, called over RPC like the gateway calls it, with the
software authenticator of tests/webauthn_authenticator.py.

The relying party comes from APP_BASE_URL, as an operator who sets nothing
else gets it. The races (one assertion answered twice at once, two sign-ins
of a passkey at once) run against the service's concurrent workers."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace

import pyotp
import pytest
from nameko.standalone.rpc import ClusterRpcProxy
from sqlalchemy import text

from tests.integration.test_auth_service import (
    MAIL_SECRETS_KEY,
    PASSWORD,
    code_in,
    new_email,
    new_ip,
    refused,
    running_auth,
)
from tests.webauthn_authenticator import SoftwareAuthenticator

pytestmark = pytest.mark.integration

APP = "https://app.darkroom.test"


@pytest.fixture(scope="module")
def auth(make_vhost, make_database, start_process):
    with running_auth(make_vhost, make_database, start_process, MAIL_SECRETS_KEY=MAIL_SECRETS_KEY,
                      APP_BASE_URL=APP, PUBLIC_BASE_URL="https://api.darkroom.test") as running:
        yield running


def verified_account(auth) -> SimpleNamespace:
    """A verified account signed in: ``session_id`` is its session's."""
    email = new_email("passkey")
    ip = new_ip()
    user = auth.rpc.register({"email": email, "password": PASSWORD}, client_ip=ip)["user"]
    code = code_in(auth.tap.one(email, "email_verification_requested"))
    auth.rpc.verify_email({"email": email, "code": code})
    token = auth.rpc.login({"email": email, "password": PASSWORD}, client_ip=ip)["token"]
    session_id = auth.rpc.authenticate({"token": token})["credential_id"]
    auth.tap.drain()
    auth.tap.seen.clear()
    return SimpleNamespace(email=email, id=user["id"], session_id=session_id)


def add_passkey(auth, account, fmt="none", name="Laptop") -> tuple[SoftwareAuthenticator, dict]:
    authenticator = SoftwareAuthenticator(APP)
    options = auth.rpc.passkey_registration_options(account.id, session_id=account.session_id)
    answer = authenticator.create(options["options"], fmt=fmt)
    return authenticator, auth.rpc.register_passkey(
        account.id, {"credential": answer, "name": name}, session_id=account.session_id)


def assertion(auth, authenticator) -> dict:
    return authenticator.get(auth.rpc.passkey_login_options()["options"])


def sign_count(auth, passkey_id) -> int:
    with auth.engine.connect() as conn:
        return conn.execute(text("SELECT sign_count FROM passkeys WHERE id = :id"),
                            {"id": passkey_id}).scalar_one()


def test_a_passkey_is_added_listed_and_signs_in_without_a_password(auth):
    account = verified_account(auth)
    # with an API key alone (no session named), no passkey
    assert refused(auth.rpc.passkey_registration_options, account.id).code == "session_required"
    options = auth.rpc.passkey_registration_options(account.id,
                                                    session_id=account.session_id)["options"]
    assert options["rp"] == {"id": "app.darkroom.test", "name": "Darkroom"}
    authenticator = SoftwareAuthenticator(APP)
    passkey = auth.rpc.register_passkey(account.id, {
        "credential": authenticator.create(options, fmt="packed"), "name": "Phone"},
        session_id=account.session_id)
    assert (passkey["name"], passkey["transports"]) == ("Phone", ["internal", "hybrid"])
    listed = auth.rpc.list_passkeys(account.id)
    assert [p["id"] for p in listed["items"]] == [passkey["id"]]

    ip = new_ip()
    session = auth.rpc.passkey_login({"credential": assertion(auth, authenticator)},
                                     client_ip=ip, user_agent="pytest")
    assert set(session) == {"token", "expires_at", "user"} and session["user"]["id"] == account.id
    principal = auth.rpc.authenticate({"token": session["token"]})
    assert (principal["user_id"], principal["credential_type"]) == (account.id, "session")
    assert auth.tap.one(account.email, "suspicious_login")["network"].startswith(ip[:-1])
    assert sign_count(auth, passkey["id"]) == 1


def test_one_assertion_answered_twice_at_once_signs_in_once(auth):
    account = verified_account(auth)
    authenticator, _ = add_passkey(auth, account)
    answer = assertion(auth, authenticator)

    def attempt(_):
        with ClusterRpcProxy({"AMQP_URI": auth.amqp_uri}, timeout=20) as rpc:
            try:
                return rpc.auth.passkey_login({"credential": answer})["user"]["id"]
            except Exception as exc:  # noqa: BLE001 - the refusal is the result
                return getattr(exc, "code", repr(exc))

    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(attempt, range(4)))
    assert sorted(results) == sorted([account.id] + ["passkey_challenge_invalid"] * 3)


def test_a_cloned_passkey_is_refused_and_so_is_a_foreign_origin(auth):
    account = verified_account(auth)
    authenticator, passkey = add_passkey(auth, account)
    clone = authenticator.copy()
    auth.rpc.passkey_login({"credential": assertion(auth, authenticator)})
    auth.rpc.passkey_login({"credential": assertion(auth, authenticator)})
    error = refused(auth.rpc.passkey_login, {"credential": assertion(auth, clone)})
    assert (error.code, error.status) == ("passkey_clone_suspected", 401)
    assert sign_count(auth, passkey["id"]) == 2
    options = auth.rpc.passkey_login_options()["options"]
    phished = authenticator.get(options, origin="https://app.darkroom.test.evil.example")
    error = refused(auth.rpc.passkey_login, {"credential": phished})
    assert (error.code, error.details) == ("invalid_passkey", {"reason": "verification"})
    # the refused answer used its challenge up
    assert refused(auth.rpc.passkey_login, {"credential": phished}).code == \
        "passkey_challenge_invalid"


def test_an_administrator_signs_in_with_a_passkey_in_place_of_totp(auth):
    account = verified_account(auth)
    authenticator, _ = add_passkey(auth, account)
    granted = auth.rpc.set_admin(account.email, True)
    assert granted["otpauth_uri"]
    assert refused(auth.rpc.login, {"email": account.email, "password": PASSWORD}).code == \
        "totp_required"
    session = auth.rpc.passkey_login({"credential": assertion(auth, authenticator)})
    assert session["user"]["is_admin"] is True
    assert auth.rpc.authenticate({"token": session["token"]})["is_admin"] is True
    totp = pyotp.parse_uri(granted["otpauth_uri"])
    assert auth.rpc.login({"email": account.email, "password": PASSWORD,
                           "totp_code": totp.now()})["user"]["id"] == account.id


def test_removing_is_for_the_owner_and_bad_input_is_a_clear_refusal(auth):
    owner, other = verified_account(auth), verified_account(auth)
    _, passkey = add_passkey(auth, owner)
    error = refused(auth.rpc.delete_passkey, other.id, passkey["id"])
    assert (error.code, error.status) == ("not_found", 404)
    assert refused(auth.rpc.register_passkey, owner.id, {"credential": "x"},
                   session_id=owner.session_id).code == "invalid_request"
    error = refused(auth.rpc.register_passkey, owner.id, {"credential": {"id": 5}},
                    session_id=owner.session_id)
    assert (error.code, error.status) == ("invalid_passkey", 400)
    auth.rpc.delete_passkey(owner.id, passkey["id"])  # the password is still there
    assert auth.rpc.list_passkeys(owner.id)["items"] == []
