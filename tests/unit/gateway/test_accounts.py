"""Every Accounts endpoint: its RPC call, its status and its response shape."""

from __future__ import annotations

import pytest

from services.common.errors import DomainError
from tests.unit.gateway.conftest import (
    APIKEY,
    BEARER,
    KEY_ID,
    SESSION_ID,
    USER_ID,
)

USER_FIELDS = {
    "id", "email", "email_verified", "display_name", "bio", "avatar_image_id", "created_at",
    "plan", "processing_restricted", "totp_enabled", "is_admin",
}


def test_register_creates_account_and_passes_client_info(client, auth):
    response = client.post(
        "/v1/auth/register",
        json={"email": "Ada@Example.com", "password": "correct horse battery", "display_name": "Ada"},
        headers={"User-Agent": "pytest-agent/1.0"},
        environ_base={"REMOTE_ADDR": "203.0.113.7"},
    )
    assert response.status_code == 201
    body = response.get_json()
    assert set(body) == {"user", "api_key"}
    assert set(body["user"]) == USER_FIELDS
    assert body["api_key"] is None
    assert body["user"]["created_at"] == "2026-01-02T03:04:05.123456+00:00"
    ((payload,), kwargs) = auth.called("register")[0]
    assert payload == {"email": "ada@example.com", "password": "correct horse battery",
                       "display_name": "Ada"}
    assert kwargs == {"client_ip": "203.0.113.7", "user_agent": "pytest-agent/1.0"}
    assert response.headers["Cache-Control"] == "no-store"


def test_register_conflict_from_auth_is_passed_through(client, auth):
    auth.fail_with["register"] = DomainError("email_taken", "an account with this email already exists", 409)
    response = client.post("/v1/auth/register",
                           json={"email": "ada@example.com", "password": "correct horse battery"})
    assert response.status_code == 409
    assert response.get_json() == {"error": {
        "code": "email_taken", "message": "an account with this email already exists", "details": {}}}


def test_verify_email(client, auth):
    response = client.post("/v1/auth/verify-email", json={"email": "ada@example.com", "code": "123456"})
    assert response.status_code == 200
    assert response.get_json()["user"]["email_verified"] is True
    assert auth.called("verify_email") == [(({"email": "ada@example.com", "code": "123456"},), {})]


def test_verify_email_wrong_code(client):
    response = client.post("/v1/auth/verify-email", json={"email": "ada@example.com", "code": "654321"})
    assert response.status_code == 400
    assert response.get_json()["error"]["code"] == "invalid_code"


def test_resend_verification_is_accepted(client, auth):
    response = client.post("/v1/auth/resend-verification", json={"email": "ada@example.com"})
    assert response.status_code == 202
    assert response.get_json() == {}
    assert auth.called("resend_verification") == [(({"email": "ada@example.com"},), {})]


def test_login(client, auth):
    response = client.post(
        "/v1/auth/login",
        json={"email": "ada@example.com", "password": "correct horse battery", "totp_code": "123456"},
        headers={"User-Agent": "x" * 2000},
    )
    assert response.status_code == 200
    body = response.get_json()
    assert set(body) == {"token", "expires_at", "user"}
    assert body["expires_at"] == "2026-01-09T03:04:05+00:00"
    ((payload,), kwargs) = auth.called("login")[0]
    assert payload["totp_code"] == "123456"
    assert kwargs["client_ip"] == "127.0.0.1"
    assert len(kwargs["user_agent"]) == 512


def test_login_wrong_password(client):
    response = client.post("/v1/auth/login", json={"email": "ada@example.com", "password": "nope"})
    assert response.status_code == 401
    assert response.get_json()["error"]["code"] == "invalid_credentials"


def test_logout_revokes_the_session_used(client, auth):
    response = client.post("/v1/auth/logout", headers=BEARER)
    assert response.status_code == 204
    assert response.data == b""
    assert auth.called("logout") == [((SESSION_ID,), {})]


def test_logout_needs_a_session_not_an_api_key(client, auth):
    response = client.post("/v1/auth/logout", headers=APIKEY)
    assert response.status_code == 400
    assert response.get_json()["error"]["code"] == "invalid_request"
    assert auth.called("logout") == []


def test_logout_without_credentials(client):
    response = client.post("/v1/auth/logout")
    assert response.status_code == 401
    assert response.get_json()["error"]["code"] == "unauthenticated"


def test_password_reset_is_accepted(client, auth):
    response = client.post("/v1/auth/password-reset", json={"email": "nobody@example.com"})
    assert response.status_code == 202
    assert auth.called("request_password_reset") == [(({"email": "nobody@example.com"},), {})]


def test_password_reset_confirm(client, auth):
    response = client.post("/v1/auth/password-reset/confirm",
                           json={"token": "t0k3n", "new_password": "a much better password"})
    assert response.status_code == 204
    assert auth.called("confirm_password_reset") == [
        (({"token": "t0k3n", "new_password": "a much better password"},), {})]


def test_password_reset_confirm_bad_token(client, auth):
    auth.fail_with["confirm_password_reset"] = DomainError(
        "invalid_token", "the link is not valid or has expired", 400)
    response = client.post("/v1/auth/password-reset/confirm",
                           json={"token": "t0k3n", "new_password": "a much better password"})
    assert response.status_code == 400
    assert response.get_json()["error"]["code"] == "invalid_token"


@pytest.mark.parametrize("headers", [BEARER, APIKEY], ids=["bearer", "api_key"])
def test_get_me(client, auth, headers):
    response = client.get("/v1/me", headers=headers)
    assert response.status_code == 200
    body = response.get_json()
    assert set(body) == USER_FIELDS | {"policy"}
    assert body["policy"] == {"current": None, "accepted": None, "acceptance_required": False}
    assert body["id"] == USER_ID
    assert body["totp_enabled"] is False
    assert auth.called("get_user") == [((USER_ID,), {})]
    assert response.headers["Cache-Control"] == "no-store"


def test_get_me_without_a_privacy_service_has_no_policy(client, pool, monkeypatch):
    """A stack that runs no privacy service: the request to it is unroutable
    (nameko's UnknownService at publish), and the account page still answers."""
    from nameko.exceptions import UnknownService

    def unroutable(*args):
        raise UnknownService("privacy")

    monkeypatch.setattr(type(pool.privacy), "policy_status",
                        property(lambda self: type("Call", (), {"call_async": staticmethod(
                            unroutable)})()))
    response = client.get("/v1/me", headers=BEARER)
    assert response.status_code == 200, response.get_json()
    assert response.get_json()["policy"] is None and response.get_json()["id"] == USER_ID
    assert pool.waits == []


def test_get_me_drops_fields_the_contract_does_not_have(client, auth, monkeypatch):
    original = type(auth).rpc_get_user
    monkeypatch.setattr(type(auth), "rpc_get_user",
                        lambda self, uid: {**original(self, uid), "password_hash": "$argon2..."})
    body = client.get("/v1/me", headers=BEARER).get_json()
    assert "password_hash" not in body
    assert set(body) == USER_FIELDS | {"policy"}


def test_patch_me(client, auth):
    response = client.patch("/v1/me", json={"display_name": "Ada L.", "bio": None}, headers=BEARER)
    assert response.status_code == 200
    assert response.get_json()["display_name"] == "Ada L."
    assert auth.called("update_profile") == [((USER_ID, {"display_name": "Ada L.", "bio": None}), {})]


def test_patch_me_rejects_unknown_fields(client, auth):
    response = client.patch("/v1/me", json={"email": "x@example.com"}, headers=BEARER)
    assert response.status_code == 400
    assert response.get_json()["error"]["details"]["fields"] == {"email": ["Unknown field."]}
    assert auth.called("update_profile") == []


def test_change_email_passes_the_client_address_for_the_lockout(client, auth):
    response = client.post("/v1/me/email", json={"new_email": "new@example.com", "password": "pw"},
                           headers=BEARER, environ_base={"REMOTE_ADDR": "203.0.113.7"})
    assert response.status_code == 202
    assert auth.called("request_email_change") == [
        ((USER_ID, {"new_email": "new@example.com", "password": "pw"}),
         {"client_ip": "203.0.113.7"})]


@pytest.mark.parametrize(("error", "status"), [
    (DomainError("email_unverified", "verify your email address first", 403), 403),
    (DomainError("invalid_credentials", "wrong email or password", 403), 403),
    (DomainError("rate_limited", "too many attempts", 429, {"retry_after": 30}), 429),
])
def test_change_email_refusals_reach_the_client(client, auth, error, status):
    auth.fail_with["request_email_change"] = error
    response = client.post("/v1/me/email", json={"new_email": "new@example.com", "password": "pw"},
                           headers=BEARER)
    assert response.status_code == status
    assert response.get_json()["error"]["code"] == error.code


def test_list_api_keys(client, auth):
    response = client.get("/v1/me/api-keys", headers=BEARER)
    assert response.status_code == 200
    body = response.get_json()
    assert body["next_cursor"] is None
    assert [k["name"] for k in body["items"]] == ["default", "ci"]
    assert all("key" not in k for k in body["items"])
    assert set(body["items"][0]) == {"id", "name", "prefix", "created_at", "last_used_at"}


def test_list_paging_arguments_are_passed_on_and_checked(client, auth):
    response = client.get("/v1/me/api-keys?limit=5&cursor=abc", headers=BEARER)
    assert response.status_code == 200
    assert auth.called("list_api_keys") == [((USER_ID,), {"page": {"limit": 5, "cursor": "abc"}})]
    for query in ("limit=0", "limit=101", "limit=many", "cursor="):
        response = client.get(f"/v1/me/api-keys?{query}", headers=BEARER)
        assert response.status_code == 400, query
        assert response.get_json()["error"]["code"] == "invalid_request"


def test_create_api_key(client, auth):
    response = client.post("/v1/me/api-keys", json={"name": "ci"}, headers=BEARER)
    assert response.status_code == 201
    body = response.get_json()
    assert body["key"] == "dr_live_newsecret"
    assert body["name"] == "ci"
    assert auth.called("create_api_key") == [((USER_ID, {"name": "ci"}), {})]


def test_revoke_api_key(client, auth):
    response = client.delete(f"/v1/me/api-keys/{KEY_ID}", headers=BEARER)
    assert response.status_code == 204
    assert auth.called("revoke_api_key") == [((USER_ID, KEY_ID), {})]


def test_revoke_api_key_of_someone_else_is_not_found(client, auth):
    auth.fail_with["revoke_api_key"] = DomainError("not_found", "API key not found", 404)
    response = client.delete(f"/v1/me/api-keys/{KEY_ID}", headers=BEARER)
    assert response.status_code == 404
    assert response.get_json()["error"]["code"] == "not_found"


def test_revoke_api_key_with_a_malformed_id_is_not_found(client, auth):
    response = client.delete("/v1/me/api-keys/not-a-uuid", headers=BEARER)
    assert response.status_code == 404
    assert auth.called("revoke_api_key") == []


def test_list_sessions_marks_the_current_one(client, auth):
    response = client.get("/v1/me/sessions", headers=BEARER)
    assert response.status_code == 200
    body = response.get_json()
    assert body["items"][0]["current"] is True
    assert auth.called("list_sessions") == [
        ((USER_ID,), {"current_session_id": SESSION_ID, "page": {"limit": 20, "cursor": None}})
    ]


def test_list_sessions_with_an_api_key_has_no_current_session(client, auth):
    body = client.get("/v1/me/sessions", headers=APIKEY).get_json()
    assert body["items"][0]["current"] is False
    assert auth.called("list_sessions") == [
        ((USER_ID,), {"current_session_id": None, "page": {"limit": 20, "cursor": None}})
    ]


def test_revoke_session(client, auth):
    response = client.delete(f"/v1/me/sessions/{SESSION_ID}", headers=APIKEY)
    assert response.status_code == 204
    assert auth.called("revoke_session") == [((USER_ID, SESSION_ID), {})]


def test_begin_totp(client, auth):
    response = client.post("/v1/me/totp", headers=BEARER)
    assert response.status_code == 201
    assert set(response.get_json()) == {"secret", "otpauth_uri"}
    assert auth.called("begin_totp_enrollment") == [((USER_ID,), {})]


def test_confirm_totp(client, auth):
    response = client.post("/v1/me/totp/confirm", json={"code": "123456"}, headers=BEARER)
    assert response.status_code == 204
    assert auth.called("confirm_totp_enrollment") == [((USER_ID, {"code": "123456"}), {})]


def test_confirm_totp_rejects_a_bad_code_format(client, auth):
    response = client.post("/v1/me/totp/confirm", json={"code": "12ab"}, headers=BEARER)
    assert response.status_code == 400
    assert "code" in response.get_json()["error"]["details"]["fields"]
    assert auth.called("confirm_totp_enrollment") == []


@pytest.mark.parametrize(
    "method,path",
    [
        ("get", "/v1/me"), ("patch", "/v1/me"), ("post", "/v1/me/email"),
        ("get", "/v1/me/api-keys"), ("post", "/v1/me/api-keys"),
        ("delete", f"/v1/me/api-keys/{KEY_ID}"), ("get", "/v1/me/sessions"),
        ("delete", f"/v1/me/sessions/{SESSION_ID}"), ("post", "/v1/me/totp"),
        ("post", "/v1/me/totp/confirm"), ("post", "/v1/auth/logout"),
    ],
)
def test_account_endpoints_need_a_credential(client, auth, method, path):
    response = getattr(client, method)(path, json={})
    assert response.status_code == 401
    assert response.get_json()["error"]["code"] == "unauthenticated"
    assert [name for name, _, _ in auth.calls] == []
