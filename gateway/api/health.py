"""Health and metadata (no auth): /healthz, /readyz, /metrics."""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor

from flask import current_app
from marshmallow import Schema, fields

from gateway import metrics
from gateway.api.common import Blueprint

log = logging.getLogger("gateway.health")

health_blp = Blueprint("health", __name__, description="Liveness, readiness and metrics")


class Health(Schema):
    status = fields.String(required=True, metadata={"description": "ok | unavailable"})
    checks = fields.Dict(keys=fields.String(), values=fields.String(),
                         metadata={"description": "per service: ok or what failed"})


@health_blp.route("/healthz", methods=["GET"])
@health_blp.response(200, Health)
def healthz():
    """Liveness: the gateway process answers"""
    return {"status": "ok"}


@health_blp.route("/readyz", methods=["GET"])
@health_blp.response(200, Health)
@health_blp.alt_response(503, schema=Health, description="a service or the broker is unreachable")
def readyz():
    """Readiness: the broker and each service answer a ping"""
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
