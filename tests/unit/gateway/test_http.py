"""HTTP plumbing: security headers, request ids, rate limits, access log,
health and metrics endpoints, the OpenAPI document."""

from __future__ import annotations

import logging
import re
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from openapi_spec_validator import validate
from prometheus_client import REGISTRY

from gateway.api import health
from services.common.version import darkroom_version
from tests.unit.gateway.conftest import BEARER, FakePool, FakeService

LOGIN = {"email": "ada@example.com", "password": "correct horse battery"}


# ------------------------------------------------------------ security headers


@pytest.mark.parametrize("path", ["/healthz", "/v1/openapi.json", "/v1/nope"])
def test_security_headers_on_every_response(client, path):
    response = client.get(path)
    assert response.headers["Content-Security-Policy"] == "default-src 'none'; frame-ancestors 'none'"
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert response.headers["X-Frame-Options"] == "DENY"
    assert response.headers["Referrer-Policy"] == "no-referrer"
    assert response.headers["Strict-Transport-Security"].startswith("max-age=")
    assert "Cache-Control" not in response.headers


def test_hsts_can_be_turned_off(make_app):
    response = make_app(HSTS_ENABLED=False).test_client().get("/healthz")
    assert "Strict-Transport-Security" not in response.headers
    assert response.headers["X-Frame-Options"] == "DENY"


def test_hsts_flag_from_an_environment_string(make_app):
    response = make_app(HSTS_ENABLED="false").test_client().get("/healthz")
    assert "Strict-Transport-Security" not in response.headers


def test_no_store_on_auth_paths_even_for_errors(client):
    response = client.post("/v1/auth/login", json={})
    assert response.status_code == 400
    assert response.headers["Cache-Control"] == "no-store"


def test_no_store_on_authenticated_responses(client):
    assert client.get("/v1/me", headers=BEARER).headers["Cache-Control"] == "no-store"


# ------------------------------------------------------------ request ids


def test_request_id_is_echoed(client):
    response = client.get("/healthz", headers={"X-Request-Id": "client-req_1.2"})
    assert response.headers["X-Request-Id"] == "client-req_1.2"


@pytest.mark.parametrize("value", ["", "has space", "x" * 129, "semi;colon", "naïve"])
def test_insane_request_ids_are_replaced(client, value):
    response = client.get("/healthz", headers={"X-Request-Id": value})
    generated = response.headers["X-Request-Id"]
    assert generated != value
    assert re.fullmatch(r"[0-9a-f]{32}", generated)


def test_request_id_is_generated_and_unique(client):
    ids = {client.get("/healthz").headers["X-Request-Id"] for _ in range(5)}
    assert len(ids) == 5


def test_request_id_on_errors(client):
    response = client.get("/v1/nope", headers={"X-Request-Id": "abc"})
    assert response.headers["X-Request-Id"] == "abc"


def test_request_id_travels_to_rpc_as_correlation_id(client, auth):
    client.get("/v1/me", headers={**BEARER, "X-Request-Id": "trace-me-42"})
    assert auth.correlation_ids == ["trace-me-42", "trace-me-42"]  # authenticate, get_user


# ------------------------------------------------------------ rate limits


def test_auth_paths_share_a_strict_limit(make_app, auth):
    client = make_app(RATELIMIT_ENABLED=True, RATELIMIT_AUTH="3 per minute").test_client()
    for _ in range(2):
        assert client.post("/v1/auth/login", json=LOGIN).status_code == 200
    assert client.post("/v1/auth/password-reset", json={"email": "ada@example.com"}).status_code == 202
    response = client.post("/v1/auth/login", json=LOGIN)
    assert response.status_code == 429
    assert response.get_json()["error"]["code"] == "rate_limited"
    retry_after = int(response.headers["Retry-After"])
    assert 1 <= retry_after <= 61
    assert response.get_json()["error"]["details"]["retry_after"] == retry_after
    assert response.headers["Cache-Control"] == "no-store"
    assert len(auth.called("login")) == 2
    # other paths are not held back by the auth budget
    assert client.get("/v1/me", headers=BEARER).status_code == 200


def test_limits_are_per_client_address(make_app):
    client = make_app(RATELIMIT_ENABLED=True, RATELIMIT_AUTH="1 per minute").test_client()
    first = {"REMOTE_ADDR": "198.51.100.1"}
    second = {"REMOTE_ADDR": "198.51.100.2"}
    assert client.post("/v1/auth/login", json=LOGIN, environ_base=first).status_code == 200
    assert client.post("/v1/auth/login", json=LOGIN, environ_base=first).status_code == 429
    assert client.post("/v1/auth/login", json=LOGIN, environ_base=second).status_code == 200


def test_forwarded_for_is_trusted_only_behind_configured_proxies(make_app, auth):
    # no trusted proxy: X-Forwarded-For is ignored, everyone shares the socket address
    client = make_app(RATELIMIT_ENABLED=True, RATELIMIT_AUTH="1 per minute").test_client()
    assert client.post("/v1/auth/login", json=LOGIN, headers={"X-Forwarded-For": "192.0.2.1"}).status_code == 200
    assert client.post("/v1/auth/login", json=LOGIN, headers={"X-Forwarded-For": "192.0.2.2"}).status_code == 429

    proxied = make_app(RATELIMIT_ENABLED=True, RATELIMIT_AUTH="1 per minute",
                       TRUSTED_PROXY_COUNT=1).test_client()
    for address in ("192.0.2.1", "192.0.2.2"):
        response = proxied.post("/v1/auth/login", json=LOGIN, headers={"X-Forwarded-For": address})
        assert response.status_code == 200
    assert [kwargs["client_ip"] for _, kwargs in auth.called("login")] == [
        "127.0.0.1", "192.0.2.1", "192.0.2.2"]


def test_default_limit_applies_to_other_routes(make_app):
    client = make_app(RATELIMIT_ENABLED=True, RATELIMIT_DEFAULT="2 per minute").test_client()
    assert client.get("/v1/me", headers=BEARER).status_code == 200
    assert client.get("/v1/me", headers=BEARER).status_code == 200
    response = client.get("/v1/me", headers=BEARER)
    assert response.status_code == 429
    assert "Retry-After" in response.headers


def test_health_endpoints_are_never_limited(make_app):
    client = make_app(RATELIMIT_ENABLED=True, RATELIMIT_DEFAULT="1 per minute").test_client()
    for path in ("/healthz", "/readyz", "/metrics"):
        for _ in range(3):
            assert client.get(path).status_code == 200


def test_rate_limits_can_be_switched_off(make_app):
    client = make_app(RATELIMIT_ENABLED="false", RATELIMIT_AUTH="1 per minute").test_client()
    for _ in range(5):
        assert client.post("/v1/auth/login", json=LOGIN).status_code == 200


# ------------------------------------------------------------ health and metrics


def test_healthz(client):
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.get_json() == {"status": "ok", "version": darkroom_version()}


def test_readyz_when_every_service_answers(client):
    response = client.get("/readyz")
    assert response.status_code == 200
    assert response.get_json() == {"status": "ok", "checks": {"auth": "ok", "notifications": "ok"}}


def test_readyz_when_a_service_does_not(make_app):
    pool = FakePool()
    pool.services["notifications"] = FakeService("notifications", healthy=False)
    response = make_app(pool).test_client().get("/readyz")
    assert response.status_code == 503
    assert response.get_json() == {
        "status": "unavailable",
        "checks": {"auth": "ok", "notifications": "service_unavailable"},
    }


def test_readyz_when_a_service_is_unknown(make_app):
    response = make_app(READY_SERVICES=["auth", "billing"]).test_client().get("/readyz")
    assert response.status_code == 503
    assert response.get_json()["checks"] == {"auth": "ok", "billing": "AttributeError"}


def sample(route: str, status: str, method: str = "GET") -> float:
    value = REGISTRY.get_sample_value(
        "darkroom_http_requests_total", {"method": method, "route": route, "status": status})
    return value or 0.0


def test_metrics_count_requests_by_route_template_and_status(client):
    key_route = "/v1/me/api-keys/<uuid:key_id>"
    before = (sample("/v1/me", "200"), sample("/v1/me", "401"), sample(key_route, "204", "DELETE"),
              sample("<unmatched>", "404"))
    client.get("/v1/me", headers=BEARER)
    client.get("/v1/me", headers=BEARER)
    client.get("/v1/me")
    client.delete("/v1/me/api-keys/01900000-0000-7000-8000-0000000000aa", headers=BEARER)
    client.get("/v1/no/such/path/123")
    after = (sample("/v1/me", "200"), sample("/v1/me", "401"), sample(key_route, "204", "DELETE"),
             sample("<unmatched>", "404"))
    assert [a - b for a, b in zip(after, before, strict=True)] == [2, 1, 1, 1]

    text = client.get("/metrics").get_data(as_text=True)
    assert 'darkroom_http_requests_total{method="GET",route="/v1/me",status="200"}' in text
    assert "darkroom_http_request_duration_seconds_bucket" in text


def test_metrics_content_type(client):
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.mimetype == "text/plain"


# ------------------------------------------------------------ access log


def test_one_access_log_line_per_request_without_secrets(client, caplog):
    caplog.set_level(logging.INFO, logger="gateway.access")
    client.post("/v1/auth/login", json=LOGIN, headers={"X-Request-Id": "log-1"})
    client.get("/v1/me", headers={**BEARER, "X-Request-Id": "log-2"})
    records = [r for r in caplog.records if r.name == "gateway.access"]
    assert len(records) == 2
    login, me = records
    assert (login.method, login.route, login.status, login.request_id, login.user_id) == (
        "POST", "/v1/auth/login", 200, "log-1", None)
    assert (me.route, me.status, me.request_id, me.user_id) == (
        "/v1/me", 200, "log-2", "01900000-0000-7000-8000-000000000001")
    assert me.duration_ms >= 0
    logged = " ".join(str(vars(r)) for r in records)
    assert "correct horse battery" not in logged
    assert "session-token-verified" not in logged


# ------------------------------------------------------------ OpenAPI


def test_openapi_document(client):
    response = client.get("/v1/openapi.json")
    assert response.status_code == 200
    doc = response.get_json()
    validate(doc)
    assert doc["info"]["title"] == "Darkroom API"
    assert doc["info"]["version"] == "v1"
    expected = {
        "/healthz": {"get"}, "/readyz": {"get"}, "/metrics": {"get"},
        "/v1/auth/register": {"post"}, "/v1/auth/verify-email": {"post"},
        "/v1/auth/resend-verification": {"post"}, "/v1/auth/login": {"post"},
        "/v1/auth/logout": {"post"}, "/v1/auth/password-reset": {"post"},
        "/v1/auth/password-reset/confirm": {"post"}, "/v1/me": {"get", "patch"},
        "/v1/me/email": {"post"}, "/v1/me/api-keys": {"get", "post"},
        "/v1/me/api-keys/{key_id}": {"delete"}, "/v1/me/sessions": {"get"},
        "/v1/me/sessions/{session_id}": {"delete"}, "/v1/me/totp": {"post"},
        "/v1/me/totp/confirm": {"post"},
        "/v1/auth/oidc": {"get"}, "/v1/auth/oidc/{name}/start": {"get"},
        "/v1/auth/oidc/{name}/callback": {"get"}, "/v1/auth/oidc/exchange": {"post"},
        "/v1/me/identities": {"get", "post"}, "/v1/me/identities/{identity_id}": {"delete"},
        "/v1/me/passkeys": {"get", "post"}, "/v1/me/passkeys/options": {"post"},
        "/v1/me/passkeys/{passkey_id}": {"delete"}, "/v1/auth/passkey/options": {"post"},
        "/v1/auth/passkey/login": {"post"},
        "/v1/uploads": {"post"}, "/v1/images": {"get"},
        "/v1/images/{image_id}": {"get", "patch", "delete"}, "/v1/images/{image_id}/content": {"get"},
        "/v1/public/images/{public_id}": {"get"}, "/v1/files/{key}": {"get", "put"},
        "/v1/billing/balance": {"get"}, "/v1/billing/ledger": {"get"},
        "/v1/billing/plans": {"get"}, "/v1/billing/prices": {"get"},
        "/v1/billing/checkout": {"post"}, "/v1/billing/orders": {"get"},
        "/v1/billing/webhooks/stripe": {"post"}, "/v1/billing/webhooks/paypal": {"post"},
        "/v1/billing/orders/{order_id}/capture": {"post"},
        "/v1/billing/subscription": {"get"}, "/v1/billing/subscription/cancel": {"post"},
        "/v1/billing/portal": {"get"},
        "/v1/me/webhook-secret": {"get"}, "/v1/me/webhook-secret/rotate": {"post"},
        "/v1/templates": {"get"}, "/v1/models": {"get"}, "/v1/generations": {"get", "post"},
        "/v1/generations/{job_id}": {"get", "delete"}, "/v1/generations/{job_id}/events": {"get"},
        "/v1/generations/{job_id}/webhook-deliveries": {"get"},
        "/v1/privacy/requests": {"get", "post"},
        "/v1/privacy/requests/{request_id}": {"get", "delete"},
        "/v1/privacy/requests/{request_id}/cancel": {"post"},
        "/v1/privacy/certificates/{request_id}": {"get"}, "/v1/privacy/consents": {"get", "put"},
        "/v1/privacy/policy": {"get"}, "/v1/privacy/policy/accept": {"post"},
        "/v1/privacy/retention": {"get"}, "/v1/privacy/disclosures": {"get"},
        "/v1/admin/jobs": {"get"}, "/v1/admin/jobs/{job_id}/replay": {"post"},
        "/v1/admin/jobs/{job_id}/cancel": {"post"}, "/v1/admin/dead-letters": {"get"},
        "/v1/admin/dead-letters/{service}/{queue}/replay": {"post"},
        "/v1/admin/privacy-requests": {"get"}, "/v1/admin/users": {"get"},
        "/v1/admin/users/{user_id}/disable": {"post"},
        "/v1/admin/users/{user_id}/enable": {"post"}, "/v1/admin/breaches": {"get"},
    }
    assert {path: set(ops) - {"parameters"} for path, ops in doc["paths"].items()} == expected
    schemes = doc["components"]["securitySchemes"]
    assert {k: v for k, v in schemes["bearerAuth"].items() if k != "description"} == {
        "type": "http", "scheme": "bearer"}
    # an API key works as a bearer token too, and sending both is described
    assert "API key" in schemes["bearerAuth"]["description"]
    assert "same account" in schemes["bearerAuth"]["description"]
    assert {k: v for k, v in schemes["apiKeyAuth"].items() if k != "description"} == {
        "type": "apiKey", "in": "header", "name": "X-API-Key"}
    assert "Bearer" in schemes["apiKeyAuth"]["description"]


def test_openapi_documents_schemas_security_and_errors(client):
    doc = client.get("/v1/openapi.json").get_json()
    register = doc["paths"]["/v1/auth/register"]["post"]
    assert register["requestBody"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/Register"}
    assert register["responses"]["201"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/Registered"}
    assert "400" in register["responses"] and "422" not in register["responses"]
    assert "security" not in register
    assert doc["paths"]["/v1/me"]["get"]["security"] == [{"bearerAuth": []}, {"apiKeyAuth": []}]
    error = doc["components"]["schemas"]["ErrorEnvelope"]
    assert error["properties"]["error"] == {"$ref": "#/components/schemas/ErrorBody"}
    user = doc["components"]["schemas"]["User"]["properties"]
    assert {"id", "email", "email_verified", "totp_enabled", "plan"} <= set(user)


def test_readyz_answers_a_burst_with_one_round_of_pings_a_second(make_app, auth, monkeypatch):
    pings = []

    def slow_ping():
        pings.append(time.monotonic())
        time.sleep(0.2)  # the burst arrives while the round runs
        return {"service": "auth", "ok": True}

    monkeypatch.setattr(type(auth), "rpc_ping", lambda self: slow_ping())
    app = make_app(READY_SERVICES=["auth"], READY_CACHE_SECONDS=1)

    def probe(_):
        return app.test_client().get("/readyz").status_code

    with ThreadPoolExecutor(max_workers=20) as executor:
        statuses = list(executor.map(probe, range(100)))
    assert statuses == [200] * 100
    assert len(pings) == 1  # every caller shared one round
    time.sleep(1.05)  # the cached answer is a second old now: the next probe pings again
    assert probe(0) == 200
    assert len(pings) == 2


def test_readyz_caches_a_failure_too_and_sees_the_recovery(make_app):
    pool = FakePool()
    pool.services["notifications"] = FakeService("notifications", healthy=False)
    client = make_app(pool, READY_CACHE_SECONDS=0.3).test_client()
    assert client.get("/readyz").status_code == 503
    pool.services["notifications"] = FakeService("notifications")
    assert client.get("/readyz").status_code == 503  # within the cache time: the same answer
    time.sleep(0.35)
    assert client.get("/readyz").status_code == 200


def test_internal_port_serves_metrics_and_readiness_and_the_public_one_does_not(make_app):
    app = make_app(INTERNAL_PORT="9100", TRUSTED_PROXY_COUNT=1)
    public = app.test_client()
    internal = app.test_client()
    internal_url = "http://127.0.0.1:9100"
    for path in ("/metrics", "/readyz"):
        refused = public.get(path)
        assert refused.status_code == 404, path
        assert refused.get_json()["error"]["code"] == "not_found"
        # a forwarded host naming the internal port changes nothing
        assert public.get(path, headers={"X-Forwarded-Host": "127.0.0.1:9100"}).status_code == 404
        assert internal.get(path, base_url=internal_url).status_code == 200, path
    assert public.get("/healthz").status_code == 200
    assert internal.get("/healthz", base_url=internal_url).status_code == 200
    # the internal listener serves health only: no API there
    assert internal.get("/v1/templates", base_url=internal_url).status_code == 404
    assert internal.get("/v1/openapi.json", base_url=internal_url).status_code == 404
    assert public.get("/v1/openapi.json").status_code == 200


def test_without_an_internal_port_everything_is_on_the_one_port(make_app):
    client = make_app(INTERNAL_PORT="").test_client()
    for path in ("/healthz", "/readyz", "/metrics"):
        assert client.get(path).status_code == 200, path


def test_the_listener_is_the_accepted_sockets_port_under_gunicorn():
    class Sock:
        def getsockname(self):
            return ("0.0.0.0", 9100)

    assert health.local_port({"gunicorn.socket": Sock(), "SERVER_PORT": "8000"}) == 9100
    assert health.local_port({"SERVER_PORT": "8000"}) == 8000
    assert health.local_port({"SERVER_PORT": "x"}) is None
