"""Calling a Darkroom service from the CLI: one way for every command.

The broker is checked first (a clear error when it is away), each call
carries an ``ops-...`` correlation id for the logs, and a missing service or
a timeout becomes an :class:`~ops.errors.OpsError`; a DomainError from the
service propagates for the CLI to print with its code.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any

from nameko.exceptions import RpcTimeout, UnknownService
from nameko.standalone.rpc import ClusterRpcProxy

from ops.errors import OpsError
from ops.rabbit import connect, safe_url
from services.common.errors import DomainError


@contextmanager
def service(config: dict, name: str, timeout: float | None = None) -> Iterator[Any]:
    """The ``name`` service's RPC proxy (``RPC_TIMEOUT_SECONDS`` unless ``timeout``)."""
    amqp_uri = config["AMQP_URI"]
    timeout = timeout or float(config.get("RPC_TIMEOUT_SECONDS") or 30)
    with connect(amqp_uri):
        pass
    context = {"correlation_id": f"ops-{uuid.uuid4().hex}"}
    try:
        with ClusterRpcProxy({"AMQP_URI": amqp_uri}, context_data=context, timeout=timeout) as rpc:
            yield getattr(rpc, name)
    except RpcTimeout:
        raise OpsError(f"the {name} service did not answer within {timeout:g} s") from None
    except UnknownService:
        raise OpsError(f"no {name} service is running on {safe_url(amqp_uri)}") from None


def call(config: dict, name: str, method: str, *args: Any, timeout: float | None = None,
         **kwargs: Any) -> Any:
    """``<name>.<method>(*args, **kwargs)``."""
    with service(config, name, timeout) as proxy:
        return getattr(proxy, method)(*args, **kwargs)


def each(call_one: Callable[[str], Any], ids: Iterable[str],
         late: str) -> Iterator[tuple[str, Any, str | None, str | None]]:
    """``call_one(id)`` for each id, in turn: ``(id, answer, None, None)``, or
    ``(id, None, code, message)`` for a refusal or a timeout (``late`` says
    what a timeout may mean), so one bad id never hides the others' outcome."""
    for one in ids:
        try:
            answer = call_one(one)
        except DomainError as exc:
            yield one, None, exc.code, exc.message
        except RpcTimeout:
            yield one, None, "timeout", late
        else:
            yield one, answer, None, None
