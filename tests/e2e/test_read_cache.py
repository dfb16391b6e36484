"""The gateway's read cache (gateway/readcache.py) against the real stack: a
second gateway on the stack's services, under deploy/Procfile's gunicorn
command with two workers and the documented bounds (the credential cache's
15 s), its metrics shared by the workers so that the test can see each
worker's entries. Every request opens its own connection, so the kernel
spreads them over both workers.

- a profile change made through one worker is seen at once by every next
  read, whichever worker answers (50 rounds);
- memory does answer: reads hit the cache in both workers;
- a revoked session and a revoked API key stop working within 15 s;
- the balance after a spend: once billing has captured the job's price, every
  read shows it (its events reach both workers' caches).
"""

from __future__ import annotations

import re
import time

import pytest
import requests

from tests.conftest import Process, free_port, wait_for
from tests.e2e.stack import Stack, verified_login

pytestmark = pytest.mark.e2e

CREDENTIAL_BOUND = 15  # GATEWAY_AUTH_CACHE_SECONDS' default, the documented bound


class FreshConnections(Stack):
    """The stack's helpers, each request on a new connection (any worker)."""

    def call(self, method, path, token=None, api_key=None, **kw):
        headers = {**kw.pop("headers", {}), "Connection": "close"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        if api_key:
            headers["X-API-Key"] = api_key
        return requests.request(method, self.base_url + path, headers=headers, timeout=30, **kw)


@pytest.fixture(scope="module")
def gateway(stack, tmp_path_factory):
    port = free_port()
    metrics_dir = tmp_path_factory.mktemp("read-cache-metrics")
    env = {**stack.env, "GATEWAY_PORT": str(port), "GATEWAY_WORKERS": "2",
           "GATEWAY_AUTH_CACHE_SECONDS": str(CREDENTIAL_BOUND),
           "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir)}
    env.pop("GATEWAY_INTERNAL_PORT", None)
    proc = Process("gateway", env, tmp_path_factory.mktemp("read-cache-gateway")).start()
    try:
        proc.wait_ready(f"http://127.0.0.1:{port}/readyz")
        yield FreshConnections(f"http://127.0.0.1:{port}", stack.mail_dir, {"gateway": proc},
                               stack.objects_dir, env=env)
    finally:
        proc.stop()


def metric(gw, name: str) -> list[tuple[dict, float]]:
    text = requests.get(gw.base_url + "/metrics", timeout=30).text
    samples = []
    for line in text.splitlines():
        m = re.fullmatch(rf"{name}\{{(.*)\}} (\S+)", line)
        if m:
            labels = dict(re.findall(r'(\w+)="([^"]*)"', m.group(1)))
            samples.append((labels, float(m.group(2))))
    return samples


def hits(gw, kind: str) -> float:
    return sum(v for labels, v in metric(gw, "darkroom_gateway_read_cache_reads_total")
               if labels.get("kind") == kind and labels.get("result") == "hit")


def workers_holding_entries(gw) -> set[str]:
    return {labels["pid"] for labels, v in metric(gw, "darkroom_gateway_read_cache_entries")
            if v > 0}


def me(gw, **credential) -> dict:
    response = gw.call("GET", "/v1/me", **credential)
    assert response.status_code == 200, response.text
    return response.json()


def test_a_profile_change_shows_at_once_on_every_worker(gateway):
    _, _, token = verified_login(gateway)
    # both workers' consumers connected, and both caching: reads until each holds an entry
    wait_for(lambda: me(gateway, token=token) and len(workers_holding_entries(gateway)) == 2,
             60, 0.1, "both workers to cache /v1/me")
    hits_before = hits(gateway, "me")

    for i in range(50):
        name = f"name {i}"
        patched = gateway.call("PATCH", "/v1/me", token=token, json={"display_name": name})
        assert patched.status_code == 200, patched.text
        for _ in range(4):  # the first reads after the write, on any worker
            assert me(gateway, token=token)["display_name"] == name, f"round {i}"

    # and memory answered most of those reads (each write costs each worker one RPC)
    assert hits(gateway, "me") - hits_before >= 50


def test_revoked_credentials_stop_within_the_bound(gateway):
    _, registered, token = verified_login(gateway)
    key = registered["api_key"]
    for _ in range(6):  # cached (credential and profile) in both workers
        me(gateway, token=token)
        me(gateway, api_key=key["key"])

    revoked = gateway.call("DELETE", f"/v1/me/api-keys/{key['id']}", token=token)
    assert revoked.status_code == 204, revoked.text
    started = time.monotonic()
    wait_for(lambda: all(gateway.call("GET", "/v1/me", api_key=key["key"]).status_code == 401
                         for _ in range(4)), CREDENTIAL_BOUND + 10, 0.25, "the key refused")
    assert time.monotonic() - started <= CREDENTIAL_BOUND + 5

    sessions = gateway.call("GET", "/v1/me/sessions", token=token).json()["items"]
    [current] = [s for s in sessions if s["current"]]
    _, _, other_token = verified_login(gateway)
    assert gateway.call("DELETE", f"/v1/me/sessions/{current['id']}", token=token).status_code == 204
    started = time.monotonic()
    wait_for(lambda: all(gateway.call("GET", "/v1/me", token=token).status_code == 401
                         for _ in range(4)), CREDENTIAL_BOUND + 10, 0.25, "the session refused")
    assert time.monotonic() - started <= CREDENTIAL_BOUND + 5
    assert me(gateway, token=other_token)  # someone else's session is untouched


def balance(gw, token) -> dict:
    response = gw.call("GET", "/v1/billing/balance", token=token)
    assert response.status_code == 200, response.text
    return response.json()


def test_the_balance_after_a_spend_is_right_on_every_worker(gateway):
    _, _, token = verified_login(gateway)
    start = wait_for(lambda: (b := balance(gateway, token))["available"] > 0 and b, 30, 0.2,
                     "the signup grant")
    quote = gateway.call("POST", "/v1/generations", token=token, params={"dry_run": "true"},
                         json={"type": "text-to-image", "prompt": "a lighthouse"})
    assert quote.status_code == 200, quote.text
    price = quote.json()["price"]
    submitted = gateway.call("POST", "/v1/generations", token=token,
                             json={"type": "text-to-image", "prompt": "a lighthouse"})
    assert submitted.status_code == 202, submitted.text
    job_id = submitted.json()["id"]

    # read the balance all along (both workers cache what they read), until the
    # ledger, never cached, shows the price captured
    def captured():
        balance(gateway, token)
        entries = gateway.call("GET", "/v1/billing/ledger", token=token,
                               params={"limit": 50}).json()["items"]
        return any(e["kind"] == "capture" for e in entries)

    wait_for(captured, 90, 0.05, "the job's price captured")
    # billing published the capture's event as it committed: it reaches both workers'
    # consumers in milliseconds (a second allowed), far within the 15 s an entry may live
    time.sleep(1)
    seen = [balance(gateway, token) for _ in range(20)]
    assert all(b["held"] == 0 and b["available"] == start["available"] - price
               for b in seen), (start, price, seen)
    job = gateway.call("GET", f"/v1/generations/{job_id}", token=token).json()
    assert job["status"] == "succeeded"
