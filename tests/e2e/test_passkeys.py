"""Passkeys through the gateway, the whole stack as processes: a user adds a
passkey made by the software authenticator (tests/webauthn_authenticator.py),
signs in with it and nothing else, finds it in the export, removes it, and it
signs in no more; the account's erasure takes the passkeys it has left. The relying party is the stack's PUBLIC_BASE_URL."""

from __future__ import annotations

import io
import json
import zipfile

import pytest
import requests

from tests.conftest import wait_for
from tests.e2e.stack import PASSWORD, verified_login
from tests.e2e.test_privacy import certificate
from tests.webauthn_authenticator import SoftwareAuthenticator

pytestmark = pytest.mark.e2e


def ok(response, status=200):
    assert response.status_code == status, f"{response.status_code} {response.text}"
    return response.json() if response.content else None


def sign_in(stack, authenticator):
    options = ok(stack.call("POST", "/v1/auth/passkey/options"))["options"]
    assert options["userVerification"] == "required" and options.get("allowCredentials") == []
    return stack.call("POST", "/v1/auth/passkey/login",
                      json={"credential": authenticator.get(options)})


def test_a_passkey_signs_in_without_a_password_and_goes_with_the_account(stack):
    address, registered, token = verified_login(stack)
    user_id = registered["user"]["id"]
    authenticator = SoftwareAuthenticator(stack.base_url)

    # not with the account's API key: a key must not turn into a way to sign in
    with_key = stack.call("POST", "/v1/me/passkeys/options", api_key=registered["api_key"]["key"])
    assert (with_key.status_code, with_key.json()["error"]["code"]) == (403, "session_required")

    # add it: options, then the authenticator's answer
    options = ok(stack.call("POST", "/v1/me/passkeys/options", token=token))["options"]
    assert options["rp"]["id"] == "127.0.0.1" and options["user"]["name"] == address
    passkey = ok(stack.call("POST", "/v1/me/passkeys", token=token,
                            json={"credential": authenticator.create(options, fmt="packed"),
                                  "name": "Laptop"}), 201)
    assert passkey["name"] == "Laptop"
    listed = ok(stack.call("GET", "/v1/me/passkeys", token=token))
    assert [p["id"] for p in listed["items"]] == [passkey["id"]]
    # the same answer again: its challenge is spent
    again = stack.call("POST", "/v1/me/passkeys", token=token,
                       json={"credential": authenticator.create(options)})
    assert (again.status_code, again.json()["error"]["code"]) == (400, "passkey_challenge_invalid")

    # sign in with it: a session, answered like a password login
    session = ok(sign_in(stack, authenticator))
    assert set(session) == {"token", "expires_at", "user"} and session["user"]["id"] == user_id
    me = ok(stack.call("GET", "/v1/me", token=session["token"]))
    assert me["email"] == address
    assert ok(stack.call("GET", "/v1/me/passkeys", token=session["token"]))["items"][0][
        "last_used_at"] is not None
    # a copy of the authenticator whose counter is behind is refused
    stale = authenticator.copy()
    stale.sign_count -= 1
    refused = sign_in(stack, stale)
    assert (refused.status_code, refused.json()["error"]["code"]) == (401,
                                                                      "passkey_clone_suspected")
    # bad input: a clear 4xx with a code
    bad = stack.call("POST", "/v1/auth/passkey/login", json={"credential": {"id": "x"}})
    assert (bad.status_code, bad.json()["error"]["code"]) == (401, "invalid_passkey")

    # the export names it (never its public key)
    created = ok(stack.call("POST", "/v1/privacy/requests", token=token, json={"type": "export"}),
                 202)
    done = wait_for(lambda: (r := ok(stack.call("GET", f"/v1/privacy/requests/{created['id']}",
                                                token=token)))["status"] == "completed" and r,
                    60, 0.5, "the export to complete")
    archive = requests.get(done["download_url"], timeout=30)
    with zipfile.ZipFile(io.BytesIO(archive.content)) as zf:
        auth_part = json.loads(zf.read("auth.json"))["data"]
    assert [(p["id"], p["name"]) for p in auth_part["passkeys"]] == [(passkey["id"], "Laptop")]
    assert "public_key" not in auth_part["passkeys"][0]

    # someone else cannot remove it; its owner can, and it signs in no more
    _, _, other_token = verified_login(stack)
    other = stack.call("DELETE", f"/v1/me/passkeys/{passkey['id']}", token=other_token)
    assert (other.status_code, other.json()["error"]["code"]) == (404, "not_found")
    assert stack.call("DELETE", f"/v1/me/passkeys/{passkey['id']}", token=token).status_code == 204
    assert ok(stack.call("GET", "/v1/me/passkeys", token=token))["items"] == []
    gone = sign_in(stack, authenticator)
    assert (gone.status_code, gone.json()["error"]["code"]) == (401, "invalid_passkey")

    # the erasure of the account takes its passkeys with it
    phone = SoftwareAuthenticator(stack.base_url)
    options = ok(stack.call("POST", "/v1/me/passkeys/options", token=token))["options"]
    ok(stack.call("POST", "/v1/me/passkeys", token=token,
                  json={"credential": phone.create(options)}), 201)
    erasure = ok(stack.call("POST", "/v1/privacy/requests", token=token,
                            json={"type": "erasure", "password": PASSWORD}), 202)
    cert = certificate(stack, erasure["id"])
    auth_part = next(p for p in cert["services"] if p["service"] == "auth")
    assert auth_part["tables"]["passkeys"] == 1
    gone = sign_in(stack, phone)
    assert (gone.status_code, gone.json()["error"]["details"]) == (401, {"reason": "unknown"})
