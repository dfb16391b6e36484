"""The auth service's settings: the ``AUTH`` section of deploy/config/auth.yaml."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from services.common.sealed import Sealer

DEFAULTS: dict[str, Any] = {
    "SESSION_TTL_DAYS": 7,
    "VERIFICATION_CODE_TTL_MINUTES": 15,
    "VERIFICATION_MAX_ATTEMPTS": 5,
    "VERIFICATION_MAX_ATTEMPTS_PER_ADDRESS": 10,
    "VERIFICATION_ADDRESS_WINDOW_SECONDS": 3600,
    "RESEND_MIN_INTERVAL_SECONDS": 60,
    "PASSWORD_RESET_TTL_MINUTES": 60,
    "PASSWORD_RESET_MIN_INTERVAL_SECONDS": 60,
    "LOGIN_MAX_FAILURES_PER_ACCOUNT": 5,
    "LOGIN_MAX_FAILURES_PER_ADDRESS": 20,
    "LOGIN_FAILURE_WINDOW_SECONDS": 900,
    "LOGIN_LOCKOUT_SECONDS": 900,
    "TOTP_ISSUER": "Darkroom",
    "DEFAULT_PLAN": "free",
}


@dataclass(frozen=True)
class AuthSettings:
    secret_key: bytes
    # Seals the codes and tokens auth's mail events carry (MAIL_SECRETS_KEY).
    sealer: Sealer
    session_ttl: timedelta = timedelta(days=7)
    verification_code_ttl: timedelta = timedelta(minutes=15)
    verification_max_attempts: int = 5
    # Wrong codes for one address, whatever account or code they aim at, in a window.
    verification_max_attempts_per_address: int = 10
    verification_address_window: timedelta = timedelta(seconds=3600)
    resend_min_interval: timedelta = timedelta(seconds=60)
    password_reset_ttl: timedelta = timedelta(minutes=60)
    password_reset_min_interval: timedelta = timedelta(seconds=60)
    login_max_failures_per_account: int = 5
    login_max_failures_per_address: int = 20
    login_failure_window: timedelta = timedelta(seconds=900)
    login_lockout: timedelta = timedelta(seconds=900)
    totp_issuer: str = "Darkroom"
    default_plan: str = "free"

    @classmethod
    def from_config(cls, config: dict) -> AuthSettings:
        """Build from the whole service config (its ``AUTH`` section and
        ``MAIL_SECRETS_KEY``)."""
        raw = {**DEFAULTS, **(config.get("AUTH") or {})}
        secret = str(raw.get("SECRET_KEY") or "")
        if not secret:
            raise ValueError("AUTH.SECRET_KEY must be set")
        return cls(
            secret_key=secret.encode(),
            sealer=Sealer.from_config(config),
            session_ttl=timedelta(days=float(raw["SESSION_TTL_DAYS"])),
            verification_code_ttl=timedelta(minutes=float(raw["VERIFICATION_CODE_TTL_MINUTES"])),
            verification_max_attempts=int(raw["VERIFICATION_MAX_ATTEMPTS"]),
            verification_max_attempts_per_address=int(raw["VERIFICATION_MAX_ATTEMPTS_PER_ADDRESS"]),
            verification_address_window=timedelta(
                seconds=float(raw["VERIFICATION_ADDRESS_WINDOW_SECONDS"])
            ),
            resend_min_interval=timedelta(seconds=float(raw["RESEND_MIN_INTERVAL_SECONDS"])),
            password_reset_ttl=timedelta(minutes=float(raw["PASSWORD_RESET_TTL_MINUTES"])),
            password_reset_min_interval=timedelta(
                seconds=float(raw["PASSWORD_RESET_MIN_INTERVAL_SECONDS"])
            ),
            login_max_failures_per_account=int(raw["LOGIN_MAX_FAILURES_PER_ACCOUNT"]),
            login_max_failures_per_address=int(raw["LOGIN_MAX_FAILURES_PER_ADDRESS"]),
            login_failure_window=timedelta(seconds=float(raw["LOGIN_FAILURE_WINDOW_SECONDS"])),
            login_lockout=timedelta(seconds=float(raw["LOGIN_LOCKOUT_SECONDS"])),
            totp_issuer=str(raw["TOTP_ISSUER"]),
            default_plan=str(raw["DEFAULT_PLAN"]),
        )
