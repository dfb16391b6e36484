"""The gateway's privacy endpoints against a fake privacy service: status
codes, shapes, who may see what, the credential type passed along for an
erasure, the cancel link, and /v1/me's policy status."""

from __future__ import annotations

import uuid

import pytest

from gateway.api import accounts
from gateway.app import create_app
from gateway.rpc import ServiceUnavailable
from services.common.errors import DomainError, admin_required, not_found
from tests.unit.gateway.conftest import (
    ADMIN_ID,
    API_KEY,
    BASE_CONFIG,
    BEARER,
    NOW,
    USER_ID,
    FakePool,
    FakeRpcService,
)

REQUEST_ID = "01900000-0000-7000-8000-00000000c001"


def request_view(kind="export", status="in_progress", **extra) -> dict:
    return {"id": REQUEST_ID, "type": kind, "status": status, "created_at": NOW, "due_at": NOW,
            "overdue": False, "starts_at": None, "completed_at": None, "cancelled_at": None,
            "parts": [{"service": "auth", "status": "pending", "completed_at": None,
                       "overdue": False}],
            "download_url": None, "download_expires_at": None, "certificate_url": None,
            "user_id": "never shown", **extra}


class FakePrivacy(FakeRpcService):
    def __init__(self):
        super().__init__()
        self.status = {"current": "v2", "accepted": "v1", "acceptance_required": True}

    def rpc_ping(self):
        return {"service": "privacy", "ok": True}

    def rpc_create_request(self, user_id, payload, credential_type=None):
        return request_view(payload["type"])

    def rpc_list_requests(self, user_id, query=None):
        return {"items": [request_view()], "next_cursor": None}

    def rpc_get_request(self, user_id, request_id):
        if user_id != USER_ID or request_id != REQUEST_ID:
            raise not_found("request")
        return request_view(status="completed", download_url="https://files/signed")

    def rpc_cancel_request(self, user_id, request_id, credential_type=None):
        raise DomainError("not_cancellable", "only an erasure that has not started", 409)

    def rpc_cancel_with_token(self, request_id, payload):
        return request_view("erasure", status="cancelled")

    def rpc_get_certificate(self, request_id):
        return {"request_id": request_id, "requested_at": NOW, "started_at": NOW,
                "completed_at": NOW, "services": [], "totals": {"rows_deleted": 3}}

    def rpc_get_consents(self, user_id):
        return {"marketing_email": False, "analytics": False, "updated_at": None, "history": []}

    def rpc_update_consents(self, user_id, payload, source="api"):
        return {"marketing_email": payload.get("marketing_email", False), "analytics": False,
                "updated_at": NOW, "history": [
                    {"purpose": "marketing_email", "granted": True, "source": source,
                     "policy_version": "v2", "changed_at": NOW}]}

    def rpc_get_policy(self):
        return {"version": "v2", "material": True, "summary": "s", "published_at": NOW,
                "material_version": "v2"}

    def rpc_accept_policy(self, user_id, payload):
        return {"current": "v2", "accepted": payload["version"], "acceptance_required": False}

    def rpc_policy_status(self, user_id):
        return dict(self.status)

    def rpc_admin_list_requests(self, actor, query=None):
        if actor != ADMIN_ID:
            raise admin_required()
        return {"items": [{"id": REQUEST_ID, "user_id": USER_ID, "kind": "export",
                           "status": "failed", "created_at": NOW, "due_at": NOW,
                           "overdue": True, "completed_at": None, "parts": "never shown"}]}

    def rpc_admin_breaches(self, actor):
        if actor != ADMIN_ID:
            raise admin_required()
        return {"items": []}

    def rpc_get_retention(self):
        return {"items": [{"service": "privacy", "data": "access logs", "kept": "180 days",
                           "days": 180.0, "enforced_by": "a timer"}], "unavailable": ["billing"]}


@pytest.fixture
def privacy() -> FakePrivacy:
    return FakePrivacy()


@pytest.fixture
def pool(privacy) -> FakePool:
    pool = FakePool()
    pool.services["privacy"] = privacy
    return pool


@pytest.fixture
def app(pool):
    return create_app({**BASE_CONFIG}, rpc=pool)


@pytest.fixture
def client(app):
    return app.test_client()


def test_asking_for_an_export_is_accepted_with_its_location(client, privacy):
    response = client.post("/v1/privacy/requests", json={"type": "export"}, headers=BEARER)
    assert response.status_code == 202
    assert response.headers["Location"] == f"/v1/privacy/requests/{REQUEST_ID}"
    assert response.headers["Cache-Control"] == "no-store"
    body = response.get_json()
    assert body["type"] == "export" and "user_id" not in body
    assert privacy.called("create_request") == [((USER_ID, {"type": "export"}, "session"), {})]


def test_an_erasure_request_passes_the_password_and_the_credential_type(client, privacy):
    body = {"type": "erasure", "password": "correct horse battery", "totp_code": "123456"}
    assert client.post("/v1/privacy/requests", json=body, headers=BEARER).status_code == 202
    assert client.post("/v1/privacy/requests", json=body,
                       headers={"X-API-Key": API_KEY}).status_code == 202
    assert privacy.called("create_request") == [((USER_ID, body, "session"), {}),
                                                ((USER_ID, body, "api_key"), {})]


def test_the_cancel_link_needs_no_credential_and_no_token_needs_a_session(client, privacy):
    token = "t" * 43
    response = client.post(f"/v1/privacy/requests/{REQUEST_ID}/cancel", json={"token": token})
    assert response.status_code == 200 and response.get_json()["status"] == "cancelled"
    assert privacy.called("cancel_with_token") == [((REQUEST_ID, {"token": token}), {})]
    assert client.post(f"/v1/privacy/requests/{REQUEST_ID}/cancel", json={}).status_code == 401
    response = client.post(f"/v1/privacy/requests/{REQUEST_ID}/cancel", json={},
                           headers={"X-API-Key": API_KEY})
    assert response.status_code == 409  # the fake refuses; what matters is who was asked
    assert privacy.called("cancel_request") == [((USER_ID, REQUEST_ID, "api_key"), {})]
    assert client.post(f"/v1/privacy/requests/{REQUEST_ID}/cancel",
                       json={"token": "short"}).status_code == 400


@pytest.mark.parametrize("body", [{}, {"type": "delete_everything"}, {"type": "export", "x": 1},
                                  {"type": "erasure", "password": ""},
                                  {"type": "erasure", "password": "p", "totp_code": "12"}])
def test_a_bad_request_body_is_400(client, privacy, body):
    response = client.post("/v1/privacy/requests", json=body, headers=BEARER)
    assert response.status_code == 400
    assert response.get_json()["error"]["code"] == "invalid_request"
    assert privacy.called("create_request") == []


def test_requests_need_a_credential(client):
    for method, path in (("get", "/v1/privacy/requests"), ("post", "/v1/privacy/requests"),
                         ("get", f"/v1/privacy/requests/{REQUEST_ID}"),
                         ("delete", f"/v1/privacy/requests/{REQUEST_ID}"),
                         ("get", "/v1/privacy/consents"), ("put", "/v1/privacy/consents"),
                         ("post", "/v1/privacy/policy/accept")):
        response = getattr(client, method)(path, json={})
        assert response.status_code == 401, (method, path)


def test_a_request_of_someone_else_or_unknown_is_404(client):
    ok = client.get(f"/v1/privacy/requests/{REQUEST_ID}", headers=BEARER)
    assert ok.status_code == 200 and ok.get_json()["download_url"] == "https://files/signed"
    for path in (f"/v1/privacy/requests/{uuid.uuid4()}", "/v1/privacy/requests/not-a-uuid"):
        response = client.get(path, headers=BEARER)
        assert response.status_code == 404 and response.get_json()["error"]["code"] == "not_found"


def test_cancelling_what_cannot_be_cancelled_is_409(client):
    response = client.delete(f"/v1/privacy/requests/{REQUEST_ID}", headers=BEARER)
    assert response.status_code == 409
    assert response.get_json()["error"]["code"] == "not_cancellable"


def test_the_list_is_a_page(client):
    body = client.get("/v1/privacy/requests?limit=5", headers=BEARER).get_json()
    assert body["next_cursor"] is None and body["items"][0]["id"] == REQUEST_ID
    assert client.get("/v1/privacy/requests?limit=500", headers=BEARER).status_code == 400


def test_consents_are_changed_with_source_api(client, privacy):
    response = client.put("/v1/privacy/consents", json={"marketing_email": True}, headers=BEARER)
    assert response.status_code == 200
    assert response.get_json()["history"][0]["source"] == "api"
    assert privacy.called("update_consents") == [
        ((USER_ID, {"marketing_email": True}, "api"), {})]
    for bad in ({}, {"marketing_email": "yes please"}, {"newsletter": True}):
        assert client.put("/v1/privacy/consents", json=bad, headers=BEARER).status_code == 400


def test_public_endpoints_need_no_credential(client):
    assert client.get("/v1/privacy/policy").get_json()["version"] == "v2"
    retention = client.get("/v1/privacy/retention").get_json()
    assert retention["unavailable"] == ["billing"] and retention["items"][0]["days"] == 180.0
    certificate = client.get(f"/v1/privacy/certificates/{REQUEST_ID}")
    assert certificate.status_code == 200 and certificate.get_json()["totals"] == {"rows_deleted": 3}


def test_accepting_the_policy(client, privacy):
    response = client.post("/v1/privacy/policy/accept", json={"version": "v2"}, headers=BEARER)
    assert response.get_json() == {"current": "v2", "accepted": "v2", "acceptance_required": False}
    assert client.post("/v1/privacy/policy/accept", json={"version": "v 2!"},
                       headers=BEARER).status_code == 400


def test_me_tells_whether_a_policy_awaits_acceptance(client, pool, privacy):
    client.get("/v1/me", headers=BEARER)  # the credential resolved (and cached)
    checkouts, pool.waits[:] = pool.checkouts, []
    body = client.get("/v1/me", headers=BEARER).get_json()
    assert body["policy"] == {"current": "v2", "accepted": "v1", "acceptance_required": True}
    assert pool.checkouts == checkouts + 1  # auth and privacy asked at once, over one proxy
    # a short wait: /v1/me never hangs on it
    assert pool.waits == [accounts.POLICY_TIMEOUT_SECONDS]
    privacy.fail_with["policy_status"] = ServiceUnavailable()
    response = client.get("/v1/me", headers=BEARER)
    assert response.status_code == 200 and response.get_json()["policy"] is None
    privacy.fail_with["policy_status"] = DomainError("invalid_request", "bad", 400)
    assert client.get("/v1/me", headers=BEARER).status_code == 400


def test_me_collects_the_policy_reply_when_auth_refuses(client, pool, privacy):
    client.get("/v1/me", headers=BEARER)  # the credential resolved (and cached)
    asked = len(privacy.called("policy_status"))
    pool.auth.fail_with["get_user"] = DomainError("not_found", "user not found", 404)
    response = client.get("/v1/me", headers=BEARER)
    assert response.status_code == 404 and response.get_json()["error"]["code"] == "not_found"
    # privacy's reply was read, not left on the pooled proxy
    assert len(privacy.called("policy_status")) == asked + 1
