"""The auth service's settings: the ``AUTH`` section of deploy/config/auth.yaml."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta
from urllib.parse import urlsplit

from services.common.config import DEFAULT_PUBLIC_BASE_URL, Section, app_base_url
from services.common.sealed import Sealer


def _origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


@dataclass(frozen=True)
class WebAuthnSettings:
    """Passkeys (services/auth/passkeys.py): the relying party the browser
    binds each passkey to, and the origins its pages run on. By default both
    come from ``APP_BASE_URL`` (``PUBLIC_BASE_URL`` when unset): the RP id is
    its host name, the one origin its scheme, host and port."""

    rp_id: str = urlsplit(DEFAULT_PUBLIC_BASE_URL).hostname or "localhost"
    rp_name: str = "Darkroom"
    origins: tuple[str, ...] = (_origin(DEFAULT_PUBLIC_BASE_URL),)
    challenge_ttl: timedelta = timedelta(seconds=300)

    @classmethod
    def from_section(cls, section: Section) -> WebAuthnSettings:
        base = app_base_url(section.values)
        origins = [o.strip().rstrip("/") for o in str(section.get("WEBAUTHN_ORIGINS", ""))
                   .split(",") if o.strip()] or [_origin(base)]
        for origin in origins:
            parts = urlsplit(origin)
            if parts.scheme not in ("http", "https") or not parts.hostname or \
                    _origin(origin) != origin:
                raise ValueError(f"AUTH.WEBAUTHN_ORIGINS: {origin!r} is not an origin "
                                 "(scheme://host[:port])")
        challenge_ttl = timedelta(seconds=section.positive(
            "WEBAUTHN_CHALLENGE_TTL_SECONDS", cls.challenge_ttl.total_seconds(), float))
        return cls(rp_id=str(section.get("WEBAUTHN_RP_ID", "") or urlsplit(base).hostname),
                   rp_name=str(section.get("WEBAUTHN_RP_NAME", "") or cls.rp_name),
                   origins=tuple(origins), challenge_ttl=challenge_ttl)


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
    webauthn: WebAuthnSettings = field(default_factory=WebAuthnSettings)

    @classmethod
    def from_config(cls, config: dict) -> AuthSettings:
        """Build from the whole service config (its ``AUTH`` section and
        ``MAIL_SECRETS_KEY``)."""
        section, d = Section(config, "AUTH"), cls  # the class holds each field's default
        get, duration = section.get, section.duration
        return cls(
            secret_key=section.required("SECRET_KEY").encode(),
            sealer=Sealer.from_config(config),
            session_ttl=duration("SESSION_TTL_DAYS", d.session_ttl, "days"),
            verification_code_ttl=duration("VERIFICATION_CODE_TTL_MINUTES",
                                           d.verification_code_ttl, "minutes"),
            verification_max_attempts=int(get("VERIFICATION_MAX_ATTEMPTS",
                                              d.verification_max_attempts)),
            verification_max_attempts_per_address=int(get(
                "VERIFICATION_MAX_ATTEMPTS_PER_ADDRESS", d.verification_max_attempts_per_address)),
            verification_address_window=duration("VERIFICATION_ADDRESS_WINDOW_SECONDS",
                                                 d.verification_address_window, "seconds"),
            resend_min_interval=duration("RESEND_MIN_INTERVAL_SECONDS", d.resend_min_interval,
                                         "seconds"),
            password_reset_ttl=duration("PASSWORD_RESET_TTL_MINUTES", d.password_reset_ttl,
                                        "minutes"),
            password_reset_min_interval=duration("PASSWORD_RESET_MIN_INTERVAL_SECONDS",
                                                 d.password_reset_min_interval, "seconds"),
            login_max_failures_per_account=int(get("LOGIN_MAX_FAILURES_PER_ACCOUNT",
                                                   d.login_max_failures_per_account)),
            login_max_failures_per_address=int(get("LOGIN_MAX_FAILURES_PER_ADDRESS",
                                                   d.login_max_failures_per_address)),
            login_failure_window=duration("LOGIN_FAILURE_WINDOW_SECONDS", d.login_failure_window,
                                          "seconds"),
            login_lockout=duration("LOGIN_LOCKOUT_SECONDS", d.login_lockout, "seconds"),
            totp_issuer=str(get("TOTP_ISSUER", d.totp_issuer)),
            default_plan=str(get("DEFAULT_PLAN", d.default_plan)),
            webauthn=WebAuthnSettings.from_section(section),
        )
