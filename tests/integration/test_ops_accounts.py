"""`darkroom-ops users list|show|disable|enable|delete` and `keys revoke`
(the installed console script, as a subprocess) against the real auth and
privacy services, started by their Procfile commands on RabbitMQ and
PostgreSQL.

- disable: the account cannot sign in (403 ``account_disabled``, after the
  right password only) and its sessions and API keys stop working at once;
  enable gives the sign-in back, not the keys;
- delete: the privacy service's erasure (not a raw delete): a pending
  erasure request with its grace period, ``privacy.erasure_scheduled``
  published, asked by an operator without the owner's password; a second
  one is refused while the first is open;
- keys revoke: by prefix, by id, or every key of a user; an unknown prefix
  is a 404, not a traceback;
- --json everywhere: results and errors.
"""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace

import pytest
from nameko.standalone.rpc import ClusterRpcProxy

from services.auth.models import User
from services.auth.passwords import hash_password
from services.common.db import make_engine
from services.common.errors import DomainError
from tests.conftest import REPO, base_env, free_port, wait_for
from tests.integration.test_privacy_service import PrivacyTap

pytestmark = pytest.mark.integration

OPS = str(Path(sys.executable).parent / "darkroom-ops")
PASSWORD = "correct horse battery"


def ops(env: dict, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([OPS, *args], env=env, cwd=REPO, capture_output=True, text=True,
                          timeout=90)


@pytest.fixture(scope="module")
def stack(make_vhost, make_database, start_process):
    amqp_uri, _ = make_vhost("ops-accounts")
    ports = {name: free_port() for name in ("auth", "privacy")}
    auth_db = make_database("ops_auth")
    env = base_env(AMQP_URI=amqp_uri, OUTBOX_RELAY_INTERVAL_SECONDS=1,
                   AUTH_DATABASE_URL=auth_db, AUTH_METRICS_PORT=ports["auth"],
                   PRIVACY_DATABASE_URL=make_database("ops_privacy"),
                   PRIVACY_METRICS_PORT=ports["privacy"], PRIVACY_ERASURE_GRACE_HOURS=24,
                   OPS_RPC_TIMEOUT_SECONDS=15)
    tap = PrivacyTap(amqp_uri)
    processes = {name: start_process(name, env) for name in ports}
    for name, port in ports.items():
        processes[name].wait_ready(f"http://127.0.0.1:{port}/readyz")
    engine = make_engine(auth_db)
    with ClusterRpcProxy({"AMQP_URI": amqp_uri}, timeout=30) as rpc:
        for name in ports:
            wait_for(lambda s=name: getattr(rpc, s).ping(), 30, 0.2, f"{name} RPC")
        yield SimpleNamespace(rpc=rpc, env=env, engine=engine, tap=tap)
    engine.dispose()
    tap.close()


def new_user(stack) -> tuple[str, str]:
    """A verified account with a password (written to auth's database)."""
    user, now = uuid.uuid4(), datetime.now(UTC)
    email = f"ops-{user.hex[:10]}@example.com"
    with stack.engine.begin() as conn:
        conn.execute(User.__table__.insert().values(
            id=user, email=email, email_verified=True, password_hash=hash_password(PASSWORD),
            plan="free", created_at=now, updated_at=now))
    return str(user), email


def login(stack, email: str) -> dict:
    return stack.rpc.auth.login({"email": email, "password": PASSWORD})


def refused(call, *args) -> DomainError:
    with pytest.raises(DomainError) as info:
        call(*args)
    return info.value


def as_json(result: subprocess.CompletedProcess):
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_list_and_show(stack):
    user, email = new_user(stack)
    login(stack, email)
    stack.rpc.auth.create_api_key(user, {"name": "ci"})

    page = as_json(ops(stack.env, "users", "list", "--email", email[:14], "--json"))
    [listed] = page["items"]
    assert (listed["id"], listed["email"], listed["disabled_at"]) == (user, email, None)
    assert (listed["sessions_active"], listed["api_keys_active"]) == (1, 1)
    text = ops(stack.env, "users", "list", "--email", email[:14]).stdout.splitlines()
    assert text[0].split() == ["USER", "EMAIL", "STATE", "PLAN", "SESSIONS", "KEYS", "CREATED"]
    assert text[1].split()[:6] == [user, email, "active", "free", "1", "1"]

    by_id, by_email = (as_json(ops(stack.env, "users", "show", ref, "--json"))
                       for ref in (user, email.upper()))
    assert by_id == by_email and by_id["email"] == email
    missing = ops(stack.env, "users", "show", "nobody@example.com", "--json")
    assert missing.returncode == 1
    assert json.loads(missing.stdout) == {"error": {"code": "not_found",
                                                    "message": "user not found"}}
    assert "error: user not found (not_found)" in missing.stderr


def test_disable_stops_sign_in_and_every_credential_then_enable_gives_sign_in_back(stack):
    user, email = new_user(stack)
    session = login(stack, email)
    key = stack.rpc.auth.create_api_key(user, {"name": "ci"})
    assert stack.rpc.auth.authenticate({"api_key": key["key"]})["user_id"] == user

    result = ops(stack.env, "users", "disable", email)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == (f"{email} is disabled (user {user}): 1 session(s) and "
                                     "1 API key(s) revoked")
    for credential in ({"token": session["token"]}, {"api_key": key["key"]}):
        assert refused(stack.rpc.auth.authenticate, credential).code == "unauthenticated"
    error = refused(stack.rpc.auth.login, {"email": email, "password": PASSWORD})
    assert (error.code, error.status) == ("account_disabled", 403)
    # a wrong password is told as wrong: the refusal names no account to a guesser
    wrong = refused(stack.rpc.auth.login, {"email": email, "password": "not it at all"})
    assert wrong.code == "invalid_credentials"
    shown = as_json(ops(stack.env, "users", "show", user, "--json"))
    assert shown["disabled_at"] and (shown["sessions_active"], shown["api_keys_active"]) == (0, 0)
    again = as_json(ops(stack.env, "users", "disable", user, "--json"))
    assert (again["disabled"], again["sessions_revoked"], again["api_keys_revoked"]) == (True, 0, 0)

    enabled = as_json(ops(stack.env, "users", "enable", email, "--json"))
    assert enabled["disabled"] is False
    assert login(stack, email)["token"]
    assert refused(stack.rpc.auth.authenticate, {"api_key": key["key"]}).code == "unauthenticated"


def test_delete_is_the_privacy_services_erasure(stack):
    user, email = new_user(stack)
    refused_without_yes = ops(stack.env, "users", "delete", email, "--reason", "abuse")
    assert refused_without_yes.returncode == 2
    assert f"not erasing {email} without --yes" in refused_without_yes.stderr

    result = as_json(ops(stack.env, "users", "delete", email, "--reason", "abuse report 42",
                         "--yes", "--json"))
    request = result["request"]
    assert result["user"]["id"] == user
    assert (request["type"], request["status"]) == ("erasure", "pending")
    assert request["starts_at"] > request["created_at"]  # the grace period, as for the owner
    wait_for(lambda: stack.tap.events("erasure_scheduled", user_id=user), 20, 0.2,
             "erasure_scheduled")
    # the owner sees it as their own request: one erasure, not a second path
    mine = stack.rpc.privacy.get_request(user, request["id"])
    assert (mine["type"], mine["status"]) == ("erasure", "pending")
    assert [r["id"] for r in stack.rpc.privacy.list_requests(user)["items"]] == [request["id"]]
    # the account is still there until the erasure runs
    assert as_json(ops(stack.env, "users", "show", user, "--json"))["email"] == email

    twice = ops(stack.env, "users", "delete", user, "--reason", "again", "--yes")
    assert twice.returncode == 1
    assert "request_open" in twice.stderr or "already" in twice.stderr
    text = ops(stack.env, "users", "delete", "nobody@example.com", "--reason", "x", "--yes")
    assert text.returncode == 1 and "user not found" in text.stderr


def test_keys_revoke_by_prefix_by_id_and_all_of_a_user(stack):
    user, email = new_user(stack)
    made = [stack.rpc.auth.create_api_key(user, {"name": f"k{i}"}) for i in range(4)]

    by_prefix = as_json(ops(stack.env, "keys", "revoke", f"drk_{made[0]['prefix']}", "--json"))
    assert [k["id"] for k in by_prefix["items"]] == [made[0]["id"]]
    by_whole_key = ops(stack.env, "keys", "revoke", made[1]["key"])
    assert by_whole_key.returncode == 0, by_whole_key.stderr
    assert by_whole_key.stdout.startswith("revoked 1 API key:")
    by_id = as_json(ops(stack.env, "keys", "revoke", made[2]["id"], "--json"))
    assert by_id["items"][0]["user_id"] == user
    for key in made[:3]:
        assert refused(stack.rpc.auth.authenticate, {"api_key": key["key"]}).code \
            == "unauthenticated"
    assert stack.rpc.auth.authenticate({"api_key": made[3]["key"]})["user_id"] == user

    gone = ops(stack.env, "keys", "revoke", f"drk_{made[0]['prefix']}")
    assert gone.returncode == 1 and "API key not found (not_found)" in gone.stderr
    assert "Traceback" not in gone.stderr

    rest = as_json(ops(stack.env, "keys", "revoke", "--user", email, "--json"))
    assert [k["id"] for k in rest["items"]] == [made[3]["id"]]
    assert refused(stack.rpc.auth.authenticate, {"api_key": made[3]["key"]}).code \
        == "unauthenticated"
    assert ops(stack.env, "keys", "revoke", "--user", email).stdout.strip() \
        == "no live API keys: nothing revoked"
    both = ops(stack.env, "keys", "revoke", made[3]["id"], "--user", email)
    assert both.returncode == 2
