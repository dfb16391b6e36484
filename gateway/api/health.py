"""Health and metadata (no auth): /healthz, /readyz, /metrics.

``/readyz`` pings every service in ``READY_SERVICES``; its answer is kept
``READY_CACHE_SECONDS`` (1) per process, and one round of pings serves every
request that arrives while it runs, so a burst of probes costs at most about
one round of pings per second.

With ``INTERNAL_PORT`` set (``GATEWAY_INTERNAL_PORT``; gunicorn then also
listens on ``GATEWAY_INTERNAL_HOST:GATEWAY_INTERNAL_PORT``), ``/metrics`` and
``/readyz`` answer only on that listener and 404 ``not_found`` on the public
one, and the internal listener serves nothing but the three health paths.
Which listener a request came in on is read from the socket it was accepted
on (before any X-Forwarded-* header is applied), so no header can change it.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from flask import Flask, current_app, request
from marshmallow import Schema, fields
from werkzeug.exceptions import NotFound

from gateway import metrics
from gateway.api.common import Blueprint
from services.common.version import darkroom_version

log = logging.getLogger("gateway.health")

health_blp = Blueprint("health", __name__, description="Liveness, readiness and metrics")

HEALTH_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})
INTERNAL_ONLY_PATHS = frozenset({"/readyz", "/metrics"})
LISTENER_KEY = "darkroom.internal_listener"  # WSGI environ: True on the internal port
READY_EXTENSION = "darkroom_ready_cache"
DEFAULT_READY_CACHE_SECONDS = 1.0


# ------------------------------------------------------------ the internal listener


def local_port(environ: dict) -> int | None:
    """The port the request's connection was accepted on (gunicorn's socket),
    else the WSGI ``SERVER_PORT`` (other servers, the test client)."""
    sock = environ.get("gunicorn.socket")
    if sock is not None:
        try:
            address = sock.getsockname()
            return int(address[1]) if isinstance(address, tuple) else None
        except (OSError, ValueError, IndexError):
            return None
    try:
        return int(environ.get("SERVER_PORT") or 0)
    except ValueError:
        return None


class ListenerMark:
    """WSGI middleware (outermost, before ProxyFix rewrites ``SERVER_PORT``):
    marks each request with whether it came in on the internal port."""

    def __init__(self, app, internal_port: int):
        self.app, self.internal_port = app, internal_port

    def __call__(self, environ, start_response):
        environ[LISTENER_KEY] = local_port(environ) == self.internal_port
        return self.app(environ, start_response)


def init_internal_port(app: Flask, internal_port: int | None) -> None:
    """Serve /metrics and /readyz on ``internal_port`` only (no-op when None)."""
    if not internal_port:
        return
    app.wsgi_app = ListenerMark(app.wsgi_app, int(internal_port))

    @app.before_request
    def _split_listeners():
        internal = bool(request.environ.get(LISTENER_KEY))
        if internal and request.path not in HEALTH_PATHS:
            raise NotFound()
        if not internal and request.path in INTERNAL_ONLY_PATHS:
            raise NotFound()


# ------------------------------------------------------------ readiness cache


class ReadyCache:
    """The last /readyz answer, kept ``seconds``; one computation at a time
    (callers that arrive meanwhile wait for it and share its answer)."""

    def __init__(self, seconds: float, clock: Callable[[], float] = time.monotonic):
        self.seconds, self.clock = seconds, clock
        self._lock = threading.Lock()
        self._answer: tuple[dict, int] | None = None
        self._at = -math.inf

    def get(self, compute: Callable[[], tuple[dict, int]]) -> tuple[dict, int]:
        with self._lock:
            if self._answer is None or self.clock() - self._at >= self.seconds:
                self._answer = compute()
                self._at = self.clock()
            return self._answer


@health_blp.record_once
def _ready_cache(state) -> None:
    config = state.app.extensions["darkroom"].config
    value = config.get("READY_CACHE_SECONDS")
    seconds = DEFAULT_READY_CACHE_SECONDS if value is None or value == "" else float(value)
    state.app.extensions[READY_EXTENSION] = ReadyCache(seconds)


class Health(Schema):
    status = fields.String(required=True, metadata={"description": "ok | unavailable"})
    checks = fields.Dict(keys=fields.String(), values=fields.String(),
                         metadata={"description": "per service: ok or what failed"})
    version = fields.String(metadata={"description": "the Darkroom version (/healthz)"})


@health_blp.route("/healthz", methods=["GET"])
@health_blp.response(200, Health)
def healthz():
    """Liveness: the gateway process answers, with the Darkroom version"""
    return {"status": "ok", "version": darkroom_version()}


@health_blp.route("/readyz", methods=["GET"])
@health_blp.response(200, Health)
@health_blp.alt_response(503, schema=Health, description="a service or the broker is unreachable")
def readyz():
    """Readiness: the broker and each service answer a ping (answer cached a second)"""
    answer, status = current_app.extensions[READY_EXTENSION].get(check_services)
    return answer, status


def check_services() -> tuple[dict, int]:
    """One round of pings, in parallel."""
    state = current_app.extensions["darkroom"]
    timeout = float(state.config.get("READY_TIMEOUT_SECONDS") or 2)
    services = list(state.config.get("READY_SERVICES") or [])
    checks: dict[str, str] = {}
    if services:
        # in parallel: the answer takes one timeout at most, not one per service
        with ThreadPoolExecutor(max_workers=len(services)) as executor:
            answers = executor.map(lambda svc: ping(state.rpc, svc, timeout), services)
            checks = dict(zip(services, answers, strict=True))
    ok = all(value == "ok" for value in checks.values())
    return {"status": "ok" if ok else "unavailable", "checks": checks}, (200 if ok else 503)


def ping(pool, service: str, timeout: float) -> str:
    try:
        with pool.get(timeout=timeout) as proxy:
            reply = getattr(proxy, service).ping()
        if isinstance(reply, dict) and reply.get("ok"):
            return "ok"
        return f"unexpected reply: {reply!r}"[:200]
    except Exception as exc:  # the check reports what failed; it never raises
        log.info("readiness: %s is not ready: %s", service, exc)
        return getattr(exc, "code", None) or type(exc).__name__


@health_blp.route("/metrics", methods=["GET"])
@health_blp.doc(responses={"200": {"description": "Prometheus text exposition",
                                   "content": {"text/plain": {"schema": {"type": "string"}}}}})
def prometheus_metrics():
    """Prometheus metrics of this gateway (all workers in multiprocess mode)"""
    return metrics.exposition()
