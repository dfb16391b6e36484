"""The gateway's Flask application factory.

The gateway is thin: HTTP, request validation, authentication, rate limits and
response shaping in front of the services' RPC. It is a plain (non-eventlet)
process under gunicorn gthread workers: never monkey-patch it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any

import flask_smorest
from flask import Flask
from werkzeug.middleware.proxy_fix import ProxyFix

from gateway import console, docs, errors, limits, middleware, readcache
from gateway.api import BLUEPRINTS
from gateway.api.accounts import auth_blp
from gateway.api.billing import DEFAULT_WEBHOOK_MAX_BYTES
from gateway.api.common import SchemaExtras
from gateway.api.health import init_internal_port
from gateway.api.oidc import oidc_blp
from gateway.auth import AuthCache
from gateway.rpc import RpcPool
from gateway.transfer import key_ring
from services.common.config import config_path, load_config
from services.common.secrets import refuse_insecure_config
from services.storage.settings import DEV_ENCRYPTION_KEYS

DEFAULTS: dict[str, Any] = {
    "AMQP_URI": "amqp://guest:guest@127.0.0.1:5672/",
    "LOG_LEVEL": "INFO",
    "RPC_TIMEOUT_SECONDS": 10,
    "RPC_POOL_SIZE": 8,
    "READY_TIMEOUT_SECONDS": 2,
    "READY_CACHE_SECONDS": 1,
    "INTERNAL_PORT": None,
    "AUTH_CACHE_SECONDS": 15,
    "MAX_CONTENT_LENGTH": 1024 * 1024,
    "RATELIMIT_STORAGE_URI": "memory://",
    "RATELIMIT_DEFAULT": "600 per minute",
    "RATELIMIT_AUTH": "20 per minute",
    "RATELIMIT_ENABLED": True,
    "TRUSTED_PROXY_COUNT": 0,
    "HSTS_ENABLED": True,
    "READY_SERVICES": [],
    "BILLING_WEBHOOK_MAX_BYTES": DEFAULT_WEBHOOK_MAX_BYTES,
    "READ_CACHE_ENABLED": True,
}


@dataclass
class GatewayState:
    """What the request handlers share, at ``app.extensions["darkroom"]``."""

    config: dict[str, Any]
    rpc: Any  # RpcPool, or a fake with the same ``get()`` in unit tests
    auth_cache: AuthCache
    read_cache: readcache.ReadCache = field(default_factory=lambda: readcache.ReadCache(0, None))


class Api(flask_smorest.Api):
    ERROR_SCHEMA = errors.ErrorEnvelope

    def handle_http_exception(self, error):
        return errors.handle_http_exception(error)

    def name_operations(self) -> None:
        """Give every operation without one an ``operationId``: its method and
        its path's words in camel case (``GET /v1/generations/{job_id}`` is
        ``getGenerationsByJobId``), unique because method and path are."""
        for path, operations in self.spec._paths.items():
            for method, operation in operations.items():
                if method != "parameters" and "operationId" not in operation:
                    operation["operationId"] = operation_id(method, path)

    def document_errors(self) -> None:
        """Add to every operation the error answers any request to it can get,
        each with the error body (``default`` covers the rest): 401 when it
        takes a credential, 404 when its path names a resource, 413 and 415
        when it takes a body (JSON: 415 for another type), and for the API's
        paths 429 (rate limits) and 503 (a service that does not answer)."""
        for path, operations in self.spec._paths.items():
            for method, operation in operations.items():
                if method == "parameters":
                    continue
                statuses = []
                if operation.get("security"):
                    statuses.append(HTTPStatus.UNAUTHORIZED)
                if "{" in path:
                    statuses.append(HTTPStatus.NOT_FOUND)
                body = operation.get("requestBody")
                if body:
                    statuses.append(HTTPStatus.REQUEST_ENTITY_TOO_LARGE)
                    if "application/json" in body.get("content", {}):
                        statuses.append(HTTPStatus.UNSUPPORTED_MEDIA_TYPE)
                if path.startswith("/v1/"):
                    statuses += [HTTPStatus.TOO_MANY_REQUESTS, HTTPStatus.SERVICE_UNAVAILABLE]
                responses = operation.setdefault("responses", {})
                for code, response in responses.items():  # an alt_response with a description only
                    if code.isdigit() and int(code) >= 400 and "$ref" not in response \
                            and "content" not in response:
                        response["content"] = {"application/json": {"schema": self.spec.components
                                               .get_ref("schema", "ErrorEnvelope")}}
                for status in statuses:
                    if str(status.value) not in responses:
                        responses[str(status.value)] = self.spec.components.get_ref("response", status.name)


def operation_id(method: str, path: str) -> str:
    words = [method.lower()]
    segments = path.strip("/").split("/")
    for segment in segments[1:] if re.fullmatch(r"v[0-9]+", segments[0]) else segments:
        parameter = segment.startswith("{")
        parts = [p for p in re.split(r"[^A-Za-z0-9]+", segment) if p]
        words += (["by"] if parameter else []) + parts
    return words[0] + "".join(word[:1].upper() + word[1:] for word in words[1:])


def _bool(value) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in ("1", "true", "yes", "on")
    return bool(value)


def create_app(config: dict | None = None, rpc=None) -> Flask:
    """Build the gateway. ``config`` defaults to deploy/config/gateway.yaml
    (with ``${VAR:default}`` filled from the environment); ``rpc`` replaces
    the RPC pool (unit tests pass a fake). Nothing connects to the broker here.
    Logging is the process's business (gateway.wsgi configures JSON logs)."""
    if config is None:
        config = load_config(config_path("gateway"))
    config = {**DEFAULTS, **config}
    refuse_insecure_config(config, "gateway", config_path("gateway"))
    files = config.get("FILES") or {}
    if files.get("ROOT") and files.get("URL_SECRET"):  # an empty or malformed key ring stops it
        key_ring(files.get("ENCRYPTION_KEYS", DEV_ENCRYPTION_KEYS))

    app = Flask("gateway")
    app.json.sort_keys = False
    app.config.update(
        MAX_CONTENT_LENGTH=int(config["MAX_CONTENT_LENGTH"]),
        API_TITLE="Darkroom API",
        API_VERSION="v1",
        OPENAPI_VERSION="3.1.0",
        OPENAPI_URL_PREFIX="/v1",
        OPENAPI_JSON_PATH="openapi.json",
        API_SPEC_OPTIONS={
            "info": {"description": "The HTTP API of Darkroom (see docs/api.md). The job "
                                    "webhooks are under `webhooks`; this document is browsable "
                                    "at /v1/docs."},
        },
    )

    hops = int(config.get("TRUSTED_PROXY_COUNT") or 0)
    if hops > 0:
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=hops, x_proto=hops, x_host=hops)
    # outermost: the listener is told apart before any forwarded header is applied
    init_internal_port(app, int(config["INTERNAL_PORT"]) if config.get("INTERNAL_PORT") else None)

    real_rpc = rpc is None
    if rpc is None:
        rpc = RpcPool(
            str(config["AMQP_URI"]),
            size=int(config["RPC_POOL_SIZE"]),
            timeout=float(config["RPC_TIMEOUT_SECONDS"]),
        )
    app.extensions["darkroom"] = GatewayState(
        config=config,
        rpc=rpc,
        auth_cache=AuthCache(float(config["AUTH_CACHE_SECONDS"])),
        # off with a fake RPC pool (unit tests): its consumer needs the real broker
        read_cache=readcache.from_config(config, enabled=real_rpc),
    )
    readcache.init_app(app)

    # request ids first: every later hook (rate limits included) can use them
    middleware.init_app(app, hsts=_bool(config["HSTS_ENABLED"]))
    config["RATELIMIT_ENABLED"] = _bool(config["RATELIMIT_ENABLED"])
    limits.init_app(app, config, auth_blp, oidc_blp)

    api = Api(app, spec_kwargs={"extra_plugins": [SchemaExtras()]})
    api.spec.components.security_scheme(
        "bearerAuth", {"type": "http", "scheme": "bearer",
                       "description": "a session token (`drs_…`) from POST /v1/auth/login, or "
                                      "an API key (`drk_…`), as OpenAI-style clients send it. "
                                      "With X-API-Key too, both must name the same account "
                                      "(401 otherwise)"})
    api.spec.components.security_scheme(
        "apiKeyAuth", {"type": "apiKey", "in": "header", "name": "X-API-Key",
                       "description": "an API key (`drk_…`); the same key may instead be sent "
                                      "as `Authorization: Bearer`. Administrators hold no keys"})
    for blueprint in BLUEPRINTS:
        api.register_blueprint(blueprint)
    api.document_errors()
    docs.document_webhooks(api.spec)
    api.name_operations()
    docs.init_app(app)
    errors.register_error_handlers(app)
    console.init_app(app, config)  # last: / and the router's 404s for console addresses
    return app
