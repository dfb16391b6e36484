"""Administrators: ``auth.set_admin(email, is_admin)`` over nameko RPC."""

from __future__ import annotations

from ops import rpc


def set_admin(config: dict, email: str, is_admin: bool) -> dict:
    """Returns auth's answer ``{"user_id", "is_admin", "otpauth_uri",
    "api_keys_revoked"}`` (granting or withdrawing admin revokes the account's
    API keys); a
    DomainError (unknown user...) propagates for the CLI to print."""
    return rpc.call(config, "auth", "set_admin", email, is_admin)
