"""The auth service through its real entrypoint (`nameko run`, the Procfile's
"auth" line) against RabbitMQ and PostgreSQL, called over RPC like the gateway
calls it, with its events captured from the ``auth.events`` exchange.

The service runs once for the module, in a vhost of its own, with small
limits: 3 failed logins lock an account, 5 lock an address, a verification
code may be resent after 1 s and a reset mail sent again at once. Codes and
reset tokens come sealed in the events; the tap opens them with the key the
service was given.

The races (parallel guesses of a password, a TOTP code, a verification code;
parallel requests for one code) are run against the service itself, on
PostgreSQL: many RPCs at once, served by its concurrent workers.
"""

from __future__ import annotations

import base64
import itertools
import time
import uuid
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace

import pyotp
import pytest
from kombu import Connection, Queue
from nameko.standalone.events import get_event_exchange
from nameko.standalone.rpc import ClusterRpcProxy
from sqlalchemy import text

from services.common.db import make_engine
from services.common.errors import DomainError
from services.common.fieldcrypt import email_index
from services.common.sealed import Sealer
from tests.conftest import base_env, free_port, wait_for

pytestmark = pytest.mark.integration

PASSWORD = "correct horse battery"
MAX_ACCOUNT_FAILURES = 3
MAX_ADDRESS_FAILURES = 5
MAIL_SECRETS_KEY = "integration-test-mail-secrets-key"
SEALER = Sealer(MAIL_SECRETS_KEY)
_ip_counter = itertools.count(1)


def new_ip() -> str:
    """A client address in a /24 no other test uses."""
    n = next(_ip_counter)
    return f"10.{n // 250}.{n % 250}.7"


def new_email(label: str = "user") -> str:
    return f"{label}-{uuid.uuid4().hex[:10]}@example.com"


class EventTap:
    """Every event the auth service publishes, from a queue bound to ``auth.events``
    before anything happens. A confirmed publish is in the queue by the time the
    RPC that made it returns, so draining right after a call sees all it emitted."""

    def __init__(self, amqp_uri: str):
        self.connection = Connection(amqp_uri)
        exchange = get_event_exchange("auth", {})
        self.queue = Queue(
            f"test-auth-events-{uuid.uuid4().hex[:8]}",
            exchange=exchange,
            routing_key="#",
            exclusive=True,
            auto_delete=True,
        )(self.connection.channel())
        exchange(self.queue.channel).declare()
        self.queue.declare()
        self.seen: list[tuple[str, dict]] = []

    def drain(self) -> None:
        while (message := self.queue.get(no_ack=True)) is not None:
            self.seen.append((message.delivery_info["routing_key"], message.payload))

    def about(self, email: str, event_type: str | None = None) -> list[tuple[str, dict]]:
        self.drain()
        return [
            (kind, body) for kind, body in self.seen
            if body.get("email") == email and (event_type is None or kind == event_type)
        ]

    def one(self, email: str, event_type: str) -> dict:
        found = self.about(email, event_type)
        assert len(found) == 1, f"expected one {event_type} for {email}, got {found}"
        self.seen.remove(found[0])
        return found[0][1]

    def close(self):
        self.connection.release()


@contextmanager
def running_auth(make_vhost, make_database, start_process, **env):
    """The auth service through its entrypoint in a vhost and database of its
    own, with ``env`` on top of the base: ``SimpleNamespace(rpc, tap, engine,
    proc, amqp_uri)``."""
    amqp_uri, _ = make_vhost("auth")
    db_url = make_database("auth")
    port = free_port()
    tap = EventTap(amqp_uri)
    proc = start_process("auth", base_env(AMQP_URI=amqp_uri, AUTH_DATABASE_URL=db_url,
                                          AUTH_METRICS_PORT=port, **env))
    proc.wait_ready(f"http://127.0.0.1:{port}/readyz")
    engine = make_engine(db_url)
    with ClusterRpcProxy({"AMQP_URI": amqp_uri}, timeout=20) as rpc:
        # /readyz can answer before the RPC consumer has declared its queue.
        wait_for(lambda: rpc.auth.ping(), 30, 0.2, "auth RPC")
        yield SimpleNamespace(rpc=rpc.auth, tap=tap, engine=engine, proc=proc, amqp_uri=amqp_uri)
    engine.dispose()
    tap.close()
    proc.stop()


@pytest.fixture(scope="module")
def auth(make_vhost, make_database, start_process):
    with running_auth(
        make_vhost, make_database, start_process,
        AUTH_LOGIN_MAX_FAILURES_PER_ACCOUNT=MAX_ACCOUNT_FAILURES,
        AUTH_LOGIN_MAX_FAILURES_PER_ADDRESS=MAX_ADDRESS_FAILURES,
        AUTH_LOGIN_LOCKOUT_SECONDS=600,
        AUTH_RESEND_MIN_INTERVAL_SECONDS=1,
        AUTH_PASSWORD_RESET_MIN_INTERVAL_SECONDS=0,
        MAIL_SECRETS_KEY=MAIL_SECRETS_KEY,
    ) as running:
        yield running


def refused(call, *args, **kwargs) -> DomainError:
    with pytest.raises(DomainError) as info:
        call(*args, **kwargs)
    return info.value


def count(auth, table: str) -> int:
    with auth.engine.connect() as conn:
        return conn.execute(text(f"SELECT count(*) FROM {table}")).scalar_one()


def register(auth, email: str | None = None, ip: str | None = None, **extra) -> SimpleNamespace:
    email = email or new_email()
    result = auth.rpc.register({"email": email, "password": PASSWORD, **extra}, client_ip=ip)
    assert auth.tap.one(email, "user_registered")["user_id"] == result["user"]["id"]
    assert result["api_key"] is None
    code = code_in(auth.tap.one(email, "email_verification_requested"))
    return SimpleNamespace(email=email, user=result["user"], code=code)


def verified(auth, ip: str | None = None) -> SimpleNamespace:
    """A registered account whose address is verified, with an API key."""
    account = register(auth, ip=ip)
    auth.rpc.verify_email({"email": account.email, "code": account.code})
    account.api_key = auth.rpc.create_api_key(account.user["id"], {"name": "default"})
    return account


def code_in(event: dict) -> str:
    """The code an auth.email_verification_requested event carries sealed."""
    assert "code" not in event
    return SEALER.open(event["sealed_code"])


def token_in(event: dict) -> str:
    assert "token" not in event
    return SEALER.open(event["sealed_token"])


def login(auth, email: str, password: str = PASSWORD, ip: str | None = None, **extra) -> dict:
    return auth.rpc.login(
        {"email": email, "password": password, **extra}, client_ip=ip, user_agent="pytest"
    )


def other_code(code: str) -> str:
    return f"{(int(code) + 1) % 1_000_000:06d}"


# ---------------------------------------------------------------- registration


def test_ping_answers(auth):
    assert auth.rpc.ping() == {"service": "auth", "ok": True}


def test_register_sends_a_code_that_verifies_the_email(auth):
    email = new_email("reg")
    result = auth.rpc.register(
        {"email": "  " + email.upper(), "password": PASSWORD, "display_name": "Reg"},
        client_ip=new_ip(),
    )
    user = result["user"]
    assert (user["email"], user["email_verified"], user["plan"], user["display_name"]) == (
        email, False, "free", "Reg"
    )
    assert user["totp_enabled"] is False and user["is_admin"] is False
    assert user["processing_restricted"] is False
    uuid.UUID(user["id"])
    assert result["api_key"] is None  # no key before the address is verified

    registered = auth.tap.one(email, "user_registered")
    assert (registered["user_id"], registered["display_name"]) == (user["id"], "Reg")
    assert {"event_id", "occurred_at", "version"} <= set(registered)
    verification = auth.tap.one(email, "email_verification_requested")
    assert verification["purpose"] == "registration" and len(code_in(verification)) == 6

    verified = auth.rpc.verify_email({"email": email, "code": code_in(verification)})
    assert verified["user"]["email_verified"] is True
    assert auth.rpc.get_user(user["id"])["email_verified"] is True


def test_a_registered_address_answers_like_a_new_one_and_its_owner_is_told(auth):
    first = register(auth)
    users = count(auth, "users")
    again = auth.rpc.register({"email": first.email.upper(), "password": "another passphrase",
                               "display_name": "Eve"})
    fresh_email = new_email()
    fresh = auth.rpc.register({"email": fresh_email, "password": PASSWORD, "display_name": "Eve"})
    # the same shape, field by field: nothing tells the two apart
    assert set(again) == set(fresh) and set(again["user"]) == set(fresh["user"])
    assert again["api_key"] is None and fresh["api_key"] is None
    assert again["user"]["id"] != first.user["id"]
    assert {k: v for k, v in again["user"].items() if k not in ("id", "email", "created_at")} == \
        {k: v for k, v in fresh["user"].items() if k not in ("id", "email", "created_at")}
    assert count(auth, "users") == users + 1  # the fresh one only
    assert auth.rpc.get_user(first.user["id"])["display_name"] is None
    notice = auth.tap.one(first.email, "signup_attempted")
    assert notice["user_id"] == first.user["id"]
    assert auth.tap.about(first.email) == []  # no account, no code for anyone else
    assert auth.tap.one(fresh_email, "user_registered")["user_id"] == fresh["user"]["id"]
    auth.tap.one(fresh_email, "email_verification_requested")


def test_invalid_or_weak_registrations_write_nothing_and_emit_nothing(auth):
    users, keys = count(auth, "users"), count(auth, "api_keys")
    email = new_email("bad")
    for payload, code in [
        ({"email": "not-an-email", "password": PASSWORD}, "invalid_request"),
        ({"email": email, "password": "short"}, "invalid_request"),
        ({"email": email, "password": PASSWORD, "admin": True}, "invalid_request"),
        ({"email": email}, "invalid_request"),
        ({"email": email, "password": "password1234"}, "weak_password"),
        ({"email": email, "password": email.split("@")[0] + "!!"}, "weak_password"),
    ]:
        error = refused(auth.rpc.register, payload)
        assert (error.code, error.status) == (code, 400)
    error = refused(auth.rpc.register, {"email": email, "password": PASSWORD, "display_name": ""})
    assert error.details["fields"] == {"display_name": ["Length must be between 1 and 80."]}
    assert (count(auth, "users"), count(auth, "api_keys")) == (users, keys)
    assert auth.tap.about(email) == []


# ---------------------------------------------------------------- verification codes


def test_wrong_code_and_unknown_email_give_the_same_answer(auth):
    account = register(auth)
    wrong = refused(auth.rpc.verify_email, {"email": account.email, "code": other_code(account.code)})
    unknown = refused(auth.rpc.verify_email, {"email": new_email(), "code": account.code})
    assert (wrong.code, wrong.status, wrong.message) == (unknown.code, unknown.status, unknown.message)
    assert wrong.code == "invalid_code"
    assert auth.rpc.verify_email({"email": account.email, "code": account.code})["user"][
        "email_verified"
    ]


def test_expired_code_asks_for_a_new_one(auth):
    account = register(auth)
    with auth.engine.begin() as conn:
        conn.execute(
            text("UPDATE email_verifications SET expires_at = :t WHERE user_id = :u"),
            {"t": "2000-01-01T00:00:00+00:00", "u": uuid.UUID(account.user["id"])},
        )
    error = refused(auth.rpc.verify_email, {"email": account.email, "code": account.code})
    assert (error.code, error.status) == ("code_expired", 400)


def test_attempts_are_limited_per_code(auth):
    account = register(auth)
    for _ in range(5):
        error = refused(
            auth.rpc.verify_email, {"email": account.email, "code": other_code(account.code)}
        )
        assert error.code == "invalid_code"
    error = refused(auth.rpc.verify_email, {"email": account.email, "code": account.code})
    assert error.code == "code_expired"


def test_resend_is_rate_limited_and_replaces_the_code(auth):
    account = register(auth)
    assert auth.rpc.resend_verification({"email": account.email}) is None
    assert auth.tap.about(account.email) == []  # within RESEND_MIN_INTERVAL_SECONDS
    time.sleep(1.1)
    assert auth.rpc.resend_verification({"email": account.email}) is None
    new_code = code_in(auth.tap.one(account.email, "email_verification_requested"))
    if new_code != account.code:
        error = refused(auth.rpc.verify_email, {"email": account.email, "code": account.code})
        assert error.code == "invalid_code"
    assert auth.rpc.verify_email({"email": account.email, "code": new_code})["user"][
        "email_verified"
    ]
    time.sleep(1.1)
    auth.rpc.resend_verification({"email": account.email})  # verified now: nothing to send
    assert auth.tap.about(account.email) == []


def test_resend_and_reset_for_unknown_emails_answer_none_and_emit_nothing(auth):
    email = new_email("ghost")
    assert auth.rpc.resend_verification({"email": email}) is None
    assert auth.rpc.request_password_reset({"email": email}) is None
    assert auth.tap.about(email) == []


# ---------------------------------------------------------------- login and credentials


def test_unverified_account_logs_in_but_gets_no_api_key(auth):
    ip = new_ip()
    account = register(auth, ip=ip)
    logged_in = login(auth, account.email, ip=ip)
    assert logged_in["token"].startswith("drs_")
    assert logged_in["user"]["id"] == account.user["id"]
    lifetime = datetime.fromisoformat(logged_in["expires_at"]) - datetime.now(UTC)
    assert timedelta(days=7) - timedelta(minutes=1) < lifetime <= timedelta(days=7)
    by_token = auth.rpc.authenticate({"token": logged_in["token"]})
    assert (by_token["email_verified"], by_token["is_admin"], by_token["plan"]) == (
        False, False, "free"
    )
    error = refused(auth.rpc.create_api_key, account.user["id"], {"name": "ci"})
    assert (error.code, error.status) == ("email_unverified", 403)
    assert count(auth, f"api_keys WHERE user_id = '{account.user['id']}'") == 0


def test_verified_account_authenticates_by_token_and_by_key(auth):
    ip = new_ip()
    account = verified(auth, ip=ip)
    logged_in = login(auth, account.email, ip=ip)
    by_token = auth.rpc.authenticate({"token": logged_in["token"]})
    assert by_token["user_id"] == account.user["id"]
    assert by_token["credential_type"] == "session"
    by_key = auth.rpc.authenticate({"api_key": account.api_key["key"]})
    assert (by_key["credential_type"], by_key["credential_id"]) == ("api_key", account.api_key["id"])

    for payload in [{}, {"token": logged_in["token"], "api_key": account.api_key["key"]}]:
        assert refused(auth.rpc.authenticate, payload).code == "invalid_request"
    for payload in [{"token": "drs_nope"}, {"api_key": "drk_abcdefgh_" + "x" * 43}]:
        error = refused(auth.rpc.authenticate, payload)
        assert (error.code, error.status) == ("unauthenticated", 401)

    auth.rpc.logout(by_token["credential_id"])
    assert refused(auth.rpc.authenticate, {"token": logged_in["token"]}).code == "unauthenticated"


def test_the_gateway_takes_an_api_key_as_a_bearer_token(auth):
    """Through the real gateway app (its RPC pool, its cache) and this
    service: ``Authorization: Bearer <api key>`` works as ``X-API-Key`` does;
    both at once are accepted when they name one account, refused otherwise;
    an administrator's key works neither way."""
    from gateway.app import create_app

    app = create_app({"AMQP_URI": auth.amqp_uri, "RPC_TIMEOUT_SECONDS": 20,
                      "RATELIMIT_ENABLED": False, "AUTH_CACHE_SECONDS": 0})
    client = app.test_client()
    account, other = verified(auth), verified(auth)
    key = account.api_key["key"]
    for headers in ({"Authorization": f"Bearer {key}"}, {"X-API-Key": key},
                    {"Authorization": f"Bearer {key}", "X-API-Key": key}):
        response = client.get("/v1/me", headers=headers)
        assert response.status_code == 200, (headers, response.get_json())
        assert response.get_json()["id"] == account.user["id"]
    mixed = client.get("/v1/me", headers={"Authorization": f"Bearer {key}",
                                          "X-API-Key": other.api_key["key"]})
    assert (mixed.status_code, mixed.get_json()["error"]["code"]) == (401, "unauthenticated")
    # a bearer key is no session
    assert client.post("/v1/auth/logout",
                       headers={"Authorization": f"Bearer {key}"}).status_code == 400
    auth.rpc.set_admin(account.email, True)
    for headers in ({"Authorization": f"Bearer {key}"}, {"X-API-Key": key}):
        assert client.get("/v1/me", headers=headers).status_code == 401


def test_wrong_password_and_unknown_email_are_the_same_refusal(auth):
    account = register(auth)
    wrong = refused(login, auth, account.email, "not the password")
    unknown = refused(login, auth, new_email(), PASSWORD)
    assert (wrong.code, wrong.status, wrong.message) == (unknown.code, unknown.status, unknown.message)
    assert wrong.code == "invalid_credentials" and wrong.status == 401


def test_account_lockout_refuses_even_the_right_password(auth):
    account = register(auth)
    for _ in range(MAX_ACCOUNT_FAILURES):
        assert refused(login, auth, account.email, "not the password", ip=new_ip()).code == (
            "invalid_credentials"
        )
    error = refused(login, auth, account.email, PASSWORD, ip=new_ip())
    assert (error.code, error.status) == ("rate_limited", 429)
    assert 590 <= error.details["retry_after"] <= 600


def test_unknown_emails_are_locked_out_too(auth):
    email = new_email("probe")
    for _ in range(MAX_ACCOUNT_FAILURES):
        assert refused(login, auth, email, PASSWORD).code == "invalid_credentials"
    assert refused(login, auth, email, PASSWORD).code == "rate_limited"


def test_address_lockout_covers_every_account_from_that_address(auth):
    ip = new_ip()
    victim = register(auth)
    for _ in range(MAX_ADDRESS_FAILURES):
        refused(login, auth, new_email("spray"), PASSWORD, ip=ip)
    error = refused(login, auth, victim.email, PASSWORD, ip=ip)
    assert error.code == "rate_limited" and error.details["retry_after"] > 0
    assert login(auth, victim.email, ip=new_ip())["token"]


def test_success_clears_the_failures(auth):
    account = register(auth)
    for _round in range(2):
        for _ in range(MAX_ACCOUNT_FAILURES - 1):
            refused(login, auth, account.email, "not the password")
        assert login(auth, account.email)["token"]


def test_suspicious_login_from_a_new_network_only(auth):
    ip = new_ip()
    account = register(auth, ip=ip)
    login(auth, account.email, ip=ip.rsplit(".", 1)[0] + ".99")  # same /24 as registration
    assert auth.tap.about(account.email, "suspicious_login") == []

    elsewhere = "2001:db8:77:1::5"
    login(auth, account.email, ip=elsewhere)
    event = auth.tap.one(account.email, "suspicious_login")
    assert (event["user_id"], event["network"], event["user_agent"]) == (
        account.user["id"], "2001:db8:77::/48", "pytest"
    )
    login(auth, account.email, ip="2001:db8:77:ffff::1")  # the same /48 again
    assert auth.tap.about(account.email, "suspicious_login") == []
    with auth.engine.connect() as conn:
        stored = conn.execute(
            text("SELECT network_hmac FROM known_networks WHERE user_id = :u"),
            {"u": uuid.UUID(account.user["id"])},
        ).scalars().all()
    assert len(stored) == 2 and not any("2001" in value or "10." in value for value in stored)


# ---------------------------------------------------------------- password reset


def test_password_reset_ends_every_session_and_api_key_and_tells_the_owner(auth):
    account = verified(auth)
    tokens = [login(auth, account.email)["token"] for _ in range(2)]
    assert auth.rpc.request_password_reset({"email": account.email.upper()}) is None
    event = auth.tap.one(account.email, "password_reset_requested")
    assert event["user_id"] == account.user["id"]
    token = token_in(event)

    weak = refused(auth.rpc.confirm_password_reset, {"token": token, "new_password": "1234567890"})
    assert weak.code == "weak_password"
    assert auth.rpc.confirm_password_reset(
        {"token": token, "new_password": "a whole new passphrase"}
    ) is None
    for token_ in tokens:
        assert refused(auth.rpc.authenticate, {"token": token_}).code == "unauthenticated"
    # the key a squatter (or a thief) held before the reset is dead too
    assert refused(auth.rpc.authenticate, {"api_key": account.api_key["key"]}).code == (
        "unauthenticated")
    changed = auth.tap.one(account.email, "password_changed")
    assert (changed["user_id"], changed["sessions"], changed["api_keys"]) == (
        account.user["id"], 2, 1)
    reused = refused(
        auth.rpc.confirm_password_reset, {"token": token, "new_password": "yet another one!"}
    )
    assert (reused.code, reused.status) == ("invalid_token", 400)
    assert refused(login, auth, account.email, PASSWORD).code == "invalid_credentials"
    assert login(auth, account.email, "a whole new passphrase")["token"]


def test_a_newer_reset_token_voids_the_older_one(auth):
    account = register(auth)
    auth.rpc.request_password_reset({"email": account.email})
    first = token_in(auth.tap.one(account.email, "password_reset_requested"))
    auth.rpc.request_password_reset({"email": account.email})
    second = token_in(auth.tap.one(account.email, "password_reset_requested"))
    payload = {"token": first, "new_password": "a whole new passphrase"}
    assert refused(auth.rpc.confirm_password_reset, payload).code == "invalid_token"
    assert auth.rpc.confirm_password_reset({**payload, "token": second}) is None


# ---------------------------------------------------------------- API keys and sessions


def test_api_keys_create_list_revoke(auth):
    account = verified(auth)
    user_id = account.user["id"]
    created = auth.rpc.create_api_key(user_id, {"name": "ci"})
    assert created["key"].startswith(f"drk_{created['prefix']}_") and created["name"] == "ci"
    listed = auth.rpc.list_api_keys(user_id)
    assert [k["name"] for k in listed["items"]] == ["ci", "default"]
    assert listed["next_cursor"] is None
    assert all("key" not in k for k in listed["items"])

    assert auth.rpc.authenticate({"api_key": created["key"]})["credential_id"] == created["id"]
    assert auth.rpc.revoke_api_key(user_id, created["id"]) is None
    assert refused(auth.rpc.authenticate, {"api_key": created["key"]}).code == "unauthenticated"
    assert [k["name"] for k in auth.rpc.list_api_keys(user_id)["items"]] == ["default"]
    assert refused(auth.rpc.revoke_api_key, user_id, created["id"]).code == "not_found"

    error = refused(auth.rpc.create_api_key, user_id, {"name": ""})
    assert error.code == "invalid_request"


def test_another_users_key_is_not_found(auth):
    alice, bob = register(auth), verified(auth)
    for key_id in [bob.api_key["id"], str(uuid.uuid4()), "not-a-uuid"]:
        error = refused(auth.rpc.revoke_api_key, alice.user["id"], key_id)
        assert (error.code, error.status) == ("not_found", 404)
    assert auth.rpc.authenticate({"api_key": bob.api_key["key"]})["user_id"] == bob.user["id"]


def test_too_many_keys(auth):
    account = verified(auth)
    for i in range(19):
        auth.rpc.create_api_key(account.user["id"], {"name": f"k{i}"})
    error = refused(auth.rpc.create_api_key, account.user["id"], {"name": "k19"})
    assert (error.code, error.status) == ("too_many_keys", 409)


def test_sessions_list_and_revoke(auth):
    account, other = register(auth), register(auth)
    user_id = account.user["id"]
    first = login(auth, account.email)
    second = login(auth, account.email)
    current = auth.rpc.authenticate({"token": second["token"]})["credential_id"]
    listed = auth.rpc.list_sessions(user_id, current_session_id=current)["items"]
    assert len(listed) == 2
    assert [s["current"] for s in listed] == [True, False]  # newest first
    assert listed[0]["user_agent"] == "pytest"
    first_id = listed[1]["id"]

    error = refused(auth.rpc.revoke_session, other.user["id"], first_id)
    assert (error.code, error.status) == ("not_found", 404)
    assert auth.rpc.revoke_session(user_id, first_id) is None
    assert refused(auth.rpc.authenticate, {"token": first["token"]}).code == "unauthenticated"
    assert [s["id"] for s in auth.rpc.list_sessions(user_id)["items"]] == [current]
    assert refused(auth.rpc.revoke_session, user_id, first_id).code == "not_found"


# ---------------------------------------------------------------- profile and email change


def test_profile_update(auth):
    account = register(auth)
    avatar = str(uuid.uuid4())
    user = auth.rpc.update_profile(
        account.user["id"], {"display_name": "New name", "bio": "hello", "avatar_image_id": avatar}
    )
    assert (user["display_name"], user["bio"], user["avatar_image_id"]) == ("New name", "hello", avatar)
    user = auth.rpc.update_profile(account.user["id"], {"bio": None})
    assert (user["display_name"], user["bio"]) == ("New name", None)
    error = refused(auth.rpc.update_profile, account.user["id"], {"email": "x@example.com"})
    assert error.code == "invalid_request"
    assert refused(auth.rpc.get_user, str(uuid.uuid4())).code == "not_found"
    assert refused(auth.rpc.get_user, "nope").code == "invalid_request"  # a trusted id: the caller's bug


def user_updates(auth, user_id: str) -> int:
    auth.tap.drain()
    found = [body for kind, body in auth.tap.seen
             if kind == "user_updated" and body.get("user_id") == user_id]
    for body in found:
        auth.tap.seen.remove(("user_updated", body))
    return len(found)


def test_a_change_to_what_get_user_answers_publishes_user_updated(auth):
    """For the gateways' read caches (gateway/readcache.py): out before the RPC returns."""
    account = register(auth)
    user_id = account.user["id"]
    auth.rpc.verify_email({"email": account.email, "code": account.code})
    assert user_updates(auth, user_id) == 1
    auth.rpc.update_profile(user_id, {"display_name": "Changed"})
    assert user_updates(auth, user_id) == 1
    refused(auth.rpc.update_profile, user_id, {"email": "x@example.com"})
    assert user_updates(auth, user_id) == 0  # refused: nothing changed, nothing published
    auth.rpc.set_admin(account.email, True)
    assert user_updates(auth, user_id) == 1
    auth.rpc.get_user(user_id)
    assert user_updates(auth, user_id) == 0


def test_email_change_flow(auth):
    account, other = verified(auth), register(auth)
    user_id = account.user["id"]
    new = new_email("moved")

    wrong = refused(auth.rpc.request_email_change, user_id, {"new_email": new, "password": "nope nope"})
    assert (wrong.code, wrong.status) == ("invalid_credentials", 403)
    taken = refused(
        auth.rpc.request_email_change, user_id, {"new_email": other.email, "password": PASSWORD}
    )
    assert (taken.code, taken.status) == ("email_taken", 409)
    assert auth.tap.about(new) == [] and auth.tap.about(other.email) == []

    assert auth.rpc.request_email_change(user_id, {"new_email": new, "password": PASSWORD}) is None
    event = auth.tap.one(new, "email_verification_requested")
    assert (event["purpose"], event["user_id"]) == ("email_change", user_id)
    assert auth.rpc.get_user(user_id)["email"] == account.email  # not until verified
    # a stranger's resend for the new address renews nothing of this account's
    time.sleep(1.1)
    auth.rpc.resend_verification({"email": new})
    assert auth.tap.about(new) == []

    verified_user = auth.rpc.verify_email({"email": new, "code": code_in(event)})["user"]
    assert (verified_user["id"], verified_user["email"], verified_user["email_verified"]) == (
        user_id, new, True)
    assert login(auth, new)["user"]["email"] == new
    assert refused(login, auth, account.email).code == "invalid_credentials"


def test_an_unverified_account_cannot_change_its_address(auth):
    account = register(auth)
    error = refused(auth.rpc.request_email_change, account.user["id"],
                    {"new_email": new_email(), "password": PASSWORD})
    assert (error.code, error.status) == ("email_unverified", 403)


def test_wrong_passwords_for_an_email_change_lock_the_account(auth):
    account = verified(auth)
    ip = new_ip()
    for _ in range(MAX_ACCOUNT_FAILURES):
        error = refused(auth.rpc.request_email_change, account.user["id"],
                        {"new_email": new_email(), "password": "not the password"}, client_ip=ip)
        assert error.code == "invalid_credentials"
    error = refused(login, auth, account.email)
    assert (error.code, error.status) == ("rate_limited", 429)
    error = refused(auth.rpc.request_email_change, account.user["id"],
                    {"new_email": new_email(), "password": PASSWORD})
    assert error.code == "rate_limited"


# ---------------------------------------------------------------- TOTP and admin


def test_admin_needs_totp_and_codes_are_single_use(auth):
    account = register(auth)
    session = login(auth, account.email)["token"]
    granted = auth.rpc.set_admin(account.email, True)
    assert (granted["user_id"], granted["is_admin"]) == (account.user["id"], True)
    secret = pyotp.parse_uri(granted["otpauth_uri"]).secret
    # sessions opened without a second factor end with the grant
    assert refused(auth.rpc.authenticate, {"token": session}).code == "unauthenticated"

    error = refused(login, auth, account.email)
    assert (error.code, error.status) == ("totp_required", 401)
    code = pyotp.TOTP(secret).now()
    logged_in = login(auth, account.email, totp_code=code)
    assert logged_in["user"]["is_admin"] is True and logged_in["user"]["totp_enabled"] is True
    assert auth.rpc.authenticate({"token": logged_in["token"]})["is_admin"] is True
    replay = refused(login, auth, account.email, totp_code=code)
    assert (replay.code, replay.status) == ("invalid_totp", 401)

    assert auth.rpc.set_admin(account.email, True)["otpauth_uri"] is None
    assert refused(auth.rpc.set_admin, new_email(), True).code == "not_found"
    assert refused(auth.rpc.set_admin, account.email, "yes").code == "invalid_request"


def test_admins_hold_no_api_keys(auth):
    account = verified(auth)
    granted = auth.rpc.set_admin(account.email, True)
    assert granted["api_keys_revoked"] == 1
    assert refused(auth.rpc.authenticate, {"api_key": account.api_key["key"]}).code == (
        "unauthenticated")
    error = refused(auth.rpc.create_api_key, account.user["id"], {"name": "ops"})
    assert (error.code, error.status) == ("admin_api_keys_refused", 403)
    withdrawn = auth.rpc.set_admin(account.email, False)
    assert (withdrawn["is_admin"], withdrawn["api_keys_revoked"]) == (False, 0)
    key = auth.rpc.create_api_key(account.user["id"], {"name": "after"})
    assert auth.rpc.authenticate({"api_key": key["key"]})["is_admin"] is False
    # withdrawing from an account that is no admin changes nothing
    assert auth.rpc.set_admin(account.email, False)["api_keys_revoked"] == 0


def test_totp_enrollment_by_the_user(auth):
    unverified = register(auth)
    error = refused(auth.rpc.begin_totp_enrollment, unverified.user["id"])
    assert (error.code, error.status) == ("email_unverified", 403)
    account = verified(auth)
    user_id = account.user["id"]
    enrollment = auth.rpc.begin_totp_enrollment(user_id)
    assert enrollment["otpauth_uri"].startswith("otpauth://totp/Darkroom:")
    totp = pyotp.TOTP(enrollment["secret"])
    valid = {totp.at(time.time() + d) for d in (-30, 0, 30)}
    wrong = next(f"{n:06d}" for n in range(10**6) if f"{n:06d}" not in valid)
    error = refused(auth.rpc.confirm_totp_enrollment, user_id, {"code": wrong})
    assert (error.code, error.status) == ("invalid_totp", 400)
    assert login(auth, account.email)["token"]  # still off

    assert auth.rpc.confirm_totp_enrollment(user_id, {"code": totp.now()}) is None
    assert auth.rpc.get_user(user_id)["totp_enabled"] is True
    assert refused(login, auth, account.email).code == "totp_required"


# ---------------------------------------------------------------- webhook secret


def test_webhook_secret_is_made_on_first_use_and_rotated(auth):
    account = register(auth)
    user_id = account.user["id"]
    with auth.engine.connect() as conn:
        stored = conn.execute(text("SELECT count(*) FROM webhook_secrets WHERE user_id = :u"),
                              {"u": uuid.UUID(user_id)}).scalar_one()
    assert stored == 0  # nothing until someone asks
    first = auth.rpc.get_webhook_secret(user_id)
    assert set(first) == {"secret", "created_at"}
    assert first["secret"].startswith("whsec_") and len(first["secret"]) == 6 + 44
    # standard base64 of 32 bytes: what Standard Webhooks libraries decode
    assert len(base64.b64decode(first["secret"][6:], validate=True)) == 32
    made = datetime.fromisoformat(first["created_at"])
    assert abs(datetime.now(UTC) - made) < timedelta(minutes=1)
    assert auth.rpc.get_webhook_secret(user_id) == first

    rotated = auth.rpc.rotate_webhook_secret(user_id)
    assert rotated["secret"].startswith("whsec_") and rotated["secret"] != first["secret"]
    assert datetime.fromisoformat(rotated["created_at"]) >= made
    assert auth.rpc.get_webhook_secret(user_id) == rotated
    assert auth.rpc.get_webhook_secret(register(auth).user["id"])["secret"] != rotated["secret"]


def test_concurrent_first_uses_agree_on_one_secret(auth):
    user_id = register(auth).user["id"]
    replies = [auth.rpc.get_webhook_secret.call_async(user_id) for _ in range(6)]
    secrets = {reply.result()["secret"] for reply in replies}
    assert len(secrets) == 1
    assert auth.rpc.get_webhook_secret(user_id)["secret"] in secrets
    with auth.engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM webhook_secrets WHERE user_id = :u"),
                            {"u": uuid.UUID(user_id)}).scalar_one() == 1


def test_webhook_secret_of_an_unknown_user_is_not_found(auth):
    # a user id is a trusted caller's: unknown is 404, malformed is the caller's bug (400)
    for user_id, answer in ((str(uuid.uuid4()), ("not_found", 404)),
                            ("not-a-uuid", ("invalid_request", 400))):
        for call in (auth.rpc.get_webhook_secret, auth.rpc.rotate_webhook_secret):
            error = refused(call, user_id)
            assert (error.code, error.status) == answer


# ---------------------------------------------------------------- races (PostgreSQL)


def at_once(call, payloads: list) -> list:
    """Every call made before any answer is read: the service's workers serve
    them concurrently. Each result is the answer or the DomainError."""
    replies = [call.call_async(*args, **kwargs) for args, kwargs in payloads]
    results = []
    for reply in replies:
        try:
            results.append(reply.result())
        except DomainError as exc:
            results.append(exc)
    return results


def codes(results: list) -> list[str]:
    return sorted(r.code if isinstance(r, DomainError) else "ok" for r in results)


def test_parallel_wrong_passwords_cannot_outrun_the_lockout(auth):
    account = register(auth)
    guesses = [(({"email": account.email, "password": f"guess number {i}"},), {})
               for i in range(10)]
    results = at_once(auth.rpc.login, guesses)
    # exactly the account's budget of passwords was checked; the rest refused unchecked
    assert codes(results) == ["invalid_credentials"] * MAX_ACCOUNT_FAILURES + \
        ["rate_limited"] * (10 - MAX_ACCOUNT_FAILURES)
    assert refused(login, auth, account.email).code == "rate_limited"  # locked now


def test_one_totp_code_lets_in_only_one_of_parallel_logins(auth):
    account = verified(auth)
    user_id = account.user["id"]
    totp = pyotp.TOTP(auth.rpc.begin_totp_enrollment(user_id)["secret"])
    auth.rpc.confirm_totp_enrollment(user_id, {"code": totp.now()})
    code = totp.at(time.time() + 30)  # the next step: newer than the one enrolment used
    logins = [(({"email": account.email, "password": PASSWORD, "totp_code": code},), {})
              for _ in range(MAX_ACCOUNT_FAILURES)]
    results = at_once(auth.rpc.login, logins)
    assert codes(results) == ["invalid_totp"] * (MAX_ACCOUNT_FAILURES - 1) + ["ok"]


def test_parallel_wrong_codes_cannot_outrun_the_attempts(auth):
    account = register(auth)
    wrong = [f"{(int(account.code) + i) % 1_000_000:06d}" for i in range(1, 11)]
    results = at_once(auth.rpc.verify_email,
                      [(({"email": account.email, "code": c},), {}) for c in wrong])
    # one code, 5 attempts: the code was checked 5 times, then never again
    assert codes(results).count("invalid_code") == 5
    assert set(codes(results)) == {"invalid_code", "code_expired"}
    assert refused(auth.rpc.verify_email, {"email": account.email, "code": account.code}).code \
        == "code_expired"


def test_parallel_requests_leave_one_live_code_per_account_and_address(auth):
    account = verified(auth)
    target = new_email("target")
    requests_ = [((account.user["id"], {"new_email": target, "password": PASSWORD}), {})
                 for _ in range(MAX_ACCOUNT_FAILURES)]
    results = at_once(auth.rpc.request_email_change, requests_)
    assert all(r is None for r in results), results
    with auth.engine.connect() as conn:
        live = conn.execute(text(
            "SELECT count(*) FROM email_verifications WHERE user_id = :u AND email_index = :e"
            " AND used_at IS NULL AND superseded_at IS NULL"),
            {"u": uuid.UUID(account.user["id"]), "e": email_index(target)}).scalar_one()
    assert live == 1
    assert len(auth.tap.about(target, "email_verification_requested")) == 1
