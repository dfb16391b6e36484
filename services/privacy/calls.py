"""RPC calls that give up: nameko's ``RpcProxy`` waits for a reply forever,
and a service whose queue exists but whose consumers are down (stopped for
an upgrade, say) would hold a privacy worker until it returns. Each call here
waits at most ``timeout`` seconds, then raises 503 ``service_unavailable``
(the callee may still run it later: every call made through this is safe to
repeat or to run late)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from nameko.exceptions import UnknownService

from services.common.errors import DomainError


def unavailable(service: str) -> DomainError:
    return DomainError("service_unavailable", f"the {service} service did not answer; try again",
                       503, {"service": service, "retry_after": 5})


def begin(proxy, service: str, method: str, *args) -> Callable[[float], Any]:
    """Send the call now; the returned ``wait(timeout)`` gives its answer."""
    try:
        reply = getattr(proxy, method).call_async(*args)
    except UnknownService:
        raise unavailable(service) from None

    def wait(timeout: float):
        body = reply.reply_event.wait(max(timeout, 0.01))  # nameko's reply event: None on timeout
        if body is None:
            raise unavailable(service)
        reply.resp_body = body
        return reply.result()

    return wait


def call(proxy, service: str, method: str, *args, timeout: float):
    return begin(proxy, service, method, *args)(timeout)


class Bounded:
    """``Bounded(self.storage, "storage", 30).get_source(...)``"""

    def __init__(self, proxy, service: str, timeout: float):
        self._proxy, self._service, self._timeout = proxy, service, timeout

    def __getattr__(self, method: str):
        if method.startswith("_"):
            raise AttributeError(method)
        return lambda *args: call(self._proxy, self._service, method, *args,
                                  timeout=self._timeout)
