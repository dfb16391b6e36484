"""Bad input and failures become docs/api.md's error JSON with the right status."""

from __future__ import annotations

import json

import pytest
from nameko.exceptions import RemoteError

from gateway.rpc import ServiceUnavailable
from services.common.errors import DomainError, rate_limited
from tests.unit.gateway.conftest import BEARER

REGISTER = "/v1/auth/register"
GOOD = {"email": "ada@example.com", "password": "correct horse battery"}


def error_of(response) -> dict:
    body = response.get_json()
    assert set(body) == {"error"}, body
    assert set(body["error"]) == {"code", "message", "details"}, body
    assert response.mimetype == "application/json"
    return body["error"]


def test_malformed_json(client, auth):
    response = client.post(REGISTER, data='{"email": ', content_type="application/json")
    assert response.status_code == 400
    error = error_of(response)
    assert error["code"] == "invalid_request"
    assert "fields" in error["details"]
    assert auth.calls == []


def test_invalid_utf8_body(client):
    response = client.post(REGISTER, data=b'{"email": "\xff\xfe"}', content_type="application/json")
    assert response.status_code == 400
    assert error_of(response)["code"] == "invalid_request"


@pytest.mark.parametrize(
    "body",
    ["[" * 100_000 + "]" * 100_000, '{"email": "a@example.com", "password": NaN}',
     '{"email": "a@example.com", "password": "xxxxxxxxxxxx", "display_name": "\\ud800"}'],
    ids=["deeply-nested", "nan", "lone-surrogate"],
)
def test_json_that_python_would_accept_but_is_not_sane(client, auth, body):
    response = client.post(REGISTER, data=body, content_type="application/json")
    assert response.status_code == 400
    assert error_of(response)["code"] == "invalid_request"
    assert auth.calls == []


@pytest.mark.parametrize("body", ["[1, 2]", '"text"', "42", "null", "true"])
def test_body_that_is_not_an_object(client, auth, body):
    response = client.post(REGISTER, data=body, content_type="application/json")
    assert response.status_code == 400
    error = error_of(response)
    assert error["code"] == "invalid_request"
    assert error["details"]["fields"]
    assert auth.calls == []


def test_missing_fields(client):
    response = client.post(REGISTER, json={})
    assert response.status_code == 400
    fields = error_of(response)["details"]["fields"]
    assert fields == {"email": ["Missing data for required field."],
                      "password": ["Missing data for required field."]}


def test_empty_body_is_missing_fields(client):
    response = client.post(REGISTER, data="", content_type="application/json")
    assert response.status_code == 400
    assert set(error_of(response)["details"]["fields"]) == {"email", "password"}


def test_extra_fields(client, auth):
    response = client.post(REGISTER, json={**GOOD, "is_admin": True})
    assert response.status_code == 400
    assert error_of(response)["details"]["fields"] == {"is_admin": ["Unknown field."]}
    assert auth.calls == []


@pytest.mark.parametrize(
    "payload,field",
    [
        ({**GOOD, "email": "a" * 250 + "@example.com"}, "email"),
        ({**GOOD, "email": "not-an-address"}, "email"),
        ({**GOOD, "password": "x" * 129}, "password"),
        ({**GOOD, "password": "short"}, "password"),
        ({**GOOD, "password": 12345678901}, "password"),
        ({**GOOD, "display_name": ""}, "display_name"),
    ],
    ids=["long-email", "bad-email", "long-password", "short-password", "number-password", "empty-name"],
)
def test_invalid_field_values(client, auth, payload, field):
    response = client.post(REGISTER, json=payload)
    assert response.status_code == 400
    error = error_of(response)
    assert error["code"] == "invalid_request"
    assert list(error["details"]["fields"]) == [field]
    assert auth.calls == []


def test_overlong_login_password(client, auth):
    response = client.post("/v1/auth/login", json={"email": "ada@example.com", "password": "p" * 10_000})
    assert response.status_code == 400
    assert "password" in error_of(response)["details"]["fields"]
    assert auth.calls == []


def test_form_body_is_unsupported_media_type(client, auth):
    response = client.post(REGISTER, data={"email": "ada@example.com", "password": "x"})
    assert response.status_code == 415
    assert error_of(response)["code"] == "unsupported_media_type"
    assert auth.calls == []


def test_json_body_with_a_text_content_type(client):
    response = client.post(REGISTER, data=json.dumps(GOOD), content_type="text/plain")
    assert response.status_code == 415


def test_vendor_json_content_type_is_json(client, auth):
    response = client.post(REGISTER, data=json.dumps(GOOD), content_type="application/vnd.api+json")
    assert response.status_code == 201


def test_body_over_the_cap(make_app, auth):
    client = make_app(MAX_CONTENT_LENGTH=1024).test_client()
    response = client.post(REGISTER, data=json.dumps({**GOOD, "display_name": "x" * 2000}),
                           content_type="application/json")
    assert response.status_code == 413
    error = error_of(response)
    assert error["code"] == "payload_too_large"
    assert error["details"]["max_bytes"] == 1024
    assert auth.calls == []


def test_default_cap_is_one_mebibyte(client):
    response = client.post(REGISTER, data=b"{" + b" " * (1024 * 1024) + b"}",
                           content_type="application/json")
    assert response.status_code == 413


def test_unknown_path(client):
    response = client.get("/v1/nope")
    assert response.status_code == 404
    assert error_of(response)["code"] == "not_found"


def test_wrong_method(client):
    response = client.delete("/v1/auth/login")
    assert response.status_code == 405
    assert error_of(response)["code"] == "method_not_allowed"
    assert "POST" in response.headers["Allow"]


def test_domain_error_with_retry_after(client, auth):
    auth.fail_with["login"] = rate_limited("too many failed logins", retry_after=90, scope="account")
    response = client.post("/v1/auth/login", json={"email": "ada@example.com", "password": "x"})
    assert response.status_code == 429
    assert response.headers["Retry-After"] == "90"
    assert error_of(response) == {"code": "rate_limited", "message": "too many failed logins",
                                  "details": {"retry_after": 90, "scope": "account"}}


def test_domain_error_as_it_crosses_rpc(client, auth):
    # nameko rebuilds the exception from its serialised args
    from nameko.exceptions import deserialize, serialize

    original = DomainError("conflict", "already there", 409, {"retry_after": 2, "id": None, "ok": True})
    auth.fail_with["login"] = deserialize(json.loads(json.dumps(serialize(original))))
    response = client.post("/v1/auth/login", json={"email": "ada@example.com", "password": "x"})
    assert response.status_code == 409
    assert response.headers["Retry-After"] == "2"
    assert error_of(response)["details"] == {"retry_after": 2, "id": None, "ok": True}


def test_service_unavailable(client, auth):
    auth.fail_with["login"] = ServiceUnavailable()
    response = client.post("/v1/auth/login", json={"email": "ada@example.com", "password": "x"})
    assert response.status_code == 503
    assert error_of(response)["code"] == "service_unavailable"
    assert response.headers["Retry-After"] == "5"


def test_remote_error_is_an_internal_error_without_its_details(client, auth):
    auth.fail_with["get_user"] = RemoteError("KeyError", "secret internals")
    response = client.get("/v1/me", headers=BEARER)
    assert response.status_code == 500
    error = error_of(response)
    assert error == {"code": "internal_error", "message": "internal error", "details": {}}
    assert b"secret internals" not in response.data


def test_unexpected_exception_is_500_without_traceback(make_app, auth):
    app = make_app()

    @app.get("/boom")
    def boom():
        raise ValueError("database password is hunter2")

    response = app.test_client().get("/boom")
    assert response.status_code == 500
    assert error_of(response)["code"] == "internal_error"
    assert b"hunter2" not in response.data
    assert b"Traceback" not in response.data
    assert response.headers["X-Request-Id"]


def test_a_bug_in_a_view_with_a_bad_rpc_answer_is_500(client, auth, monkeypatch):
    monkeypatch.setattr(type(auth), "rpc_get_user", lambda self, uid: {"created_at": "not a date"})
    response = client.get("/v1/me", headers=BEARER)
    assert response.status_code == 500
    assert error_of(response)["code"] == "internal_error"
