"""The auth service's error answers, and the one way to refuse after writing.

The Database provider rolls the worker's session back when the worker raises,
so a refusal that must leave a trace (a failed login counted, a verification
attempt used up) is raised as :class:`RecordedFailure`: the service commits the
session, then raises the DomainError it carries.
"""

from __future__ import annotations

from services.common.errors import DomainError


class RecordedFailure(Exception):
    """Refuse with ``error`` after committing what the session holds."""

    def __init__(self, error: DomainError):
        super().__init__(error)
        self.error = error


def weak_password(reason: str) -> DomainError:
    return DomainError(
        "weak_password", "choose a stronger password", 400, {"fields": {"password": [reason]}}
    )


def account_disabled() -> DomainError:
    """An operator disabled the account (services/auth/operators.py)."""
    return DomainError("account_disabled", "this account is disabled; ask the operators", 403)


def email_taken() -> DomainError:
    return DomainError("email_taken", "an account with this email already exists", 409)


def invalid_credentials(status: int = 401) -> DomainError:
    return DomainError("invalid_credentials", "wrong email or password", status)


def invalid_code() -> DomainError:
    return DomainError("invalid_code", "the code is not valid", 400)


def code_expired() -> DomainError:
    return DomainError("code_expired", "the code has expired; ask for a new one", 400)


def invalid_token() -> DomainError:
    return DomainError("invalid_token", "the link is not valid or has expired", 400)


def totp_required() -> DomainError:
    return DomainError("totp_required", "a one-time code from the authenticator app is required", 401)


def invalid_totp(status: int = 401) -> DomainError:
    return DomainError("invalid_totp", "the one-time code is not valid", status)


# ---------------------------------------------------------------- passkeys


def passkey_challenge_invalid() -> DomainError:
    """The challenge in the browser's answer was not handed out, was used, or expired."""
    return DomainError("passkey_challenge_invalid",
                       "the passkey request has expired or was already used; start again", 400)


def invalid_passkey(status: int = 400, reason: str | None = None) -> DomainError:
    return DomainError("invalid_passkey", "the passkey could not be verified", status,
                       {"reason": reason} if reason else None)


def passkey_clone_suspected() -> DomainError:
    """The authenticator's signature counter went backwards: two copies of one
    passkey are in use, one of them not the owner's."""
    return DomainError("passkey_clone_suspected",
                       "this passkey looks copied (its counter went backwards); it is refused: "
                       "sign in another way and remove it", 401)
