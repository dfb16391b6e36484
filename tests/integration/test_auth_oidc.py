"""OpenID Connect sign-in and the age gate through the auth service's real
entrypoint (`nameko run`, the Procfile's "auth" line), against RabbitMQ,
PostgreSQL and a real OpenID provider process (oidc-provider-mock,
tests/oidc_provider.py), called over RPC as the gateway calls it.

Two providers are configured: ``corp`` (tokens valid for an hour) and
``stale`` (it issues ID tokens already expired), plus ``gone``, whose issuer
does not answer. The age gate is on (13, birth dates)."""

from __future__ import annotations

import uuid
from types import SimpleNamespace

import pytest
from nameko.standalone.rpc import ClusterRpcProxy
from sqlalchemy import text

from services.common.db import make_engine
from services.common.errors import DomainError
from services.common.fieldcrypt import email_index
from tests.conftest import base_env, free_port, wait_for
from tests.oidc_provider import OidcProvider, query_of, with_param

pytestmark = pytest.mark.integration

APP = "http://app.example.test/signed-in"
PASSWORD = "correct horse battery"


@pytest.fixture(scope="module")
def providers(process_log_dir):
    with OidcProvider(process_log_dir, name="oidc-corp") as corp, \
            OidcProvider(process_log_dir, token_max_age=-600, name="oidc-stale") as stale:
        yield SimpleNamespace(corp=corp, stale=stale)


@pytest.fixture(scope="module")
def auth(make_vhost, make_database, start_process, providers):
    amqp_uri, _ = make_vhost("auth-oidc")
    db_url = make_database("auth_oidc")
    port = free_port()
    provider_env = {}
    for name, issuer in (("corp", providers.corp.issuer), ("stale", providers.stale.issuer),
                         ("gone", f"http://127.0.0.1:{free_port()}")):
        provider_env.update({f"AUTH_OIDC_{name.upper()}_ISSUER": issuer,
                             f"AUTH_OIDC_{name.upper()}_CLIENT_ID": f"darkroom-{name}",
                             f"AUTH_OIDC_{name.upper()}_CLIENT_SECRET": "s3cret"})
    proc = start_process("auth", base_env(
        AMQP_URI=amqp_uri, AUTH_DATABASE_URL=db_url, AUTH_METRICS_PORT=port,
        AUTH_OIDC_PROVIDERS="corp,stale,gone", AUTH_OIDC_REDIRECT_URIS="http://app.example.test",
        AUTH_OIDC_TIMEOUT_SECONDS=2, AUTH_MINIMUM_AGE=13,
        PUBLIC_BASE_URL="http://127.0.0.1:9", **provider_env))
    proc.wait_ready(f"http://127.0.0.1:{port}/readyz")
    engine = make_engine(db_url)
    with ClusterRpcProxy({"AMQP_URI": amqp_uri}, timeout=20) as rpc:
        wait_for(lambda: rpc.auth.ping(), 30, 0.2, "auth RPC")
        yield SimpleNamespace(rpc=rpc.auth, engine=engine, proc=proc)
    engine.dispose()
    proc.stop()


def refused(call, *args, **kwargs) -> DomainError:
    with pytest.raises(DomainError) as info:
        call(*args, **kwargs)
    return info.value


def count(auth, sql: str, **params) -> int:
    """``:e`` is an address, compared as its blind index (``email_index``)."""
    if "e" in params:
        params["e"] = email_index(params["e"])
    with auth.engine.connect() as conn:
        return conn.execute(text(sql), params).scalar_one()


def person(provider, verified=True):
    subject = f"sub-{uuid.uuid4().hex[:10]}"
    email = f"{subject}@example.com"
    provider.set_user(subject, email=email, email_verified=verified)
    return subject, email


def round_trip(auth, provider, subject, name="corp", user_id=None, tamper=None):
    """Start, sign in at the provider, come back through auth's callback:
    the query auth sends the app (``code`` or ``error``)."""
    if user_id is None:
        url = auth.rpc.oidc_start(name, {"redirect_uri": APP})["authorization_url"]
    else:
        url = auth.rpc.oidc_start_link(user_id, name, {"redirect_uri": APP})["authorization_url"]
    assert query_of(url)["redirect_uri"] == f"http://127.0.0.1:9/v1/auth/oidc/{name}/callback"
    back = provider.authorize(tamper(url) if tamper else url, subject)
    location = auth.rpc.oidc_callback(name, query_of(back))["location"]
    assert location.startswith(APP + "?")
    return query_of(location)


def test_sign_up_asks_the_age_then_signs_in(auth, providers):
    subject, email = person(providers.corp)
    code = round_trip(auth, providers.corp, subject)["code"]
    assert refused(auth.rpc.oidc_exchange, {"code": code}).code == "age_required"
    first = auth.rpc.oidc_exchange({"code": code, "birth_date": "1990-04-01"},
                                   client_ip="198.51.100.7", user_agent="it")
    assert first["user"]["email"] == email and first["user"]["email_verified"] is True
    assert auth.rpc.authenticate({"token": first["token"]})["user_id"] == first["user"]["id"]
    assert refused(auth.rpc.oidc_exchange, {"code": code}).code == "oidc_invalid_code"
    again = round_trip(auth, providers.corp, subject)["code"]
    assert auth.rpc.oidc_exchange({"code": again})["user"]["id"] == first["user"]["id"]
    assert count(auth, "SELECT count(*) FROM users WHERE email_index = :e", e=email) == 1
    assert count(auth, "SELECT count(*) FROM users WHERE email_index = :e AND "
                       "minimum_age_met_at IS NOT NULL", e=email) == 1
    identities = auth.rpc.list_identities(first["user"]["id"])["items"]
    assert [(i["provider"], i["email"]) for i in identities] == [("corp", email)]
    # the only way this account signs in: not unlinked
    error = refused(auth.rpc.unlink_identity, first["user"]["id"], identities[0]["id"])
    assert (error.code, error.status) == ("last_sign_in_method", 409)


def test_under_the_minimum_age_nothing_is_kept(auth, providers):
    subject, email = person(providers.corp)
    code = round_trip(auth, providers.corp, subject)["code"]
    error = refused(auth.rpc.oidc_exchange, {"code": code, "birth_date": "2020-02-02"})
    assert (error.code, error.status) == ("under_minimum_age", 400)
    # addresses are encrypted: the account by its blind index, the provider's by subject
    assert count(auth, "SELECT count(*) FROM users WHERE email_index = :e", e=email) == 0
    for table in ("identities", "oidc_codes"):
        assert count(auth, f"SELECT count(*) FROM {table} WHERE subject = :s", s=subject) == 0
    assert refused(auth.rpc.oidc_exchange, {"code": code, "birth_date": "1990-01-01"}).code == \
        "oidc_invalid_code"
    # registering with a password: the same gate, nothing written either
    kid = f"kid-{uuid.uuid4().hex[:8]}@example.com"
    error = refused(auth.rpc.register, {"email": kid, "password": PASSWORD,
                                        "birth_date": "2019-05-05"})
    assert error.code == "under_minimum_age"
    assert count(auth, "SELECT count(*) FROM users WHERE email_index = :e", e=kid) == 0
    # nothing in the service's log either (nameko logs an expected error with its traceback)
    assert kid not in auth.proc.logs() and "under_minimum_age" not in auth.proc.logs()
    assert refused(auth.rpc.register, {"email": kid, "password": PASSWORD}).code == "age_required"
    auth.rpc.register({"email": kid, "password": PASSWORD, "birth_date": "2000-05-05"})
    assert count(auth, "SELECT count(*) FROM users WHERE email_index = :e AND "
                       "minimum_age_met_at IS NOT NULL", e=kid) == 1


def password_account(auth, email):
    auth.rpc.register({"email": email, "password": PASSWORD, "birth_date": "1980-01-01"})
    return auth.rpc.find_user(email)["id"]


def test_an_existing_account_is_linked_only_when_both_addresses_are_verified(auth, providers):
    subject, email = person(providers.corp, verified=True)
    user_id = password_account(auth, email)  # its address is not verified yet
    assert round_trip(auth, providers.corp, subject) == {"error": "link_required"}
    assert count(auth, "SELECT count(*) FROM identities WHERE user_id = :u", u=user_id) == 0
    with auth.engine.begin() as conn:
        conn.execute(text("UPDATE users SET email_verified = true WHERE id = :u"), {"u": user_id})
    code = round_trip(auth, providers.corp, subject)["code"]
    assert auth.rpc.oidc_exchange({"code": code})["user"]["id"] == user_id


def test_an_explicit_link_and_a_refused_one(auth, providers):
    subject, _ = person(providers.corp, verified=False)
    owner = password_account(auth, f"owner-{uuid.uuid4().hex[:8]}@example.com")
    code = round_trip(auth, providers.corp, subject, user_id=owner)["code"]
    assert auth.rpc.oidc_exchange({"code": code})["user"]["id"] == owner
    other = password_account(auth, f"other-{uuid.uuid4().hex[:8]}@example.com")
    assert round_trip(auth, providers.corp, subject, user_id=other) == {"error": "identity_taken"}
    assert auth.rpc.list_identities(other)["items"] == []
    # the owner has a password: its one identity may go
    (identity,) = auth.rpc.list_identities(owner)["items"]
    assert refused(auth.rpc.unlink_identity, other, identity["id"]).code == "not_found"
    auth.rpc.unlink_identity(owner, identity["id"])
    assert auth.rpc.list_identities(owner)["items"] == []


def test_a_tampered_state_is_refused_and_a_state_is_used_once(auth, providers):
    subject, _ = person(providers.corp)
    url = auth.rpc.oidc_start("corp", {"redirect_uri": APP})["authorization_url"]
    back = query_of(providers.corp.authorize(url, subject))
    error = refused(auth.rpc.oidc_callback, "corp", {**back, "state": back["state"][:-2] + "xx"})
    assert (error.code, error.status) == ("oidc_invalid_state", 400)
    assert "code=" in auth.rpc.oidc_callback("corp", back)["location"]
    assert refused(auth.rpc.oidc_callback, "corp", back).code == "oidc_invalid_state"


def test_a_wrong_nonce_is_refused(auth, providers):
    subject, _ = person(providers.corp)
    answer = round_trip(auth, providers.corp, subject,
                        tamper=lambda url: with_param(url, "nonce", "replayed-nonce"))
    assert answer == {"error": "oidc_invalid_token"}


def test_an_expired_id_token_is_refused(auth, providers):
    subject, email = person(providers.stale)
    assert round_trip(auth, providers.stale, subject, name="stale") == \
        {"error": "oidc_invalid_token"}
    assert count(auth, "SELECT count(*) FROM users WHERE email_index = :e", e=email) == 0


def test_an_issuer_that_does_not_answer(auth):
    error = refused(auth.rpc.oidc_start, "gone", {"redirect_uri": APP})
    assert (error.code, error.status) == ("oidc_provider_unavailable", 503)
    assert refused(auth.rpc.oidc_start, "corp",
                   {"redirect_uri": "http://evil.example.test/"}).code == "redirect_uri_not_allowed"
    assert auth.rpc.oidc_providers() == {"items": [{"name": "corp"}, {"name": "gone"},
                                                   {"name": "stale"}]}

