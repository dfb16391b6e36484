"""A small pool of started nameko standalone RPC proxies, shared by the
threads of a gunicorn (gthread) worker.

    with pool.get() as rpc:
        user = rpc.auth.get_user(user_id)

    with pool.get() as rpc:  # two services at once: both requests in flight
        pending = rpc.privacy.policy_status.call_async(user_id)
        user = rpc.auth.get_user(user_id)
        status = rpc.wait(pending, 2.0)  # its own, shorter wait

- Checkout is exclusive: a proxy (its reply queue and connection) is used by
  one thread at a time; at most ``size`` proxies exist per process.
- Each checkout puts the request's correlation id in the proxy's worker
  context, so it travels in the ``nameko.correlation_id`` header of every call.
- Nothing connects at creation: proxies are started on first use. Every way
  the broker or a service can be missing turns into a quick 503
  ``service_unavailable`` DomainError: a call nobody answers within the timeout
  (:class:`RpcTimeout`), a service nobody runs (:class:`UnknownService`), a
  broker that refuses or drops connections. Connecting is bounded (a single
  retry, short intervals), publishing too, and requests carry a TTL equal to
  the timeout so a call the gateway gave up on is not run later.
- A proxy that failed is stopped and discarded; the next checkout starts a
  fresh one.
"""

from __future__ import annotations

import logging
import socket
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import kombu.pools
from amqp.exceptions import AMQPError
from kombu.exceptions import KombuError
from nameko.amqp.publish import Publisher
from nameko.exceptions import RpcTimeout, UnknownService
from nameko.rpc import MethodProxy, ServiceProxy
from nameko.standalone.rpc import (
    ClusterProxy,
    ClusterRpcProxy,
    PollingQueueConsumer,
    SingleThreadedReplyListener,
)

from services.common.errors import DomainError
from services.common.observability import CORRELATION_KEY, correlation_id
from services.common.queues import transient_reply_queue

log = logging.getLogger("gateway.rpc")

CONNECT_TIMEOUT_SECONDS = 3.0
# One retry, no long sleeps: the client is waiting.
_CONNECT_RETRY = {"max_retries": 1, "interval_start": 0, "interval_step": 0.5, "interval_max": 0.5}

# Errors after which a proxy cannot be trusted any more (its connection or its
# consumer is gone or in an unknown state).
BROKEN = (RpcTimeout, OSError, AMQPError, KombuError, RuntimeError)


class ServiceUnavailable(DomainError):
    """503 ``service_unavailable``: the broker or a service did not answer."""

    def __init__(self, message: str = "a backing service is unavailable, try again shortly",
                 retry_after: int = 5):
        super().__init__("service_unavailable", message, 503, {"retry_after": retry_after})


# ------------------------------------------------------------ bounded proxy


class _BoundedPublisher(Publisher):
    # passed to kombu (retries) and py-amqp (connect_timeout) for the producer connection
    transport_options = {
        **_CONNECT_RETRY,
        "connect_retries_timeout": CONNECT_TIMEOUT_SECONDS,
        "connect_timeout": CONNECT_TIMEOUT_SECONDS,
    }
    retry_policy = dict(_CONNECT_RETRY)


class _MethodProxy(MethodProxy):
    publisher_cls = _BoundedPublisher


class _ServiceProxy(ServiceProxy):
    def __getattr__(self, name: str):
        if name.startswith("_"):
            raise AttributeError(name)
        timeout = self.reply_listener.queue_consumer.timeout
        options = dict(self.options)
        if timeout:
            options["expiration"] = timeout  # seconds; nobody waits for it after that
        return _MethodProxy(self.worker_ctx, self.service_name, name, self.reply_listener, **options)


class _ClusterProxy(ClusterProxy):
    def __getattr__(self, name: str):
        if name.startswith("_"):
            raise AttributeError(name)
        if name not in self._proxies:
            self._proxies[name] = _ServiceProxy(self._worker_ctx, name, self._reply_listener)
        return self._proxies[name]

    def wait(self, reply, timeout: float):
        """The result of ``reply`` (from ``proxy.<service>.<method>.call_async``),
        waiting at most ``timeout`` seconds for it rather than the checkout's
        timeout: RpcTimeout after that (and the pool discards this proxy)."""
        consumer = self._reply_listener.queue_consumer
        saved, consumer.timeout = consumer.timeout, timeout
        try:
            return reply.result()
        finally:
            consumer.timeout = saved


class _BoundedQueueConsumer(PollingQueueConsumer):
    """nameko's polling reply consumer, connecting with bounded retries, its
    reply queue transient (services.common.queues: on a cluster it is declared
    afresh on another node when its own is lost)."""

    def register_provider(self, provider):
        transient_reply_queue(provider.queue)
        super().register_provider(provider)

    def _setup_consumer(self):
        self.connection.connect_timeout = CONNECT_TIMEOUT_SECONDS
        self.connection.ensure_connection(timeout=CONNECT_TIMEOUT_SECONDS, **_CONNECT_RETRY)
        super()._setup_consumer()

    def closed_by_peer(self) -> bool:
        """The broker closed the reply connection (its node stopped or was lost):
        the socket reads as ended. Peeks, never consumes a frame."""
        try:
            sock = self.connection.connection.sock
            return sock is None or sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
        except (BlockingIOError, InterruptedError):
            return False  # open, nothing to read
        except Exception:
            return True


class _ReplyListener(SingleThreadedReplyListener):
    def __init__(self, timeout=None):
        super().__init__(timeout=timeout)
        self.queue_consumer = _BoundedQueueConsumer(timeout=timeout)


class BoundedClusterRpcProxy(ClusterRpcProxy):
    """:class:`ClusterRpcProxy` whose connects and publishes give up quickly."""

    def __init__(self, config: dict, timeout: float | None = None):
        super().__init__(config, timeout=timeout, reply_listener_cls=_ReplyListener)
        self._proxy = _ClusterProxy(self._worker_ctx, self._reply_listener)

    @property
    def queue_consumer(self) -> _BoundedQueueConsumer:
        return self._reply_listener.queue_consumer

    @property
    def proxy(self) -> ClusterProxy:
        return self._proxy

    def healthy(self) -> bool:
        consumer = self.queue_consumer
        return (not consumer.stopped and bool(consumer.connection.connected)
                and not consumer.closed_by_peer())


# ------------------------------------------------------------ the pool


class RpcPool:
    def __init__(
        self,
        amqp_uri: str,
        size: int = 8,
        timeout: float = 10.0,
        checkout_timeout: float = 5.0,
        factory: Callable[[dict, float], BoundedClusterRpcProxy] | None = None,
    ):
        self.config = {"AMQP_URI": amqp_uri}
        self.size = max(1, int(size))
        self.timeout = float(timeout)
        self.checkout_timeout = float(checkout_timeout)
        self._factory = factory or (lambda config, t: BoundedClusterRpcProxy(config, timeout=t))
        self._slots = threading.BoundedSemaphore(self.size)
        self._lock = threading.Lock()
        self._idle: list[BoundedClusterRpcProxy] = []
        # kombu's producer pool blocks forever when exhausted: keep it larger
        # than the number of proxies that may publish at once.
        if kombu.pools.get_limit() < self.size + 2:
            kombu.pools.set_limit(self.size + 2)

    # -- internals

    def _take(self) -> BoundedClusterRpcProxy | None:
        while True:
            with self._lock:
                if not self._idle:
                    return None
                standalone = self._idle.pop()
            if standalone.healthy():
                return standalone
            self._discard(standalone)

    def _start(self) -> BoundedClusterRpcProxy:
        standalone = self._factory(self.config, self.timeout)
        try:
            standalone.start()
        except BaseException:
            self._discard(standalone)
            raise
        return standalone

    @staticmethod
    def _discard(standalone: BoundedClusterRpcProxy) -> None:
        try:
            standalone.stop()
        except Exception:  # already broken: nothing to tidy
            pass

    def _release(self, standalone: BoundedClusterRpcProxy) -> None:
        standalone.proxy._worker_ctx.data.pop(CORRELATION_KEY, None)
        standalone.queue_consumer.timeout = self.timeout
        with self._lock:
            self._idle.append(standalone)

    # -- API

    @contextmanager
    def get(self, timeout: float | None = None, correlation: str | None = None) -> Iterator[Any]:
        """Check out a started proxy for the duration of the block.

        ``timeout`` overrides the RPC timeout for this checkout (readiness
        probes use a short one); ``correlation`` defaults to the current
        correlation id (the request's X-Request-Id in the gateway).
        """
        if not self._slots.acquire(timeout=self.checkout_timeout):
            raise ServiceUnavailable("the gateway is busy, try again shortly", retry_after=1)
        standalone = None
        try:
            try:
                standalone = self._take() or self._start()
            except BROKEN as exc:
                log.warning("cannot reach the message broker: %s", _describe(exc))
                raise ServiceUnavailable() from None
            standalone.queue_consumer.timeout = timeout or self.timeout
            cid = correlation or correlation_id.get()
            if cid:
                standalone.proxy._worker_ctx.data[CORRELATION_KEY] = cid
            try:
                yield standalone.proxy
            except UnknownService as exc:
                log.warning("RPC to a service nobody runs: %s", exc)
                raise ServiceUnavailable() from None
            except BROKEN as exc:
                log.warning("RPC failed, discarding the proxy: %s", _describe(exc))
                self._discard(standalone)
                standalone = None
                raise ServiceUnavailable() from None
            except BaseException:
                # not an RPC transport problem (DomainError, RemoteError...): proxy is fine
                raise
        finally:
            if standalone is not None:
                self._release(standalone)
            self._slots.release()

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for standalone in idle:
            self._discard(standalone)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, RpcTimeout):
        return f"no reply within {exc}s"
    return f"{type(exc).__name__}: {exc}"
