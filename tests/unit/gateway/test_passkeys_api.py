"""The passkey endpoints: their RPC calls, statuses, shapes and input checks
(the WebAuthn checks themselves are the auth service's: tests/unit/auth/test_passkeys.py)."""

from __future__ import annotations

from services.common.errors import DomainError
from tests.unit.gateway.conftest import (
    APIKEY,
    BEARER,
    PASSKEY_CREDENTIAL,
    PASSKEY_ID,
    SESSION_ID,
    USER_ID,
)

PASSKEY_FIELDS = {"id", "name", "created_at", "last_used_at", "aaguid", "transports", "backed_up"}


def test_list_passkeys(client, auth):
    response = client.get("/v1/me/passkeys?limit=5", headers=BEARER)
    assert response.status_code == 200
    body = response.get_json()
    assert set(body) == {"items", "next_cursor"} and set(body["items"][0]) == PASSKEY_FIELDS
    assert auth.called("list_passkeys") == [((USER_ID,), {"page": {"limit": 5, "cursor": None}})]


def test_registration_is_options_then_the_browsers_answer(client, auth):
    response = client.post("/v1/me/passkeys/options", headers=BEARER)
    assert response.status_code == 200
    assert response.get_json() == {"options": {"challenge": "Y2hhbGxlbmdl",
                                               "rp": {"id": "127.0.0.1"}}}
    assert auth.called("passkey_registration_options") == [((USER_ID,), {"session_id": SESSION_ID})]
    credential = {"id": "x", "rawId": "x", "type": "public-key", "response": {}}
    response = client.post("/v1/me/passkeys", json={"credential": credential, "name": "Phone"},
                           headers=BEARER)
    assert response.status_code == 201
    assert response.get_json()["name"] == "Phone"
    assert auth.called("register_passkey") == [
        ((USER_ID, {"credential": credential, "name": "Phone"}), {"session_id": SESSION_ID})]


def test_with_an_api_key_no_session_is_named_and_the_service_refuses(client, auth):
    auth.fail_with["passkey_registration_options"] = DomainError(
        "session_required", "sign in (a session, not an API key) to do this", 403)
    response = client.post("/v1/me/passkeys/options", headers=APIKEY)
    assert (response.status_code, response.get_json()["error"]["code"]) == (403,
                                                                           "session_required")
    assert auth.called("passkey_registration_options") == [((USER_ID,), {"session_id": None})]


def test_registration_needs_a_credential_object(client, auth):
    for body in ({}, {"credential": "x"}, {"credential": {}, "name": ""},
                 {"credential": {}, "extra": 1}):
        response = client.post("/v1/me/passkeys", json=body, headers=BEARER)
        assert response.status_code == 400, body
        assert response.get_json()["error"]["code"] == "invalid_request"
    assert auth.called("register_passkey") == []


def test_passkey_endpoints_of_the_account_need_a_credential(client, auth):
    assert client.get("/v1/me/passkeys").status_code == 401
    assert client.post("/v1/me/passkeys/options").status_code == 401
    assert client.delete(f"/v1/me/passkeys/{PASSKEY_ID}").status_code == 401


def test_delete_passkey_and_its_refusals(client, auth):
    response = client.delete(f"/v1/me/passkeys/{PASSKEY_ID}", headers=BEARER)
    assert response.status_code == 204
    assert auth.called("delete_passkey") == [((USER_ID, PASSKEY_ID), {})]
    auth.fail_with["delete_passkey"] = DomainError(
        "last_sign_in_method", "this passkey is the account's last way to sign in", 409)
    response = client.delete(f"/v1/me/passkeys/{PASSKEY_ID}", headers=BEARER)
    assert response.status_code == 409
    assert response.get_json()["error"]["code"] == "last_sign_in_method"
    assert client.delete("/v1/me/passkeys/not-a-uuid", headers=BEARER).status_code == 404


def test_passkey_login_answers_like_a_login(client, auth):
    response = client.post("/v1/auth/passkey/options")
    assert response.status_code == 200 and response.get_json()["options"]["rpId"] == "127.0.0.1"
    credential = {"id": PASSKEY_CREDENTIAL, "rawId": PASSKEY_CREDENTIAL, "type": "public-key",
                  "response": {}}
    response = client.post("/v1/auth/passkey/login", json={"credential": credential},
                           headers={"User-Agent": "pytest-agent/1.0"},
                           environ_base={"REMOTE_ADDR": "203.0.113.7"})
    assert response.status_code == 200
    assert set(response.get_json()) == {"token", "expires_at", "user"}
    login = client.post("/v1/auth/login", json={"email": "ada@example.com",
                                                "password": "correct horse battery"})
    assert set(login.get_json()) == set(response.get_json())
    ((payload,), kwargs) = auth.called("passkey_login")[0]
    assert payload == {"credential": credential}
    assert kwargs == {"client_ip": "203.0.113.7", "user_agent": "pytest-agent/1.0"}
    response = client.post("/v1/auth/passkey/login",
                           json={"credential": {**credential, "id": "other"}})
    assert response.status_code == 401
    assert response.get_json()["error"]["code"] == "invalid_passkey"


def test_passkey_sign_in_shares_the_auth_rate_limit(make_app, auth):
    client = make_app(RATELIMIT_ENABLED=True, RATELIMIT_AUTH="2 per minute").test_client()
    assert client.post("/v1/auth/passkey/options").status_code == 200
    assert client.post("/v1/auth/login", json={"email": "ada@example.com",
                                               "password": "correct horse battery"}).status_code == 200
    response = client.post("/v1/auth/passkey/options")
    assert (response.status_code, response.get_json()["error"]["code"]) == (429, "rate_limited")
    assert client.post("/v1/auth/passkey/login", json={"credential": {}}).status_code == 429
    assert len(auth.called("passkey_login_options")) == 1
