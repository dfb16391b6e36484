"""Rate limits kept in Redis are shared by every gateway worker and replica.

Redis: ``DARKROOM_TEST_REDIS_URL`` or the local server on 6379. Two apps stand
for two gunicorn workers, and two gateway processes (the Procfile's command)
for two replicas behind one balancer; the requests are invalid on purpose
(400 before any RPC), which still counts against the limit, so no service is
needed.
"""

from __future__ import annotations

import ipaddress
import os
import uuid

import pytest
import redis
import requests

from gateway.app import create_app
from tests.conftest import base_env, free_port, procfile_commands, unavailable

pytestmark = pytest.mark.integration

LOGIN_PATH = "/v1/auth/login"


@pytest.fixture(scope="module")
def redis_url():
    url = os.environ.get("DARKROOM_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
    try:
        redis.Redis.from_url(url, socket_timeout=2).ping()
    except Exception as exc:
        unavailable("Redis", repr(exc))
    return url


def worker(redis_url: str, prefix: str, **config):
    return create_app({
        "AMQP_URI": f"amqp://guest:guest@127.0.0.1:{free_port()}/",
        "RATELIMIT_ENABLED": True,
        "RATELIMIT_STORAGE_URI": redis_url,
        "RATELIMIT_KEY_PREFIX": prefix,
        "RATELIMIT_AUTH": "3 per minute",
        "LOG_LEVEL": "WARNING",
        **config,
    }).test_client()


def test_workers_share_one_budget_per_client(redis_url):
    prefix = f"darkroom-test-{uuid.uuid4().hex}"
    first, second = worker(redis_url, prefix), worker(redis_url, prefix)
    assert first.post(LOGIN_PATH, json={}).status_code == 400
    assert second.post(LOGIN_PATH, json={}).status_code == 400
    assert first.post(LOGIN_PATH, json={}).status_code == 400
    response = second.post(LOGIN_PATH, json={})
    assert response.status_code == 429
    assert response.get_json()["error"]["code"] == "rate_limited"
    assert 1 <= int(response.headers["Retry-After"]) <= 61
    # the counters are in Redis, under this run's prefix
    keys = redis.Redis.from_url(redis_url).keys(f"*{prefix}*")
    assert keys
    # another client address has its own budget
    other = {"REMOTE_ADDR": "198.51.100.9"}
    assert first.post(LOGIN_PATH, json={}, environ_base=other).status_code == 400


def test_an_unreachable_redis_does_not_take_the_api_down():
    client = worker(f"redis://127.0.0.1:{free_port()}/0", "darkroom-test-dead")
    for _ in range(5):  # limits fall back to per-process memory, requests go on
        assert client.post(LOGIN_PATH, json={}).status_code in (400, 429)
    assert client.get("/healthz").status_code == 200


def test_two_gateway_replicas_share_one_budget_per_client(redis_url, start_process):
    """Two gateway processes behind one balancer (TRUSTED_PROXY_COUNT=1: the
    client is the address the balancer forwards), one Redis: a client's
    requests count against one budget whichever replica answers them."""
    replicas = []
    for n in (1, 2):
        port = free_port()
        proc = start_process(f"gateway-{n}", base_env(
            GATEWAY_PORT=port, GATEWAY_WORKERS=1, AMQP_URI=f"amqp://guest:guest@127.0.0.1:{free_port()}/",
            RATELIMIT_STORAGE_URI=redis_url, RATELIMIT_AUTH="3 per minute",
            TRUSTED_PROXY_COUNT=1), command=procfile_commands()["gateway"])
        replicas.append((proc, f"http://127.0.0.1:{port}"))
    for proc, base in replicas:
        proc.wait_ready(f"{base}/healthz", timeout=90)
    client = {"X-Forwarded-For": str(ipaddress_of_this_run())}
    first, second = (base for _, base in replicas)

    def login(base, headers=client):
        return requests.post(f"{base}{LOGIN_PATH}", json={}, headers=headers, timeout=30)

    assert [login(base).status_code for base in (first, second, first)] == [400, 400, 400]
    refused = login(second)
    assert refused.status_code == 429
    assert refused.json()["error"]["code"] == "rate_limited"
    assert login(first).status_code == 429
    other = {"X-Forwarded-For": str(ipaddress_of_this_run())}  # another client
    assert login(second, other).status_code == 400


def ipaddress_of_this_run() -> ipaddress.IPv6Address:
    """A client address no other run (or test) uses: the limits' counters are
    keyed by it in the shared Redis."""
    return ipaddress.IPv6Address(f"2001:db8::{uuid.uuid4().hex[:4]}:{uuid.uuid4().hex[:4]}")
