"""Administrators: ``auth.set_admin(email, is_admin)`` over nameko RPC."""

from __future__ import annotations

import uuid

from nameko.exceptions import RpcTimeout, UnknownService
from nameko.standalone.rpc import ClusterRpcProxy

from ops.errors import OpsError
from ops.rabbit import connect, safe_url


def set_admin(config: dict, email: str, is_admin: bool) -> dict:
    """Returns auth's answer ``{"user_id", "is_admin", "otpauth_uri"}``; a
    DomainError (unknown user...) propagates for the CLI to print."""
    amqp_uri = config["AMQP_URI"]
    timeout = float(config.get("RPC_TIMEOUT_SECONDS") or 30)
    with connect(amqp_uri):  # a clear error when the broker is away
        pass
    context = {"correlation_id": f"ops-{uuid.uuid4().hex}"}
    try:
        with ClusterRpcProxy({"AMQP_URI": amqp_uri}, context_data=context, timeout=timeout) as rpc:
            return rpc.auth.set_admin(email, is_admin)
    except RpcTimeout:
        raise OpsError(f"the auth service did not answer within {timeout:g} s") from None
    except UnknownService:
        raise OpsError(f"no auth service is running on {safe_url(amqp_uri)}") from None
