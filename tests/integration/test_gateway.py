"""The gateway against real RabbitMQ: 503 when nobody answers or the broker is
gone (quickly, never a hang), /readyz, and the real gunicorn command.

End-to-end tests with the real auth service live elsewhere (tests/e2e); here
no service named ``auth`` runs, on purpose, in a vhost of this module's own.
"""

from __future__ import annotations

import json
import os
import time

import pytest
import requests
from kombu import Connection, Exchange, Queue
from openapi_spec_validator import validate

from gateway.app import create_app
from services.common.version import darkroom_version
from tests.conftest import base_env, free_port, wait_for

pytestmark = pytest.mark.integration

LOGIN = {"email": "ada@example.com", "password": "correct horse battery"}


@pytest.fixture(scope="module")
def vhost_uri(make_vhost):
    """A vhost of this module's own: no other module's services answer here."""
    return make_vhost("gateway")[0]


def gateway_app(amqp_uri: str, **config):
    return create_app({
        "AMQP_URI": amqp_uri,
        "RPC_TIMEOUT_SECONDS": 1,
        "READY_TIMEOUT_SECONDS": 1,
        "READY_SERVICES": ["auth"],
        "RATELIMIT_ENABLED": False,
        **config,
    })


def timed(fn):
    started = time.monotonic()
    result = fn()
    return result, time.monotonic() - started


def assert_unavailable(response):
    assert response.status_code == 503, response.get_data(as_text=True)
    assert response.get_json()["error"]["code"] == "service_unavailable"
    assert response.headers["Retry-After"]


# ------------------------------------------------------------ nobody consumes


def test_unknown_service_is_503_at_once(vhost_uri):
    client = gateway_app(vhost_uri).test_client()
    response, seconds = timed(lambda: client.post("/v1/auth/login", json=LOGIN))
    assert_unavailable(response)
    assert seconds < 3

    response, seconds = timed(lambda: client.get("/v1/me", headers={"X-API-Key": "dr_live_x"}))
    assert_unavailable(response)
    assert seconds < 3


def test_readyz_is_503_when_the_service_is_unknown(vhost_uri):
    client = gateway_app(vhost_uri).test_client()
    response, seconds = timed(lambda: client.get("/readyz"))
    assert response.status_code == 503
    assert response.get_json() == {"status": "unavailable", "checks": {"auth": "service_unavailable"}}
    assert seconds < 3
    assert client.get("/healthz").status_code == 200


@pytest.fixture
def stopped_auth_queue(vhost_uri):
    """auth's RPC queue as a stopped auth service leaves it: bound, not consumed."""
    exchange = Exchange("nameko-rpc", type="topic", durable=True)
    queue = Queue("rpc-auth", exchange=exchange, routing_key="auth.*", durable=True)
    with Connection(vhost_uri) as conn:
        queue(conn.default_channel).declare()
    yield queue
    with Connection(vhost_uri) as conn:
        queue(conn.default_channel).delete()


def queued(amqp_uri: str, queue: str) -> int:
    with Connection(amqp_uri) as conn:
        return conn.default_channel.queue_declare(queue=queue, passive=True).message_count


def test_rpc_timeout_is_503_and_the_request_does_not_linger(vhost_uri, stopped_auth_queue):
    client = gateway_app(vhost_uri).test_client()
    response, seconds = timed(lambda: client.post("/v1/auth/login", json=LOGIN))
    assert_unavailable(response)
    assert 0.9 <= seconds < 4
    # the request carried a TTL equal to the timeout: a service that starts
    # later does not log the user in long after the client gave up
    wait_for(lambda: queued(vhost_uri, "rpc-auth") == 0, timeout=5, what="the request to expire")

    # the pool recovers from the timed-out proxy: the next call times out the same way
    response, seconds = timed(lambda: client.post("/v1/auth/login", json=LOGIN))
    assert_unavailable(response)
    assert seconds < 4


def test_readyz_is_503_when_the_service_does_not_answer(vhost_uri, stopped_auth_queue):
    client = gateway_app(vhost_uri, READY_TIMEOUT_SECONDS=1).test_client()
    response, seconds = timed(lambda: client.get("/readyz"))
    assert response.status_code == 503
    assert response.get_json()["checks"] == {"auth": "service_unavailable"}
    assert seconds < 4


# ------------------------------------------------------------ broker outage


@pytest.fixture(scope="module")
def dead_broker_uri():
    return f"amqp://guest:guest@127.0.0.1:{free_port()}/"


def test_closed_broker_port_is_503_quickly(dead_broker_uri):
    app = gateway_app(dead_broker_uri)  # creating the app does not need the broker
    client = app.test_client()
    for _ in range(3):
        response, seconds = timed(lambda: client.post("/v1/auth/login", json=LOGIN))
        assert_unavailable(response)
        assert seconds < 5
    response, seconds = timed(lambda: client.get("/v1/me/sessions", headers={"Authorization": "Bearer t"}))
    assert_unavailable(response)
    assert seconds < 5


def test_readyz_and_healthz_during_an_outage(dead_broker_uri):
    client = gateway_app(dead_broker_uri, READY_SERVICES=["auth", "notifications"]).test_client()
    response, seconds = timed(lambda: client.get("/readyz"))
    assert response.status_code == 503
    assert response.get_json()["checks"] == {"auth": "service_unavailable",
                                             "notifications": "service_unavailable"}
    assert seconds < 5
    assert client.get("/healthz").status_code == 200


def test_bad_input_is_still_400_during_an_outage(dead_broker_uri):
    client = gateway_app(dead_broker_uri).test_client()
    response = client.post("/v1/auth/login", json={"email": "nope"})
    assert response.status_code == 400


# ------------------------------------------------------------ the real command


@pytest.fixture(scope="module")
def gunicorn_gateway(start_process, vhost_uri, tmp_path_factory):
    port = free_port()
    metrics_dir = tmp_path_factory.mktemp("prometheus-multiproc")
    env = base_env(
        GATEWAY_PORT=port,
        AMQP_URI=vhost_uri,
        GATEWAY_WORKERS=2,
        GATEWAY_RPC_TIMEOUT_SECONDS=1,
        GATEWAY_READY_TIMEOUT_SECONDS=1,
        PROMETHEUS_MULTIPROC_DIR=metrics_dir,
        RATELIMIT_ENABLED="false",
    )
    env.pop("DARKROOM_CONFIG_DIR", None)
    proc = start_process("gateway", env)
    base = f"http://127.0.0.1:{port}"
    proc.wait_ready(f"{base}/healthz", timeout=60)
    proc.base = base
    proc.metrics_dir = metrics_dir
    return proc


def test_gunicorn_serves_health_and_openapi(gunicorn_gateway):
    base = gunicorn_gateway.base
    health = requests.get(f"{base}/healthz", headers={"X-Request-Id": "gunicorn-1"}, timeout=5)
    assert health.status_code == 200
    assert health.json() == {"status": "ok", "version": darkroom_version()}
    assert health.headers["X-Request-Id"] == "gunicorn-1"
    assert health.headers["X-Frame-Options"] == "DENY"
    assert health.headers["Strict-Transport-Security"].startswith("max-age=")

    doc = requests.get(f"{base}/v1/openapi.json", timeout=5)
    assert doc.status_code == 200
    spec = doc.json()
    validate(spec)
    assert spec["info"]["title"] == "Darkroom API"
    assert "/v1/auth/register" in spec["paths"]


def test_gunicorn_answers_errors_as_json(gunicorn_gateway):
    base = gunicorn_gateway.base
    response = requests.get(f"{base}/v1/nowhere", timeout=5)
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"

    started = time.monotonic()
    response = requests.post(f"{base}/v1/auth/login", json=LOGIN, timeout=10)
    assert response.status_code == 503
    assert response.json()["error"]["code"] == "service_unavailable"
    assert time.monotonic() - started < 4

    ready = requests.get(f"{base}/readyz", timeout=10)
    assert ready.status_code == 503


def test_gunicorn_logs_json_access_lines(gunicorn_gateway):
    requests.get(f"{gunicorn_gateway.base}/healthz", headers={"X-Request-Id": "find-me-in-logs"}, timeout=5)

    def logged():
        return [line for line in gunicorn_gateway.logs().splitlines() if "find-me-in-logs" in line]

    (line,) = wait_for(logged, timeout=5, what="the access log line")
    record = json.loads(line)
    assert record["logger"] == "gateway.access"
    assert record["route"] == "/healthz"
    assert record["status"] == 200
    assert record["request_id"] == "find-me-in-logs"


def test_gunicorn_metrics_add_up_every_worker(gunicorn_gateway):
    base = gunicorn_gateway.base
    route = "/v1/openapi.json"

    def count() -> float:
        text = requests.get(f"{base}/metrics", timeout=5).text
        prefix = f'darkroom_http_requests_total{{method="GET",route="{route}",status="200"}} '
        return sum(float(line[len(prefix):]) for line in text.splitlines() if line.startswith(prefix))

    before = count()
    for _ in range(20):  # fresh connections: spread over both workers
        assert requests.get(f"{base}{route}", timeout=5).status_code == 200
    # every request counted once, whichever worker answered it or /metrics
    assert count() - before == 20
    assert any(name.startswith("counter_") for name in os.listdir(gunicorn_gateway.metrics_dir))
