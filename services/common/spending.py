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
:class:`VerifiedCheck` sends the question first and waits for the answer
later, so that the caller's own checks run meanwhile (generation's submit).
"""

from __future__ import annotations

from services.common.bounded_rpc import BoundedProxy, RpcTimeout
from services.common.errors import DomainError, email_unverified

DEFAULT_TIMEOUT_SECONDS = 30.0


def require_verified(auth, user_id, timeout: float = DEFAULT_TIMEOUT_SECONDS) -> None:
    """Return when ``user_id``'s address is verified; 403 ``email_unverified``
    otherwise. ``auth`` is the service's ``RpcProxy("auth")``."""
    VerifiedCheck(auth, user_id, timeout)()


class VerifiedCheck:
    """:func:`require_verified` in two steps, so that a service's own checks
    run while auth answers: the request leaves when this is made; calling it
    waits for the answer (and raises as :func:`require_verified`, the same
    way each time it is called); :meth:`close` gives up an answer never
    waited for. Call it before anything that spends, and before any other
    refusal, so that ``email_unverified`` comes first as with one step."""

    def __init__(self, auth, user_id, timeout: float = DEFAULT_TIMEOUT_SECONDS):
        self._pending = BoundedProxy(auth, timeout, "auth").call_async("get_user", str(user_id))
        self._outcome: tuple[bool, BaseException | None] | None = None

    def __call__(self) -> None:
        if self._outcome is None:
            try:
                user = self._pending.result()
            except RpcTimeout:
                error = DomainError("service_unavailable", "the account service did not "
                                    "answer; try again shortly", 503, {"retry_after": 5})
                self._outcome = (False, error)
            except Exception as exc:  # auth's own refusal (404 not_found), as it came
                self._outcome = (False, exc)
            else:
                self._outcome = (True, None) if user.get("email_verified") else (
                    False, email_unverified())
        verified, error = self._outcome
        if not verified:
            raise error

    def close(self) -> None:
        if self._outcome is None:
            self._pending.forget()
