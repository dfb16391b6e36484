"""Authentication: bearer tokens and API keys, the principal cache, require_verified."""

from __future__ import annotations

import pytest
from flask import g, jsonify

from gateway.auth import AuthCache, Principal, authenticated, require_verified
from tests.unit.gateway.conftest import (
    API_KEY,
    APIKEY,
    BEARER,
    KEY_ID,
    SESSION_ID,
    TOKEN,
    UNVERIFIED_TOKEN,
    USER_ID,
    principal,
)


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def authenticate_calls(auth) -> list:
    return [args[0] for args, _ in auth.called("authenticate")]


def test_bearer_token(client, auth):
    assert client.get("/v1/me", headers=BEARER).status_code == 200
    assert authenticate_calls(auth) == [{"token": TOKEN}]


def test_api_key(client, auth):
    assert client.get("/v1/me", headers=APIKEY).status_code == 200
    assert authenticate_calls(auth) == [{"api_key": API_KEY}]


def test_an_api_key_works_as_a_bearer_token(client, auth):
    # OpenAI-style SDKs send the key as `Authorization: Bearer <key>`: the
    # gateway passes the bearer value on, and auth tells a key by its prefix
    response = client.get("/v1/me", headers={"Authorization": f"Bearer {API_KEY}"})
    assert response.status_code == 200
    assert authenticate_calls(auth) == [{"token": API_KEY}]
    # the same key both ways names one account: accepted
    both = {"Authorization": f"Bearer {API_KEY}", **APIKEY}
    assert client.get("/v1/me", headers=both).status_code == 200
    # a bearer API key is no session: logout refuses it
    response = client.post("/v1/auth/logout", headers={"Authorization": f"Bearer {API_KEY}"})
    assert response.status_code == 400


def test_bearer_scheme_is_case_insensitive(client, auth):
    assert client.get("/v1/me", headers={"Authorization": f"bearer {TOKEN}"}).status_code == 200


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer forged-token"},
        {"X-API-Key": "dr_live_forged"},
        {"Authorization": f"Basic {TOKEN}"},
        {"Authorization": "Bearer"},
        {"Authorization": "Bearer " + "a" * 201},
        {"X-API-Key": ""},
        {"Authorization": "Bearer tok\x01en"},
    ],
    ids=["none", "forged-token", "forged-key", "basic", "empty-bearer", "too-long", "empty-key", "control-char"],
)
def test_missing_or_forged_credential_is_401(client, headers):
    response = client.get("/v1/me", headers=headers)
    assert response.status_code == 401
    assert response.get_json()["error"]["code"] == "unauthenticated"
    assert response.headers["WWW-Authenticate"].startswith("Bearer")


def test_overlong_credential_is_rejected_without_asking_auth(client, auth):
    client.get("/v1/me", headers={"X-API-Key": "k" * 500})
    assert authenticate_calls(auth) == []


def test_both_credentials_of_one_account_are_accepted(client, auth):
    # the OpenAPI document's security alternatives allow sending both
    response = client.get("/v1/me", headers={**BEARER, **APIKEY})
    assert response.status_code == 200
    assert authenticate_calls(auth) == [{"token": TOKEN}, {"api_key": API_KEY}]


def test_with_both_credentials_the_session_is_the_one_in_use(client, auth):
    # logout revokes the bearer session, also when an API key comes with it
    assert client.post("/v1/auth/logout", headers={**BEARER, **APIKEY}).status_code == 204
    assert auth.called("logout") == [((SESSION_ID,), {})]


@pytest.mark.parametrize(
    "headers",
    [
        {**BEARER, "X-API-Key": "dr_live_forged"},
        {"Authorization": "Bearer forged-token", **APIKEY},
        {"Authorization": f"Bearer {UNVERIFIED_TOKEN}", **APIKEY},
    ],
    ids=["forged-key", "forged-token", "two-accounts"],
)
def test_both_credentials_must_be_valid_and_of_one_account(client, headers):
    response = client.get("/v1/me", headers=headers)
    assert response.status_code == 401
    assert response.get_json()["error"]["code"] == "unauthenticated"


def test_principal_is_cached_within_ttl_and_resolved_again_after(app, client, auth):
    clock = Clock()
    cache: AuthCache = app.extensions["darkroom"].auth_cache
    cache.clock = clock
    assert cache.ttl == 15

    for _ in range(3):
        assert client.get("/v1/me", headers=BEARER).status_code == 200
    assert len(authenticate_calls(auth)) == 1

    clock.now += 14.9
    assert client.get("/v1/me", headers=BEARER).status_code == 200
    assert len(authenticate_calls(auth)) == 1

    clock.now += 0.2
    assert client.get("/v1/me", headers=BEARER).status_code == 200
    assert len(authenticate_calls(auth)) == 2


def test_revoked_credential_stops_working_after_the_ttl(app, client, auth):
    clock = Clock()
    app.extensions["darkroom"].auth_cache.clock = clock
    assert client.get("/v1/me", headers=BEARER).status_code == 200
    del auth.credentials[("token", TOKEN)]  # revoked elsewhere (another replica)
    assert client.get("/v1/me", headers=BEARER).status_code == 200  # still cached
    clock.now += 16
    assert client.get("/v1/me", headers=BEARER).status_code == 401


def test_failures_are_not_cached(client, auth):
    headers = {"Authorization": "Bearer not-yet-valid"}
    assert client.get("/v1/me", headers=headers).status_code == 401
    auth.credentials[("token", "not-yet-valid")] = principal(USER_ID, "session", SESSION_ID)
    assert client.get("/v1/me", headers=headers).status_code == 200
    assert len(authenticate_calls(auth)) == 2


def test_cache_is_keyed_by_a_hash_not_the_credential(app, client):
    client.get("/v1/me", headers=BEARER)
    keys = list(app.extensions["darkroom"].auth_cache._entries)
    assert keys == [AuthCache.key("token", TOKEN)]
    assert TOKEN not in keys[0]


def test_ttl_is_capped_at_30_seconds(make_app):
    app = make_app(AUTH_CACHE_SECONDS=3600)
    assert app.extensions["darkroom"].auth_cache.ttl == 30


def test_zero_ttl_disables_the_cache(make_app, auth):
    client = make_app(AUTH_CACHE_SECONDS=0).test_client()
    client.get("/v1/me", headers=BEARER)
    client.get("/v1/me", headers=BEARER)
    assert len(authenticate_calls(auth)) == 2


def test_logout_evicts_the_local_cache_entry(app, client, auth):
    assert client.get("/v1/me", headers=BEARER).status_code == 200
    assert client.post("/v1/auth/logout", headers=BEARER).status_code == 204
    del auth.credentials[("token", TOKEN)]  # what auth.logout did
    assert client.get("/v1/me", headers=BEARER).status_code == 401


def test_revoking_a_key_evicts_it_from_the_local_cache(client, auth):
    assert client.get("/v1/me", headers=APIKEY).status_code == 200
    assert client.delete(f"/v1/me/api-keys/{KEY_ID}", headers=BEARER).status_code == 204
    del auth.credentials[("api_key", API_KEY)]
    assert client.get("/v1/me", headers=APIKEY).status_code == 401


def test_revoking_a_session_evicts_it_from_the_local_cache(client, auth):
    assert client.get("/v1/me", headers=BEARER).status_code == 200
    assert client.delete(f"/v1/me/sessions/{SESSION_ID}", headers=APIKEY).status_code == 204
    del auth.credentials[("token", TOKEN)]
    assert client.get("/v1/me", headers=BEARER).status_code == 401


def test_cache_stays_bounded():
    cache = AuthCache(30, max_entries=3)
    p = Principal.from_rpc(principal(USER_ID, "session", SESSION_ID))
    for i in range(10):
        cache.put(AuthCache.key("token", str(i)), p)
    assert len(cache) == 3
    assert cache.get(AuthCache.key("token", "9")) is p


# ------------------------------------------------------------ decorators on test routes


@pytest.fixture
def guarded_client(make_app):
    app = make_app()

    @app.get("/test/verified")
    @require_verified
    def verified_only():
        return jsonify({"user_id": g.principal.user_id})

    @app.get("/test/any")
    @authenticated
    def any_user():
        return jsonify({"user_id": g.principal.user_id, "type": g.principal.credential_type})

    return app.test_client()


def test_require_verified_lets_verified_users_through(guarded_client):
    response = guarded_client.get("/test/verified", headers=BEARER)
    assert response.status_code == 200
    assert response.get_json() == {"user_id": USER_ID}


def test_require_verified_rejects_unverified_users(guarded_client):
    response = guarded_client.get("/test/verified", headers={"Authorization": f"Bearer {UNVERIFIED_TOKEN}"})
    assert response.status_code == 403
    assert response.get_json()["error"]["code"] == "email_unverified"


def test_require_verified_without_credentials_is_401(guarded_client):
    assert guarded_client.get("/test/verified").status_code == 401


def test_authenticated_exposes_the_principal(guarded_client):
    response = guarded_client.get("/test/any", headers={"Authorization": f"Bearer {UNVERIFIED_TOKEN}"})
    assert response.status_code == 200
    assert response.get_json()["type"] == "session"
    assert response.headers["Cache-Control"] == "no-store"
