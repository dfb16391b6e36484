"""Operators' RPCs (``admin_*``): who may call them.

The gateway's ``/v1/admin`` endpoints (docs/api.md "Operators") call a
service's ``admin_*`` RPCs with the acting user's id first (``actor``). The
service checks it before it acts, whoever called: it asks auth
(``auth.require_operator``, whose rule is services/auth/operators.py: the
account exists, is enabled and is an administrator), and logs the actor of
every change. The gateway's early refusal is a courtesy, not the check.

The ``darkroom-ops`` CLI calls the operator RPCs without ``admin_`` (its user
holds the broker's credentials, as before).
"""

from __future__ import annotations

from services.common.bounded_rpc import BoundedProxy, RpcTimeout
from services.common.errors import service_unavailable

CHECK_TIMEOUT_SECONDS = 10.0


def require_operator(auth, actor, timeout: float = CHECK_TIMEOUT_SECONDS) -> str:
    """Return ``actor`` (a user id) when auth says it may operate; auth's 403
    ``admin_required`` propagates otherwise, and no answer in ``timeout`` is
    503 ``service_unavailable``. ``auth`` is the service's ``RpcProxy("auth")``."""
    try:
        answer = BoundedProxy(auth, timeout, "auth").call("require_operator", str(actor))
    except RpcTimeout:
        raise service_unavailable("the account service did not answer; try again shortly") \
            from None
    return str(answer["user_id"])
