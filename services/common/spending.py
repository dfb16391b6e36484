"""A verified email address is required to spend: credits or money.

The rule is enforced where the spending starts, by the services themselves,
so every caller meets it (the gateway, the ops CLI, another service):

- generation: submitting a job (not a ``dry_run`` quote, which spends
  nothing) and replaying one (a new hold on its owner's credits);
- billing: a checkout (an order, then a payment).

Refused: 403 ``email_unverified``, the gateway's error
(:func:`services.common.errors.email_unverified`); the gateway's
``require_verified`` may still answer first from the credential it resolved.

How a service knows: it asks auth, the one holder of the flag, at the moment
of spending (``auth.get_user``, one primary-key read), through
:class:`~services.common.bounded_rpc.BoundedProxy`. Nothing is cached or
copied, so a new verification counts at once and there is no second copy of
the flag to keep in step. A user auth does not know is auth's 404
``not_found``; no answer within the timeout is 503 ``service_unavailable``.
"""

from __future__ import annotations

from services.common.bounded_rpc import BoundedProxy, RpcTimeout
from services.common.errors import DomainError, email_unverified

DEFAULT_TIMEOUT_SECONDS = 30.0


def require_verified(auth, user_id, timeout: float = DEFAULT_TIMEOUT_SECONDS) -> None:
    """Return when ``user_id``'s address is verified; 403 ``email_unverified``
    otherwise. ``auth`` is the service's ``RpcProxy("auth")``."""
    try:
        user = BoundedProxy(auth, timeout, "auth").get_user(str(user_id))
    except RpcTimeout:
        raise DomainError("service_unavailable", "the account service did not answer; "
                          "try again shortly", 503, {"retry_after": 5}) from None
    if not user.get("email_verified"):
        raise email_unverified()
