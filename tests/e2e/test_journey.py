"""The whole stack as processes (the deploy/Procfile commands `make dev` runs),
driven over HTTP the way a new user and a careless client would drive it."""

from __future__ import annotations

import json
import time
import uuid

import pytest

from tests.conftest import wait_for
from tests.e2e.stack import (
    PASSWORD,
    body_text,
    code_from,
    new_email,
    refused_within,
    register,
    token_from,
    verified_login,
)

pytestmark = pytest.mark.e2e

def test_new_user_journey(stack):
    address = new_email()
    request_id = f"journey-{uuid.uuid4().hex[:8]}"

    # register: the user, no API key before the address is verified
    r = stack.call("POST", "/v1/auth/register", json={"email": address.upper(), "password": PASSWORD,
                                                        "display_name": "Ada"},
                   headers={"X-Request-Id": request_id})
    assert r.status_code == 201, r.text
    assert r.headers["X-Request-Id"] == request_id
    user = r.json()["user"]
    assert r.json()["api_key"] is None
    assert user["email"] == address and user["email_verified"] is False
    r = stack.call("POST", "/v1/auth/login", json={"email": address, "password": PASSWORD})
    unverified = stack.call("POST", "/v1/me/api-keys", token=r.json()["token"], json={"name": "x"})
    assert (unverified.status_code, unverified.json()["error"]["code"]) == (403, "email_unverified")

    # the code arrives by mail; verify
    code = code_from(stack.wait_for_mail(address))
    r = stack.call("POST", "/v1/auth/verify-email", json={"email": address, "code": code})
    assert r.status_code == 200, r.text
    assert r.json()["user"]["email_verified"] is True

    # log in; the first API key; /v1/me with the token and with the key
    r = stack.call("POST", "/v1/auth/login", json={"email": address, "password": PASSWORD})
    assert r.status_code == 200, r.text
    token = r.json()["token"]
    assert r.headers["Cache-Control"] == "no-store"
    r = stack.call("POST", "/v1/me/api-keys", token=token, json={"name": "default"})
    assert r.status_code == 201, r.text
    first_key = r.json()["key"]
    me = stack.call("GET", "/v1/me", token=token)
    assert me.status_code == 200 and me.json()["id"] == user["id"]
    assert set(me.json()) >= {"id", "email", "email_verified", "display_name", "bio", "avatar_image_id",
                              "created_at", "plan", "processing_restricted"}
    assert stack.call("GET", "/v1/me", api_key=first_key).json()["id"] == user["id"]

    # a second key; revoke the first; the first stops working
    r = stack.call("POST", "/v1/me/api-keys", token=token, json={"name": "ci"})
    assert r.status_code == 201, r.text
    second_key = r.json()["key"]
    keys = stack.call("GET", "/v1/me/api-keys", token=token).json()["items"]
    assert len(keys) == 2 and all("key" not in k for k in keys)
    first_id = next(k["id"] for k in keys if k["name"] == "default")
    assert stack.call("DELETE", f"/v1/me/api-keys/{first_id}", token=token).status_code == 204
    refused_within(stack, 30, api_key=first_key)
    assert stack.call("GET", "/v1/me", api_key=second_key).status_code == 200

    # reset the password by the mailed link; old sessions are refused
    r = stack.call("POST", "/v1/auth/password-reset", json={"email": address})
    assert r.status_code == 202
    reset_mail = wait_for(
        lambda: next((m for m in stack.mails_to(address) if "?token=" in body_text(m)), None),
        30, what="password reset mail",
    )
    reset_token = token_from(reset_mail)
    assert body_text(reset_mail).count(stack.base_url + "/reset-password?token=") >= 1
    new_password = "a different long passphrase"
    r = stack.call("POST", "/v1/auth/password-reset/confirm", json={"token": reset_token, "new_password": new_password})
    assert r.status_code == 204, r.text
    # every session and every API key ends with the reset, and the owner is told
    refused_within(stack, 30, token=token)
    refused_within(stack, 30, api_key=second_key)
    notice = wait_for(lambda: next((m for m in stack.mails_to(address)
                                    if m["Subject"] == "Your Darkroom password was changed"), None),
                      30, what="password changed mail")
    assert "1 API keys" in " ".join(body_text(notice).split())
    assert stack.call("POST", "/v1/auth/password-reset/confirm",
                      json={"token": reset_token, "new_password": "yet another passphrase"}).status_code == 400
    assert stack.call("POST", "/v1/auth/login", json={"email": address, "password": PASSWORD}).status_code == 401
    r = stack.call("POST", "/v1/auth/login", json={"email": address, "password": new_password})
    assert r.status_code == 200
    token = r.json()["token"]

    # sessions are listed; log out; the token is refused
    sessions = stack.call("GET", "/v1/me/sessions", token=token).json()["items"]
    assert [s["current"] for s in sessions].count(True) == 1
    assert stack.call("POST", "/v1/auth/logout", token=token).status_code == 204
    refused_within(stack, 30, token=token)

    # the request id travelled through RPC into the auth service and, with the
    # event, into the notifications service
    def logged_in(name):
        return any(
            json.loads(line).get("correlation_id") == request_id
            for line in stack.processes[name].logs().splitlines() if line.startswith("{")
        )

    assert logged_in("auth")
    wait_for(lambda: logged_in("notifications"), 10, what="correlation id in notifications log")


def test_verification_code_wrong_then_exhausted(stack):
    address, _ = register(stack)
    code = code_from(stack.wait_for_mail(address))
    wrong = f"{(int(code) + 1) % 1000000:06d}"
    r = stack.call("POST", "/v1/auth/verify-email", json={"email": address, "code": wrong})
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_code"
    for _ in range(6):
        r = stack.call("POST", "/v1/auth/verify-email", json={"email": address, "code": wrong})
    assert r.status_code == 400 and r.json()["error"]["code"] == "code_expired"
    # the right code no longer works once attempts are used up; a new one does
    r = stack.call("POST", "/v1/auth/verify-email", json={"email": address, "code": code})
    assert r.status_code == 400
    assert stack.call("POST", "/v1/auth/resend-verification", json={"email": address}).status_code == 202
    fresh = code_from(stack.wait_for_mail(address, count=2))
    assert stack.call("POST", "/v1/auth/verify-email", json={"email": address, "code": fresh}).status_code == 200


@pytest.mark.parametrize(
    "body, field",
    [
        ("{not json", None),
        ({"email": "x@example.com"}, "password"),
        ({"password": PASSWORD}, "email"),
        ({"email": "x@example.com", "password": PASSWORD, "is_admin": True}, "is_admin"),
        ({"email": "a" * 250 + "@example.com", "password": PASSWORD}, "email"),
        ({"email": "x@example.com", "password": "p" * 129}, "password"),
        ({"email": "x@example.com", "password": "short"}, "password"),
        ({"email": "not-an-email", "password": PASSWORD}, "email"),
    ],
)
def test_bad_registration_is_a_400_and_writes_nothing(stack, body, field):
    address = new_email()
    if isinstance(body, dict) and "email" in body and body["email"] == "x@example.com":
        body = {**body, "email": address}
    kwargs = {"data": body, "headers": {"Content-Type": "application/json"}} if isinstance(body, str) \
        else {"json": body}
    r = stack.call("POST", "/v1/auth/register", **kwargs)
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["code"] == "invalid_request"
    if field:
        assert field in json.dumps(error["details"])
    # nothing was written: the same address registers normally afterwards
    register(stack, address)


def test_duplicate_email_and_no_enumeration(stack):
    address, first = register(stack)
    code_from(stack.wait_for_mail(address))
    # registering a taken address answers as a new registration does
    again = stack.call("POST", "/v1/auth/register", json={"email": address, "password": PASSWORD})
    fresh = stack.call("POST", "/v1/auth/register", json={"email": new_email(), "password": PASSWORD})
    assert again.status_code == fresh.status_code == 201
    assert set(again.json()) == set(fresh.json()) == {"user", "api_key"}
    assert set(again.json()["user"]) == set(fresh.json()["user"])
    assert again.json()["api_key"] is fresh.json()["api_key"] is None
    assert again.json()["user"]["id"] != first["user"]["id"]
    # ...and the address's owner learns of it by mail
    notice = stack.wait_for_mail(address, count=2)
    assert notice["Subject"] == "Someone tried to sign up to Darkroom with your address"

    unknown = new_email()
    wrong_password = stack.call("POST", "/v1/auth/login", json={"email": address, "password": "wrong password!"})
    no_account = stack.call("POST", "/v1/auth/login", json={"email": unknown, "password": "wrong password!"})
    assert wrong_password.status_code == no_account.status_code == 401
    assert wrong_password.json() == no_account.json()
    for path in ("/v1/auth/password-reset", "/v1/auth/resend-verification"):
        known = stack.call("POST", path, json={"email": address})
        nobody = stack.call("POST", path, json={"email": unknown})
        assert known.status_code == nobody.status_code == 202
        assert known.content == nobody.content
    time.sleep(1)
    assert stack.mails_to(unknown) == []


def test_brute_force_hits_the_lockout(stack):
    address, _ = register(stack)
    codes = [stack.call("POST", "/v1/auth/login", json={"email": address, "password": f"guess number {i}"})
             for i in range(5)]
    assert [r.status_code for r in codes] == [401] * 5
    locked = stack.call("POST", "/v1/auth/login", json={"email": address, "password": PASSWORD})
    assert locked.status_code == 429, locked.text
    assert locked.json()["error"]["code"] == "rate_limited"
    assert int(locked.headers["Retry-After"]) > 0


def test_forged_revoked_and_foreign_credentials(stack):
    _, registered, token = verified_login(stack)
    _, _, other_token = verified_login(stack)

    for headers in ({"Authorization": "Bearer drs_forged"}, {"X-API-Key": "drk_forged_secret"},
                    {"Authorization": "Basic abc"}, {}):
        r = stack.call("GET", "/v1/me", headers=headers)
        assert r.status_code == 401 and r.json()["error"]["code"] == "unauthenticated"

    # another user's key id is not found, and stays valid
    key_id = registered["api_key"]["id"]
    r = stack.call("DELETE", f"/v1/me/api-keys/{key_id}", token=other_token)
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
    assert stack.call("GET", "/v1/me", api_key=registered["api_key"]["key"]).status_code == 200
    r = stack.call("DELETE", "/v1/me/api-keys/not-a-uuid", token=other_token)
    assert r.status_code == 404

    # another user's session cannot be revoked either
    session_id = stack.call("GET", "/v1/me/sessions", token=token).json()["items"][0]["id"]
    assert stack.call("DELETE", f"/v1/me/sessions/{session_id}", token=other_token).status_code == 404
    assert stack.call("DELETE", f"/v1/me/sessions/{session_id}", token=token).status_code == 204
    refused_within(stack, 30, token=token)


def test_profile_update_and_errors_shape(stack):
    _, _, token = verified_login(stack)
    avatar = str(uuid.uuid4())
    r = stack.call("PATCH", "/v1/me", token=token,
                   json={"display_name": "Grace", "bio": "hello", "avatar_image_id": avatar})
    assert r.status_code == 200 and r.json()["display_name"] == "Grace"
    me = stack.call("GET", "/v1/me", token=token).json()
    assert (me["bio"], me["avatar_image_id"]) == ("hello", avatar)
    r = stack.call("PATCH", "/v1/me", token=token, json={"bio": "b" * 501})
    assert r.status_code == 400 and "bio" in json.dumps(r.json()["error"]["details"])
    r = stack.call("GET", "/v1/nowhere", token=token)
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
    for header in ("Strict-Transport-Security", "Content-Security-Policy", "X-Content-Type-Options",
                   "X-Frame-Options"):
        assert header in r.headers


def test_health_metrics_and_openapi(stack):
    assert stack.call("GET", "/healthz").status_code == 200
    ready = stack.call("GET", "/readyz")
    assert ready.status_code == 200, ready.text
    assert "# TYPE" in stack.call("GET", "/metrics").text
    spec = stack.call("GET", "/v1/openapi.json").json()
    assert "/v1/auth/register" in spec["paths"]
    assert any(path.startswith("/v1/me/api-keys/{") for path in spec["paths"])


def test_lists_page_newest_first_with_a_cursor(stack):
    _, registered, token = verified_login(stack)
    for name in ("second", "third"):
        assert stack.call("POST", "/v1/me/api-keys", token=token, json={"name": name}).status_code == 201
    names, cursor = [], None
    while True:
        params = {"limit": 2, **({"cursor": cursor} if cursor else {})}
        page = stack.call("GET", "/v1/me/api-keys", token=token, params=params).json()
        assert len(page["items"]) <= 2
        names += [k["name"] for k in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert names == ["third", "second", "default"]
    r = stack.call("GET", "/v1/me/api-keys", token=token, params={"cursor": "not-a-cursor"})
    assert r.status_code == 400 and "cursor" in json.dumps(r.json()["error"]["details"])
    r = stack.call("GET", "/v1/me/sessions", token=token, params={"limit": 500})
    assert r.status_code == 400 and "limit" in json.dumps(r.json()["error"]["details"])
