"""The gateway's OpenID Connect endpoints (gateway/api/oidc.py) in front of a fake
auth service, and the age gate's answer kept out of the gateway's logs."""

from __future__ import annotations

import logging

from tests.unit.gateway.conftest import BEARER, IDENTITY_ID, TOKEN, USER_ID


def test_the_providers_are_listed(client):
    r = client.get("/v1/auth/oidc")
    assert r.status_code == 200 and r.get_json() == {"items": [{"name": "google"}]}


def test_start_sends_the_browser_to_the_provider(client, auth):
    r = client.get("/v1/auth/oidc/google/start?redirect_uri=https://app.example.test/done")
    assert r.status_code == 302
    assert r.headers["Location"] == "https://accounts.example.test/auth?state=s"
    assert auth.called("oidc_start") == [
        (("google", {"redirect_uri": "https://app.example.test/done"}), {})]
    assert r.headers["Cache-Control"] == "no-store"


def test_start_needs_a_redirect_uri_and_a_known_provider(client):
    r = client.get("/v1/auth/oidc/google/start")
    assert r.status_code == 400 and r.get_json()["error"]["code"] == "invalid_request"
    r = client.get("/v1/auth/oidc/google/start?redirect_uri=javascript:alert(1)")
    assert r.status_code == 400
    r = client.get("/v1/auth/oidc/nope/start?redirect_uri=https://app.example.test/")
    assert r.status_code == 404 and r.get_json()["error"]["code"] == "not_found"


def test_the_callback_passes_the_providers_answer_and_redirects_to_the_app(client, auth):
    r = client.get("/v1/auth/oidc/google/callback?state=s&code=abc&scope=openid&authuser=0")
    assert r.status_code == 302
    assert r.headers["Location"] == "https://app.example.test/done?code=one-time"
    # what providers add besides the protocol's parameters is left out
    assert auth.called("oidc_callback") == [(("google", {"state": "s", "code": "abc"}), {})]
    r = client.get("/v1/auth/oidc/google/callback?state=tampered&code=abc")
    assert r.status_code == 400 and r.get_json()["error"]["code"] == "oidc_invalid_state"


def test_the_exchange_answers_like_a_login(client, auth):
    r = client.post("/v1/auth/oidc/exchange", json={"code": "one-time"},
                    headers={"User-Agent": "app/1"})
    assert r.status_code == 200 and r.get_json()["token"] == TOKEN
    (args, kwargs), = auth.called("oidc_exchange")
    assert kwargs["user_agent"] == "app/1"
    r = client.post("/v1/auth/oidc/exchange", json={"code": "used"})
    assert r.status_code == 400 and r.get_json()["error"]["code"] == "oidc_invalid_code"
    r = client.post("/v1/auth/oidc/exchange", json={"code": "x", "birth_date": "01/02/2000"})
    assert r.status_code == 400 and "birth_date" in r.get_json()["error"]["details"]["fields"]


def test_identities_are_listed_linked_and_unlinked_for_the_caller(client, auth):
    assert client.get("/v1/me/identities").status_code == 401
    r = client.get("/v1/me/identities", headers=BEARER)
    assert r.status_code == 200 and r.get_json()["items"][0]["provider"] == "google"
    assert auth.called("list_identities") == [((USER_ID,), {})]
    r = client.post("/v1/me/identities", headers=BEARER,
                    json={"provider": "google", "redirect_uri": "https://app.example.test/x"})
    assert r.status_code == 201 and r.get_json()["authorization_url"].startswith("https://")
    assert auth.called("oidc_start_link") == [
        ((USER_ID, "google", {"redirect_uri": "https://app.example.test/x"}), {})]
    assert client.delete(f"/v1/me/identities/{IDENTITY_ID}", headers=BEARER).status_code == 204
    assert auth.called("unlink_identity") == [((USER_ID, IDENTITY_ID), {})]


def test_an_under_age_sign_up_leaves_no_log_line(client, caplog):
    body = {"email": "kid@example.com", "password": "correct horse battery",
            "birth_date": "2020-01-01"}
    with caplog.at_level(logging.DEBUG):
        r = client.post("/v1/auth/register", json=body)
        assert r.status_code == 400
        assert r.get_json()["error"]["code"] == "under_minimum_age"
        assert not [rec for rec in caplog.records if rec.name == "gateway.access"]
        assert "kid@example.com" not in caplog.text
        ok = client.post("/v1/auth/register", json={**body, "birth_date": "2000-01-01"})
    assert ok.status_code == 201
    assert [rec.route for rec in caplog.records if rec.name == "gateway.access"] == \
        ["/v1/auth/register"]


def test_an_under_age_sign_up_is_no_access_log_fact(make_app, pool):
    app = make_app(ACCESS_LOG_EVENTS=True, AMQP_URI="amqp://guest:guest@127.0.0.1:1/")
    facts = app.extensions["darkroom_access_log"]
    submitted = []
    facts.submit = lambda payload, correlation_id=None: submitted.append(payload) or True
    client = app.test_client()
    body = {"email": "kid@example.com", "password": "correct horse battery",
            "birth_date": "2020-01-01"}
    assert client.post("/v1/auth/register", json=body).status_code == 400
    assert submitted == []
    assert client.post("/v1/auth/register",
                       json={**body, "birth_date": "2000-01-01"}).status_code == 201
    assert [f["route"] for f in submitted] == ["/v1/auth/register"]
