"""The auth service's settings: the ``AUTH`` section of deploy/config/auth.yaml."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from urllib.parse import urlsplit

from services.common.config import (
    DEFAULT_PUBLIC_BASE_URL,
    Section,
    app_base_url,
    public_base_url,
)
from services.common.sealed import Sealer

AGE_CHECKS = ("birth_date", "attestation")
_PROVIDER_NAME = re.compile(r"[a-z][a-z0-9_]{0,31}")


@dataclass(frozen=True)
class OidcProvider:
    """One OpenID Connect provider (``AUTH_OIDC_<NAME>_*``)."""

    name: str
    issuer: str
    client_id: str
    client_secret: str
    scopes: str = "openid email profile"


def oidc_providers(names, environ: Mapping[str, str]) -> dict[str, OidcProvider]:
    """The providers named in ``AUTH_OIDC_PROVIDERS`` (comma-separated, lower
    case), each from ``AUTH_OIDC_<NAME>_ISSUER``, ``_CLIENT_ID``,
    ``_CLIENT_SECRET`` and an optional ``_SCOPES`` in ``environ``. ValueError
    at start for a bad name or a missing variable."""
    providers = {}
    for name in [n.strip().lower() for n in str(names or "").split(",") if n.strip()]:
        if not _PROVIDER_NAME.fullmatch(name):
            raise ValueError(f"AUTH_OIDC_PROVIDERS: {name!r} is not a valid provider name")
        prefix = f"AUTH_OIDC_{name.upper()}_"
        values = {key: str(environ.get(prefix + key) or "").strip()
                  for key in ("ISSUER", "CLIENT_ID", "CLIENT_SECRET", "SCOPES")}
        for key in ("ISSUER", "CLIENT_ID", "CLIENT_SECRET"):
            if not values[key]:
                raise ValueError(f"{prefix}{key} must be set (AUTH_OIDC_PROVIDERS names {name})")
        scopes = values["SCOPES"] or OidcProvider.scopes
        if "openid" not in scopes.split():
            scopes = "openid " + scopes
        providers[name] = OidcProvider(name, values["ISSUER"].rstrip("/"), values["CLIENT_ID"],
                                       values["CLIENT_SECRET"], scopes)
    return providers


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
    # Sign-in with OpenID Connect providers (services/auth/oidc.py).
    oidc_providers: dict = field(default_factory=dict)  # name -> OidcProvider
    public_base_url: str = "http://127.0.0.1:8000"  # the providers come back to the gateway
    oidc_redirect_bases: tuple = ("http://127.0.0.1:8000",)  # where the app may be sent back
    oidc_flow_ttl: timedelta = timedelta(minutes=10)
    oidc_code_ttl: timedelta = timedelta(minutes=2)
    oidc_timeout_seconds: float = 5.0
    # The age gate (services/auth/age.py): 0 is off.
    minimum_age: int = 0
    age_check: str = "birth_date"
    # Passkeys (services/auth/passkeys.py).
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
            **cls._oidc_and_age(config, section, os.environ),
        )

    @classmethod
    def _oidc_and_age(cls, config: dict, section: Section, environ) -> dict:
        d, get = cls, section.get
        urls = config.get("AUTH", config)
        bases = [b.strip() for b in str(get("OIDC_REDIRECT_URIS", "")).split(",") if b.strip()]
        bases = bases or [app_base_url(urls)]
        for base in bases:
            app_base_url({"APP_BASE_URL": base})  # ValueError unless an absolute http(s) URL
        minimum_age = int(get("MINIMUM_AGE", d.minimum_age))
        if not 0 <= minimum_age <= 21:
            raise ValueError("AUTH.MINIMUM_AGE must be 0 (off) to 21")
        age_check = str(get("AGE_CHECK", d.age_check)).strip().lower()
        if age_check not in AGE_CHECKS:
            raise ValueError(f"AUTH.AGE_CHECK must be one of {', '.join(AGE_CHECKS)}")
        return {
            "oidc_providers": oidc_providers(get("OIDC_PROVIDERS", ""), environ),
            "public_base_url": public_base_url(urls),
            "oidc_redirect_bases": tuple(b.rstrip("/") for b in bases),
            "oidc_flow_ttl": section.duration("OIDC_FLOW_TTL_SECONDS", d.oidc_flow_ttl, "seconds"),
            "oidc_code_ttl": section.duration("OIDC_CODE_TTL_SECONDS", d.oidc_code_ttl, "seconds"),
            "oidc_timeout_seconds": float(get("OIDC_TIMEOUT_SECONDS", d.oidc_timeout_seconds)),
            "minimum_age": minimum_age,
            "age_check": age_check,
        }
