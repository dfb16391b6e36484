"""Rate limits (flask-limiter), keyed by the client address.

``RATELIMIT_DEFAULT`` applies to every route, the stricter ``RATELIMIT_AUTH``
to /v1/auth/* (one budget shared by all of them, OpenID sign-in's included, per address). Counters live
in ``RATELIMIT_STORAGE_URI``: ``memory://`` (per process) or ``redis://``
(shared by every worker and replica). A breach is a 429 ``rate_limited`` with
``Retry-After`` (see gateway.errors). Health endpoints are exempt.
"""

from __future__ import annotations

from flask import Flask, request
from flask_limiter import Limiter

EXEMPT_PATHS = ("/healthz", "/readyz", "/metrics")


def client_address() -> str:
    # request.remote_addr already went through ProxyFix (TRUSTED_PROXY_COUNT hops)
    return request.remote_addr or "unknown"


def init_app(app: Flask, config: dict, *auth_blueprints) -> Limiter:
    enabled = bool(config.get("RATELIMIT_ENABLED", True))
    app.config.update(
        RATELIMIT_ENABLED=enabled,
        RATELIMIT_STORAGE_URI=str(config.get("RATELIMIT_STORAGE_URI") or "memory://"),
        RATELIMIT_DEFAULT=str(config.get("RATELIMIT_DEFAULT") or "600 per minute"),
        # Retry-After is set by gateway.errors on the 429 itself (one value in
        # header and body); no X-RateLimit-* headers on every response
        RATELIMIT_HEADERS_ENABLED=False,
        RATELIMIT_STRATEGY=str(config.get("RATELIMIT_STRATEGY") or "fixed-window"),
        # a storage outage (Redis down) must not take the API down with it
        RATELIMIT_SWALLOW_ERRORS=True,
        RATELIMIT_IN_MEMORY_FALLBACK_ENABLED=True,
        RATELIMIT_KEY_PREFIX=str(config.get("RATELIMIT_KEY_PREFIX") or "darkroom-gateway"),
    )
    limiter = Limiter(key_func=client_address)
    auth_limit = str(config.get("RATELIMIT_AUTH") or "20 per minute")
    shared = limiter.shared_limit(auth_limit, scope="auth")
    for blueprint in auth_blueprints:
        shared(blueprint)
    limiter.request_filter(lambda: request.path in EXEMPT_PATHS)
    limiter.init_app(app)
    app.extensions["darkroom_limiter"] = limiter
    return limiter
