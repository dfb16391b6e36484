"""The gateway's RPC pool against RabbitMQ and a real nameko service.

``GatewayEcho`` below is a test-only service run with ``nameko run`` (like
every service, through its real entrypoint); the pool must carry calls,
correlation ids and DomainErrors to it and back, and survive a broker outage:
the connection to the broker goes through a TCP relay this module can cut.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
from pathlib import Path

import pytest
from nameko.contextdata import ContextDataProvider
from nameko.rpc import rpc

from gateway.api.common import rpc as pooled
from gateway.app import create_app
from services.common.errors import DomainError
from services.common.service import DarkroomService
from tests.conftest import base_env, wait_for

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]


class CorrelationId(ContextDataProvider):
    context_key = "correlation_id"


class GatewayEcho(DarkroomService):
    """Test-only: answers what the pool needs to be checked against."""

    name = "gwecho"
    correlation = CorrelationId()

    @rpc
    def echo(self, value):
        return {"value": value, "correlation_id": self.correlation}

    @rpc(expected_exceptions=DomainError)
    def refuse(self):
        raise DomainError("conflict", "refused on purpose", 409, {"retry_after": 7, "id": None})

    @rpc
    def crash(self):
        raise KeyError("internal detail")

    @rpc
    def slow(self, seconds, value):
        time.sleep(seconds)  # green under nameko run: other workers go on
        return value


# ------------------------------------------------------------ fixtures


class Relay:
    """A TCP relay to the broker that can be cut (connections dropped, new
    ones refused) and restored on the same port: a broker outage."""

    def __init__(self, target: tuple[str, int]):
        self.target = target
        self.port = 0
        self.sockets: list[socket.socket] = []
        self.listener: socket.socket | None = None
        self.start()

    def start(self):
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self.port = listener.getsockname()[1]
        self.listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def _accept(self, listener):
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.target)
            self.sockets += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(source, sink):
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for s in (source, sink):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def cut(self):
        self.listener.close()
        for s in self.sockets:
            try:
                s.shutdown(socket.SHUT_RDWR)
                s.close()
            except OSError:
                pass
        self.sockets = []


@pytest.fixture(scope="module")
def vhost_uri(make_vhost):
    """A vhost of this module's own: no other module's services answer here."""
    return make_vhost("gwrpc")[0]


@pytest.fixture(scope="module")
def echo_service(vhost_uri, tmp_path_factory, process_log_dir):
    workdir = tmp_path_factory.mktemp("gwecho")
    config = workdir / "gwecho.yaml"
    config.write_text(json.dumps({"AMQP_URI": vhost_uri, "METRICS_PORT": 0, "LOG_LEVEL": "INFO"}))
    log = open(process_log_dir / "gwecho.log", "ab")
    proc = subprocess.Popen(
        [str(Path(sys.executable).parent / "nameko"), "run", "--config", str(config),
         "tests.integration.test_gateway_rpc:GatewayEcho"],
        cwd=REPO, env=base_env(), stdout=log, stderr=subprocess.STDOUT,
    )
    yield proc
    proc.terminate()
    try:
        proc.wait(15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)
    log.close()


@pytest.fixture(scope="module")
def relay(vhost_uri):
    parsed = urllib.parse.urlsplit(vhost_uri)
    return Relay((parsed.hostname, parsed.port or 5672))


@pytest.fixture(scope="module")
def relayed_uri(vhost_uri, relay):
    parsed = urllib.parse.urlsplit(vhost_uri)
    netloc = f"{parsed.username}:{parsed.password}@127.0.0.1:{relay.port}"
    return urllib.parse.urlunsplit(parsed._replace(netloc=netloc))


@pytest.fixture(scope="module")
def app(relayed_uri, echo_service):
    app = create_app({
        "AMQP_URI": relayed_uri,
        "RPC_TIMEOUT_SECONDS": 2,
        "READY_TIMEOUT_SECONDS": 1,
        "READY_SERVICES": ["gwecho"],
        "RATELIMIT_ENABLED": False,
        "RPC_POOL_SIZE": 3,
    })

    @app.get("/test/echo/<value>")
    def echo(value):
        with pooled() as proxy:
            return proxy.gwecho.echo(value)

    @app.get("/test/refuse")
    def refuse():
        with pooled() as proxy:
            return proxy.gwecho.refuse()

    @app.get("/test/crash")
    def crash():
        with pooled() as proxy:
            return proxy.gwecho.crash()

    client = app.test_client()

    def answering():
        if echo_service.poll() is not None:
            raise RuntimeError("gwecho exited")
        return client.get("/readyz").status_code == 200

    wait_for(answering, timeout=60, interval=0.3, what="gwecho to answer pings")
    return app


@pytest.fixture
def client(app):
    return app.test_client()


# ------------------------------------------------------------ tests


def test_calls_carry_the_request_id_as_correlation_id(client):
    response = client.get("/test/echo/hello", headers={"X-Request-Id": "rpc-trace-1"})
    assert response.status_code == 200
    assert response.get_json() == {"value": "hello", "correlation_id": "rpc-trace-1"}


def test_domain_errors_cross_rpc_with_their_types(client):
    response = client.get("/test/refuse")
    assert response.status_code == 409
    assert response.headers["Retry-After"] == "7"
    assert response.get_json() == {"error": {"code": "conflict", "message": "refused on purpose",
                                             "details": {"retry_after": 7, "id": None}}}


def test_other_service_errors_are_500_without_details(client):
    response = client.get("/test/crash")
    assert response.status_code == 500
    assert response.get_json()["error"]["code"] == "internal_error"
    assert b"internal detail" not in response.data


def test_proxies_are_reused_across_requests_and_threads(app, client):
    pool = app.extensions["darkroom"].rpc
    results: list[int] = []

    def call(i):
        with app.test_client() as c:
            results.append(c.get(f"/test/echo/{i}").status_code)

    threads = [threading.Thread(target=call, args=(i,)) for i in range(30)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert results == [200] * 30
    assert 1 <= len(pool._idle) <= pool.size


def test_calls_in_flight_at_once_over_one_proxy(app):
    with app.app_context(), pooled() as proxy:
        started = time.monotonic()
        first = proxy.gwecho.slow.call_async(1.0, "a")
        second = proxy.gwecho.slow.call_async(1.0, "b")
        assert (second.result(), first.result()) == ("b", "a")
        assert time.monotonic() - started < 1.8  # both ran at once, not one after the other


def test_a_reply_waited_for_with_its_own_shorter_timeout(app):
    pool = app.extensions["darkroom"].rpc
    with app.app_context():
        with pooled() as proxy:
            assert proxy.wait(proxy.gwecho.slow.call_async(0.1, "quick"), 1.0) == "quick"
            assert proxy.gwecho.slow(0.1, "then") == "then"  # the checkout's timeout is back
        started = time.monotonic()
        with pytest.raises(DomainError) as refused, pooled() as proxy:
            proxy.wait(proxy.gwecho.slow.call_async(1.5, "late"), 0.3)
        assert refused.value.code == "service_unavailable"
        assert time.monotonic() - started < 1.2  # 0.3 s, not the pool's 2 s
        assert proxy not in [idle.proxy for idle in pool._idle]  # discarded: its late reply
        with pooled() as proxy:
            assert proxy.gwecho.echo("after") == {"value": "after", "correlation_id": None}


def test_readyz_when_the_service_answers(client):
    response = client.get("/readyz")
    assert response.status_code == 200
    assert response.get_json() == {"status": "ok", "checks": {"gwecho": "ok"}}


def test_broker_outage_is_503_quickly_and_the_pool_recovers(app, client, relay):
    assert client.get("/test/echo/before").status_code == 200
    relay.cut()
    try:
        for _ in range(3):
            started = time.monotonic()
            response = client.get("/test/echo/during")
            assert response.status_code == 503
            assert response.get_json()["error"]["code"] == "service_unavailable"
            assert time.monotonic() - started < 5
        # /readyz keeps its answer a second (READY_CACHE_SECONDS): within two
        # it says what it saw after the cut
        deadline = time.monotonic() + 2.5
        while (ready := client.get("/readyz")).status_code == 200 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert ready.status_code == 503
        assert client.get("/healthz").status_code == 200
    finally:
        relay.start()  # the broker is back, on the same address
    response = client.get("/test/echo/after", headers={"X-Request-Id": "after-outage"})
    assert response.status_code == 200
    assert response.get_json() == {"value": "after", "correlation_id": "after-outage"}
    deadline = time.monotonic() + 2.5  # the 503 seen in the outage is kept a second
    while (ready := client.get("/readyz")).status_code == 503 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert ready.status_code == 200
