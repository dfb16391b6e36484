"""The RPC proxy pool's bookkeeping, with stand-in proxies (no broker here;
tests/integration/test_gateway_rpc.py runs it against RabbitMQ)."""

from __future__ import annotations

import socket
import threading
import time
from types import SimpleNamespace

import pytest
from kombu import Queue
from kombu.exceptions import OperationalError
from nameko.exceptions import RemoteError, RpcTimeout, UnknownService

from gateway.rpc import RpcPool, ServiceUnavailable
from services.common.errors import DomainError
from services.common.observability import correlation_id


class FakeStandalone:
    def __init__(self, config, timeout, fail_start: Exception | None = None):
        self.config = config
        self.queue_consumer = SimpleNamespace(timeout=timeout)
        self.proxy = SimpleNamespace(_worker_ctx=SimpleNamespace(data={}))
        self.fail_start = fail_start
        self.started = self.stopped = False
        self.is_healthy = True

    def start(self):
        if self.fail_start:
            raise self.fail_start
        self.started = True
        return self.proxy

    def stop(self):
        self.stopped = True

    def healthy(self):
        return self.is_healthy


class Factory:
    def __init__(self):
        self.made: list[FakeStandalone] = []
        self.fail_start: Exception | None = None

    def __call__(self, config, timeout):
        standalone = FakeStandalone(config, timeout, self.fail_start)
        self.made.append(standalone)
        return standalone


@pytest.fixture
def factory():
    return Factory()


@pytest.fixture
def pool(factory):
    return RpcPool("amqp://guest:guest@broker:5672/", size=2, timeout=7, checkout_timeout=0.2,
                   factory=factory)


def test_creating_the_pool_connects_nothing(pool, factory):
    assert factory.made == []


def test_proxies_are_started_lazily_and_reused(pool, factory):
    with pool.get() as first:
        pass
    with pool.get() as second:
        pass
    assert first is second
    assert len(factory.made) == 1
    assert factory.made[0].started
    assert factory.made[0].config == {"AMQP_URI": "amqp://guest:guest@broker:5672/"}


def test_checkout_is_exclusive(pool, factory):
    with pool.get() as first, pool.get() as second:
        assert first is not second
    assert len(factory.made) == 2


def test_pool_never_holds_more_than_its_size(pool, factory):
    held = threading.Event()
    release = threading.Event()

    def hold():
        with pool.get():
            held.set()
            release.wait(5)

    threads = [threading.Thread(target=hold) for _ in range(2)]
    for thread in threads:
        thread.start()
    held.wait(5)
    time.sleep(0.05)
    started = time.monotonic()
    with pytest.raises(ServiceUnavailable):
        with pool.get():
            pass
    assert time.monotonic() - started < 1
    release.set()
    for thread in threads:
        thread.join(5)
    assert len(factory.made) == 2
    with pool.get():  # slots are given back
        pass


def test_waiting_checkout_gets_a_released_proxy(factory):
    pool = RpcPool("amqp://x/", size=1, timeout=7, checkout_timeout=5, factory=factory)
    got = []

    def later():
        with pool.get() as proxy:
            got.append(proxy)

    with pool.get() as first:
        thread = threading.Thread(target=later)
        thread.start()
        time.sleep(0.1)
        assert got == []
    thread.join(5)
    assert got == [first]


def test_correlation_id_is_set_per_checkout_and_cleared(pool, factory):
    with pool.get(correlation="req-1") as proxy:
        assert proxy._worker_ctx.data["correlation_id"] == "req-1"
    assert "correlation_id" not in proxy._worker_ctx.data
    token = correlation_id.set("req-2")
    try:
        with pool.get() as proxy:
            assert proxy._worker_ctx.data["correlation_id"] == "req-2"
    finally:
        correlation_id.reset(token)
    with pool.get() as proxy:
        assert "correlation_id" not in proxy._worker_ctx.data


def test_timeout_can_be_shortened_for_one_checkout(pool, factory):
    with pool.get(timeout=1.5):
        assert factory.made[0].queue_consumer.timeout == 1.5
    assert factory.made[0].queue_consumer.timeout == 7
    with pool.get():
        assert factory.made[0].queue_consumer.timeout == 7


@pytest.mark.parametrize(
    "error",
    [RpcTimeout(7), ConnectionResetError("connection reset"), OperationalError("broker gone"),
     RuntimeError("This consumer has been disconnected, and can no longer be used")],
    ids=["timeout", "socket", "kombu", "disconnected"],
)
def test_broken_proxy_is_discarded_and_replaced(pool, factory, error):
    with pytest.raises(ServiceUnavailable) as caught:
        with pool.get():
            raise error
    assert caught.value.status == 503
    assert caught.value.code == "service_unavailable"
    assert factory.made[0].stopped
    with pool.get() as proxy:
        assert proxy is factory.made[1].proxy


def test_unknown_service_is_unavailable_but_the_proxy_is_kept(pool, factory):
    with pytest.raises(ServiceUnavailable):
        with pool.get():
            raise UnknownService("auth")
    assert not factory.made[0].stopped
    with pool.get():
        pass
    assert len(factory.made) == 1


@pytest.mark.parametrize("error", [DomainError("not_found", "nope", 404), RemoteError("KeyError", "x"),
                                   ValueError("a bug in the caller")])
def test_other_errors_pass_through_and_keep_the_proxy(pool, factory, error):
    with pytest.raises(type(error)):
        with pool.get():
            raise error
    with pool.get():
        pass
    assert len(factory.made) == 1
    assert not factory.made[0].stopped


def test_unreachable_broker_is_unavailable_and_frees_the_slot(pool, factory):
    factory.fail_start = OperationalError("[Errno 111] Connection refused")
    for _ in range(3):  # more than the pool size: slots are not leaked
        with pytest.raises(ServiceUnavailable):
            with pool.get():
                pass
    assert all(made.stopped for made in factory.made)
    factory.fail_start = None
    with pool.get() as proxy:
        assert proxy is factory.made[-1].proxy


def test_unhealthy_idle_proxy_is_replaced_on_checkout(pool, factory):
    with pool.get():
        pass
    factory.made[0].is_healthy = False
    with pool.get() as proxy:
        assert proxy is factory.made[1].proxy
    assert factory.made[0].stopped


def test_close_stops_idle_proxies(pool, factory):
    with pool.get(), pool.get():
        pass
    pool.close()
    assert [made.stopped for made in factory.made] == [True, True]


def test_a_reply_connection_the_broker_closed_is_seen_before_use():
    """A pooled proxy whose broker went away (its node stopped or was lost) reads
    as closed without a frame being consumed, so the pool starts a fresh one."""
    from gateway.rpc import _BoundedQueueConsumer

    ours, theirs = socket.socketpair()
    consumer = _BoundedQueueConsumer()
    consumer.connection = SimpleNamespace(connection=SimpleNamespace(sock=ours))
    try:
        assert consumer.closed_by_peer() is False  # open, nothing to read
        theirs.sendall(b"x")
        assert consumer.closed_by_peer() is False  # a frame waiting is not an end...
        assert ours.recv(1) == b"x"  # ...and is still there to be read
        theirs.close()
        assert consumer.closed_by_peer() is True
    finally:
        ours.close()
    consumer.connection = SimpleNamespace(connection=SimpleNamespace(sock=None))
    assert consumer.closed_by_peer() is True


def test_the_gateway_replies_on_a_transient_queue(monkeypatch):
    from nameko.standalone.rpc import PollingQueueConsumer

    from gateway.rpc import _BoundedQueueConsumer

    registered = []
    monkeypatch.setattr(PollingQueueConsumer, "register_provider",
                        lambda self, provider: registered.append(provider.queue.durable))
    provider = SimpleNamespace(queue=Queue("rpc.reply-standalone_rpc_proxy-x"))
    assert provider.queue.durable is True  # kombu's default, nameko's choice
    _BoundedQueueConsumer().register_provider(provider)
    assert registered == [False]  # transient before it is declared
