"""Sign-in with an OpenID provider and the age gate, end to end: a browser's
round trip through the gateway (gunicorn, the Procfile's "gateway" line) and
the auth service (`nameko run`) to a real OpenID provider process
(oidc-provider-mock, tests/oidc_provider.py), with the age gate on (13).

Its own small stack (auth and the gateway): the shared one (conftest.py)
runs without an age gate, which every other test's sign-up relies on."""

from __future__ import annotations

import uuid
from urllib.parse import urlsplit

import pytest
import requests

from tests.conftest import base_env, free_port, processes, wait_for
from tests.oidc_provider import OidcProvider, query_of

pytestmark = pytest.mark.e2e

APP = "http://app.example.test/signed-in"


@pytest.fixture(scope="module")
def provider(process_log_dir):
    with OidcProvider(process_log_dir, name="oidc-e2e") as running:
        yield running


@pytest.fixture(scope="module")
def gateway(make_vhost, make_database, process_log_dir, provider):
    amqp_uri, _ = make_vhost("oidc-e2e")
    port, auth_port = free_port(), free_port()
    env = base_env(
        AMQP_URI=amqp_uri, AUTH_DATABASE_URL=make_database("auth_oidc_e2e"),
        AUTH_METRICS_PORT=auth_port, GATEWAY_PORT=port,
        PUBLIC_BASE_URL=f"http://127.0.0.1:{port}", GATEWAY_READY_SERVICES="[auth]",
        RATELIMIT_AUTH="10000 per minute", RATELIMIT_DEFAULT="10000 per minute",
        AUTH_OIDC_PROVIDERS="corp", AUTH_OIDC_CORP_ISSUER=provider.issuer,
        AUTH_OIDC_CORP_CLIENT_ID="darkroom-e2e", AUTH_OIDC_CORP_CLIENT_SECRET="e2e-secret",
        AUTH_OIDC_REDIRECT_URIS="http://app.example.test", AUTH_MINIMUM_AGE=13)
    start, stop_all = processes(process_log_dir)
    try:
        auth = start("auth", env)
        auth.wait_ready(f"http://127.0.0.1:{auth_port}/readyz")
        gw = start("gateway", env)
        gw.wait_ready(f"http://127.0.0.1:{port}/readyz")
        yield type("Gateway", (), {"url": f"http://127.0.0.1:{port}", "process": gw})
    finally:
        stop_all()


def get(url: str, **kw):
    return requests.get(url, allow_redirects=False, timeout=30, **kw)


def test_a_browser_signs_up_with_the_provider_and_its_identity_stays(gateway, provider):
    subject = f"sub-{uuid.uuid4().hex[:10]}"
    email = f"{subject}@example.com"
    provider.set_user(subject, email=email, email_verified=True, name="E2E")
    assert get(gateway.url + "/v1/auth/oidc").json() == {"items": [{"name": "corp"}]}

    # the app sends the browser to the gateway, which sends it to the provider
    start = get(gateway.url + "/v1/auth/oidc/corp/start", params={"redirect_uri": APP})
    assert start.status_code == 302, start.text
    assert start.headers["Location"].startswith(provider.issuer + "/oauth2/authorize?")
    # the person signs in there; the provider sends the browser to the gateway's callback
    back = provider.authorize(start.headers["Location"], subject)
    assert back.startswith(gateway.url + "/v1/auth/oidc/corp/callback?")
    # which sends it on to the app with a one-time code
    done = get(back)
    assert done.status_code == 302, done.text
    location = done.headers["Location"]
    assert location.startswith(APP + "?")
    code = query_of(location)["code"]
    # replaying the provider's answer: its state was used
    replay = get(back)
    assert replay.status_code == 400 and replay.json()["error"]["code"] == "oidc_invalid_state"

    # the app trades the code for a session; a new account needs the age first
    exchange = gateway.url + "/v1/auth/oidc/exchange"
    asked = requests.post(exchange, json={"code": code}, timeout=30)
    assert asked.status_code == 400 and asked.json()["error"]["code"] == "age_required"
    signed_in = requests.post(exchange, json={"code": code, "birth_date": "1991-09-09"},
                              timeout=30)
    assert signed_in.status_code == 200, signed_in.text
    token = signed_in.json()["token"]
    again = requests.post(exchange, json={"code": code, "birth_date": "1991-09-09"}, timeout=30)
    assert again.status_code == 400 and again.json()["error"]["code"] == "oidc_invalid_code"

    bearer = {"Authorization": f"Bearer {token}"}
    me = get(gateway.url + "/v1/me", headers=bearer).json()
    assert me["email"] == email and me["email_verified"] is True
    identities = get(gateway.url + "/v1/me/identities", headers=bearer).json()["items"]
    assert [(i["provider"], i["email"]) for i in identities] == [("corp", email)]
    # no password and one identity: it stays
    refused = requests.delete(f"{gateway.url}/v1/me/identities/{identities[0]['id']}",
                              headers=bearer, timeout=30)
    assert refused.status_code == 409
    assert refused.json()["error"]["code"] == "last_sign_in_method"
    # linking from the account: the provider's URL for this account
    link = requests.post(gateway.url + "/v1/me/identities", headers=bearer, timeout=30,
                         json={"provider": "corp", "redirect_uri": APP})
    assert link.status_code == 201 and urlsplit(link.json()["authorization_url"]).netloc == \
        urlsplit(provider.issuer).netloc


def test_someone_under_the_minimum_age_leaves_nothing_in_the_gateways_logs(gateway):
    kid = f"kid-{uuid.uuid4().hex[:8]}@example.com"
    young, adult = f"young-{uuid.uuid4().hex}", f"adult-{uuid.uuid4().hex}"
    body = {"email": kid, "password": "correct horse battery staple", "birth_date": "2019-03-03"}
    r = requests.post(gateway.url + "/v1/auth/register", json=body, timeout=30,
                      headers={"X-Request-Id": young})
    assert r.status_code == 400 and r.json()["error"]["code"] == "under_minimum_age"
    ok = requests.post(gateway.url + "/v1/auth/register", timeout=30,
                       json={**body, "email": f"adult-{kid}", "birth_date": "2001-03-03"},
                       headers={"X-Request-Id": adult})
    assert ok.status_code == 201, ok.text
    wait_for(lambda: adult in gateway.process.logs(), 10, what="the adult's access log line")
    logs = gateway.process.logs()
    assert young not in logs and kid not in logs
