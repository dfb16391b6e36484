"""RPC calls from inside a service that give up after a timeout.

nameko's ``RpcProxy`` waits for a reply for ever: while the callee is down
its request waits in the callee's durable queue, and a reply lost with the
broker (a restart drops the caller's reply queue) never comes. A worker that
must finish (a running job holding a lease) wraps its proxy in
:class:`BoundedProxy` and gets :class:`RpcTimeout` instead, which it can
retry or turn into a failure. The reply listener forgets a timed-out call,
so a reply that arrives after the timeout is dropped.
"""

from __future__ import annotations

from typing import Any


class RpcTimeout(Exception):
    """No reply from ``service.method`` within ``seconds``."""

    def __init__(self, service: str, method: str, seconds: float):
        super().__init__(service, method, seconds)
        self.service, self.method, self.seconds = service, method, seconds

    def __str__(self) -> str:
        return f"{self.service} did not answer {self.method} within {self.seconds:g}s"


class BoundedProxy:
    """``proxy.method(*args)`` waiting at most ``timeout`` seconds for the reply
    (green: the wait is an eventlet timeout on nameko's reply event)."""

    def __init__(self, proxy, timeout: float, service: str | None = None):
        self.proxy = proxy
        self.timeout = float(timeout)
        self.service = service or getattr(proxy, "service_name", "service")

    def __getattr__(self, method: str):
        def call(*args: Any, **kwargs: Any):
            return self.call(method, *args, **kwargs)

        return call

    def call(self, method: str, *args: Any, **kwargs: Any):
        return self.call_async(method, *args, **kwargs).result()

    def call_async(self, method: str, *args: Any, **kwargs: Any) -> PendingCall:
        """Publish the request now; :meth:`PendingCall.result` waits for the
        reply (at most ``timeout`` from then), :meth:`PendingCall.forget`
        gives it up."""
        # the request is published first (the publisher has its own bounded
        # retries; a timeout must not interrupt a frame half-written)
        reply = getattr(self.proxy, method).call_async(*args, **kwargs)
        return PendingCall(self, method, reply)

    def _forget(self, reply) -> None:
        """Drop the reply listener's entry for a reply nobody waits for any
        more (nameko keeps it until a reply comes, which may be never)."""
        listener = getattr(self.proxy, "reply_listener", None)
        pending = getattr(listener, "_reply_events", None)
        if isinstance(pending, dict):
            for correlation_id, event in list(pending.items()):
                if event is getattr(reply, "reply_event", None):
                    pending.pop(correlation_id, None)


class PendingCall:
    """A request of :class:`BoundedProxy` in flight."""

    def __init__(self, bounded: BoundedProxy, method: str, reply):
        self.bounded, self.method, self.reply = bounded, method, reply

    def result(self):
        import eventlet

        seconds = self.bounded.timeout
        try:
            with eventlet.Timeout(seconds, RpcTimeout(self.bounded.service, self.method, seconds)):
                return self.reply.result()
        except RpcTimeout:
            self.forget()
            raise

    def forget(self) -> None:
        self.bounded._forget(self.reply)
