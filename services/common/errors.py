"""Errors that cross the RPC boundary with their meaning intact.

A service raises :class:`DomainError` (or a subclass) for anything the caller
did wrong or asked for that cannot be done. nameko serialises the exception's
arguments; because the class is registered with ``deserialize_to_instance`` the
caller (the gateway) gets a real :class:`DomainError` back, not a bare
``RemoteError``, and can turn it into the HTTP error of docs/api.md.
"""

from __future__ import annotations

import json

from nameko.exceptions import deserialize_to_instance


@deserialize_to_instance
class DomainError(Exception):
    """An expected failure with a machine-readable code and an HTTP status."""

    def __init__(self, code: str, message: str, status: int = 400, details: dict | str | None = None):
        if isinstance(details, str):  # the JSON form it crossed RPC in (see below)
            details = json.loads(details)
        details = details or {}
        # nameko serialises exception args by stringifying every non-string
        # value (409 -> "409", None -> "None"): carry the details as JSON so
        # they keep their types; the status is turned back into an int.
        super().__init__(code, message, int(status), json.dumps(details, default=str))
        self.code = code
        self.message = message
        self.status = int(status)
        self.details = details

    def __str__(self) -> str:  # pragma: no cover - cosmetic
        return f"{self.code}: {self.message}"

    def to_dict(self) -> dict:
        return {"code": self.code, "message": self.message, "details": self.details}


# Refusals about a person nothing may be kept of, not even a log line: someone
# under the minimum age (services/auth/age.py). The gateway leaves such a
# request out of its access log and facts (gateway/errors.py); every process's
# log handler drops records carrying such an error (services/common/observability.py).
UNRECORDED_CODES = frozenset({"under_minimum_age"})


def unrecorded(exc: BaseException | None) -> bool:
    """True for a DomainError whose code is in :data:`UNRECORDED_CODES`."""
    return isinstance(exc, DomainError) and exc.code in UNRECORDED_CODES


def invalid_request(message: str, **details) -> DomainError:
    return DomainError("invalid_request", message, 400, details)


def not_found(what: str = "resource") -> DomainError:
    return DomainError("not_found", f"{what} not found", 404)


def conflict(message: str, code: str = "conflict", **details) -> DomainError:
    return DomainError(code, message, 409, details)


def unauthenticated(message: str = "authentication required", code: str = "unauthenticated") -> DomainError:
    return DomainError(code, message, 401)


def forbidden(message: str, code: str = "forbidden") -> DomainError:
    return DomainError(code, message, 403)


def admin_required() -> DomainError:
    """403: only an enabled administrator, signed in with a session, operates
    (services/auth/operators.py ``require_operator``; docs/api.md "Operators")."""
    return forbidden("this needs an administrator signed in with a session",
                     code="admin_required")


def payload_too_large(max_bytes: int, what: str = "file") -> DomainError:
    """413: ``what`` (the file, the body, an output) is larger than ``max_bytes``."""
    return DomainError("payload_too_large", f"the {what} is larger than {max_bytes} bytes", 413,
                       {"max_bytes": int(max_bytes)})


def email_unverified() -> DomainError:
    """403: spending credits or money needs a verified email address."""
    return forbidden("verify your email address first", code="email_unverified")


def rate_limited(message: str, retry_after: int, **details) -> DomainError:
    return DomainError("rate_limited", message, 429, {"retry_after": int(retry_after), **details})


#: how long a caller is told to wait when our own infrastructure is down
UNAVAILABLE_RETRY_AFTER_SECONDS = 5


def service_unavailable(message: str, retry_after: int = UNAVAILABLE_RETRY_AFTER_SECONDS,
                        **details) -> DomainError:
    """503 ``service_unavailable``: try again after ``retry_after`` seconds (the
    gateway sends it as ``Retry-After``); nothing was done."""
    return DomainError("service_unavailable", message, 503,
                       {"retry_after": int(retry_after), **details})


class NonRetryable(Exception):
    """Raised by an event handler for a message that can never succeed.

    The message goes to its dead-letter queue at once instead of being retried
    (a payload that fails its schema, for example).
    """
