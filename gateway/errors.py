"""docs/api.md's error shape for everything that can go wrong in a request.

Every error leaves the gateway as ``{"error": {"code", "message", "details"}}``
with the matching HTTP status: a :class:`DomainError` (from a service over RPC
or raised here), an HTTP error raised by Flask/werkzeug/flask-limiter (404,
405, 413, 429...), or an unexpected exception (500 ``internal_error``, logged
with its traceback, never shown to the client).
"""

from __future__ import annotations

import logging
import math
import time

from flask import Flask, current_app, g, jsonify
from marshmallow import Schema, fields
from nameko.exceptions import RemoteError
from werkzeug.exceptions import HTTPException

from services.common.errors import DomainError, unrecorded

log = logging.getLogger("gateway.errors")

# HTTP status -> docs/api.md code, for errors raised by the HTTP layer itself.
HTTP_CODES = {
    400: "invalid_request",
    401: "unauthenticated",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    406: "not_acceptable",
    408: "request_timeout",
    409: "conflict",
    411: "length_required",
    413: "payload_too_large",
    414: "uri_too_long",
    415: "unsupported_media_type",
    429: "rate_limited",
    431: "request_header_fields_too_large",
    500: "internal_error",
    501: "not_implemented",
    503: "service_unavailable",
}


class ErrorBody(Schema):
    code = fields.String(required=True, metadata={"description": "machine-readable snake_case code"})
    message = fields.String(required=True)
    details = fields.Dict(required=True)


class ErrorEnvelope(Schema):
    """The body of every error response (docs/api.md "Conventions")."""

    error = fields.Nested(ErrorBody, required=True)


def error_response(status: int, code: str, message: str, details: dict | None = None,
                   headers: dict | None = None):
    response = jsonify({"error": {"code": code, "message": message, "details": details or {}}})
    response.status_code = status
    for name, value in (headers or {}).items():
        response.headers[name] = value
    return response


def _retry_after_header(details: dict, status: int) -> dict:
    value = details.get("retry_after") if isinstance(details, dict) else None
    if isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 0:
        return {"Retry-After": str(max(1, math.ceil(value)))}
    if status == 429:  # docs/api.md: every 429 says when to come back, even if the service did not
        return {"Retry-After": "1"}
    return {}


def handle_domain_error(exc: DomainError):
    if unrecorded(exc):  # nothing kept about the person: gateway.middleware logs nothing
        g.unrecorded = True
    status = exc.status if isinstance(exc.status, int) and 400 <= exc.status <= 599 else 500
    details = exc.details if isinstance(exc.details, dict) else {}
    if status >= 500:
        log.warning("domain error %s: %s", exc.code, exc.message)
    headers = _retry_after_header(details, status)
    if status == 401:
        headers["WWW-Authenticate"] = 'Bearer realm="darkroom"'
    return error_response(status, exc.code, exc.message, details, headers)


def _rate_limit_retry_after() -> int:
    limiter = current_app.extensions.get("darkroom_limiter")
    limit = getattr(limiter, "current_limit", None) if limiter is not None else None
    if limit is None:
        return 1
    try:
        return max(1, math.ceil(limit.reset_at - time.time()))
    except Exception:  # storage hiccup: a conservative answer is still an answer
        return 1


def handle_http_exception(exc: HTTPException):
    status = exc.code or 500
    code = HTTP_CODES.get(status) or (exc.name or "error").lower().replace(" ", "_")
    headers: dict[str, str] = {}
    details: dict = {}
    message = exc.description or exc.name or "error"
    if status == 405:
        allow = dict(exc.get_headers()).get("Allow")
        if allow:
            headers["Allow"] = allow
        message = "method not allowed for this path"
    elif status == 404:
        message = "no such resource"
    elif status == 413:
        limit = current_app.config.get("MAX_CONTENT_LENGTH")
        message = "request body too large"
        if limit:
            details["max_bytes"] = int(limit)
    elif status == 429:
        retry_after = _rate_limit_retry_after()
        headers["Retry-After"] = str(retry_after)
        details["retry_after"] = retry_after
        message = "too many requests, slow down"
    elif status >= 500:
        message = "internal error"
    return error_response(status, code, message, details, headers)


def handle_remote_error(exc: RemoteError):
    # A service raised something that is not a DomainError: a bug over there.
    log.error("unexpected error in a service: %s: %s", exc.exc_type, exc.value)
    return error_response(500, "internal_error", "internal error")


def handle_unexpected(exc: Exception):
    if isinstance(exc, HTTPException):  # pragma: no cover - routed above
        return handle_http_exception(exc)
    log.exception("unhandled error")
    return error_response(500, "internal_error", "internal error")


def register_error_handlers(app: Flask) -> None:
    app.register_error_handler(DomainError, handle_domain_error)
    app.register_error_handler(HTTPException, handle_http_exception)
    app.register_error_handler(RemoteError, handle_remote_error)
    app.register_error_handler(Exception, handle_unexpected)
