"""Per-request plumbing: request ids, security headers, access log, metrics, and the
access-log facts for the privacy service (:mod:`gateway.access_log`)."""

from __future__ import annotations

import logging
import re
import time
import uuid

from flask import Flask, g, request

from gateway import access_log as access_facts
from gateway import metrics
from services.common.observability import correlation_id

access_log = logging.getLogger("gateway.access")

REQUEST_ID_HEADER = "X-Request-Id"
_SANE_REQUEST_ID = re.compile(r"[A-Za-z0-9._-]{1,128}")
UNMATCHED_ROUTE = "<unmatched>"

SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
}
HSTS = "max-age=63072000; includeSubDomains"
# The web console's pages and files (gateway/console.py): its own scripts and
# styles only (no inline script, nothing from another origin), images and
# videos from the gateway (the fs backend's /v1/files/ URLs) and ``media``,
# the object store's public origin when files load from there.
CONSOLE_POLICY = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:{media}; "
                  "media-src 'self'{media}; connect-src 'self'; frame-ancestors 'none'; "
                  "base-uri 'none'; form-action 'self'; object-src 'none'")


def console_policy(media_origins: list[str]) -> str:
    """The console's Content-Security-Policy, with the origins its images load from."""
    media = "".join(f" {origin}" for origin in media_origins)
    return CONSOLE_POLICY.format(media=media)
NO_STORE_PREFIXES = ("/v1/auth/",)


def request_id_from(header: str | None) -> str:
    """The client's X-Request-Id when it is sane, else a new one."""
    if header and _SANE_REQUEST_ID.fullmatch(header):
        return header
    return uuid.uuid4().hex


def route_template() -> str:
    rule = request.url_rule
    return rule.rule if rule is not None else UNMATCHED_ROUTE


def init_app(app: Flask, hsts: bool) -> None:
    state = app.extensions.get("darkroom")
    facts = access_facts.from_config(state.config) if state is not None else None
    app.extensions["darkroom_access_log"] = facts

    @app.before_request
    def start_request():
        g.started = time.perf_counter()
        g.request_id = request_id_from(request.headers.get(REQUEST_ID_HEADER))
        g.correlation_token = correlation_id.set(g.request_id)

    @app.after_request
    def finish_response(response):
        request_id = g.get("request_id") or request_id_from(None)
        response.headers[REQUEST_ID_HEADER] = request_id
        for name, value in SECURITY_HEADERS.items():
            response.headers.setdefault(name, value)
        if hsts:
            response.headers["Strict-Transport-Security"] = HSTS
        if (
            g.get("principal") is not None
            or request.path.startswith(NO_STORE_PREFIXES)
            or "Authorization" in request.headers
            or "X-API-Key" in request.headers
        ):
            response.headers["Cache-Control"] = "no-store"
            response.headers["Pragma"] = "no-cache"

        duration = time.perf_counter() - g.get("started", time.perf_counter())
        route = route_template()
        metrics.observe(request.method, route, response.status_code, duration)
        principal = g.get("principal")
        if g.get("unrecorded"):  # services.common.errors.UNRECORDED_CODES: counted, never logged
            return response
        access_log.info(
            "request",
            extra={
                "method": request.method,
                "route": route,
                "status": response.status_code,
                "duration_ms": round(duration * 1000, 2),
                "user_id": principal.user_id if principal is not None else None,
                "request_id": request_id,
            },
        )
        if facts is not None:  # a put on a bounded queue: never blocks the response
            facts.submit(access_facts.fact(
                request.method, route, response.status_code,
                principal.user_id if principal is not None else None, request.remote_addr,
            ), request_id)
        return response

    @app.teardown_request
    def end_request(exc=None):
        token = g.pop("correlation_token", None)
        if token is not None:
            try:
                correlation_id.reset(token)
            except ValueError:  # set in another context: just clear it
                correlation_id.set(None)
