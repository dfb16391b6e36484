"""Structured logs, correlation ids, Prometheus metrics and health endpoints.

- Logs are JSON lines on stderr with ``service`` and ``correlation_id`` fields.
  The gateway starts a correlation id per HTTP request (``X-Request-Id``) and
  passes it as nameko context data; nameko then carries it through every RPC
  call and event as the ``nameko.correlation_id`` header.
- :class:`Observability` is the dependency every service declares: it sets the
  correlation id of each worker, counts and times workers, and serves
  ``/healthz``, ``/readyz`` (database and broker reachable) and ``/metrics`` on
  ``METRICS_PORT`` (0 turns the endpoint off).
"""

from __future__ import annotations

import contextvars
import logging
import os
import sys
import time
import uuid
from weakref import WeakKeyDictionary

from nameko.constants import AMQP_URI_CONFIG_KEY
from nameko.extensions import DependencyProvider
from prometheus_client import Counter, Histogram
from pythonjsonlogger.json import JsonFormatter as _JsonFormatter

from services.common.errors import unrecorded

correlation_id: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "correlation_id", default=None
)
CORRELATION_KEY = "correlation_id"

WORKER_SECONDS = Histogram(
    "darkroom_worker_seconds",
    "Time spent in a service worker, by entrypoint and outcome",
    ["service", "entrypoint", "outcome"],
)
EVENTS_RETRIED = Counter(
    "darkroom_events_retried_total", "Event deliveries scheduled for retry", ["service", "event"]
)
EVENTS_DEAD_LETTERED = Counter(
    "darkroom_events_dead_lettered_total", "Events sent to a dead-letter queue", ["service", "event"]
)


class CorrelationFilter(logging.Filter):
    """Adds the service and correlation id to each record; drops a record that
    carries a refusal nothing may be kept of (``errors.UNRECORDED_CODES``: nameko
    logs an expected error with its traceback)."""

    def __init__(self, service: str = ""):
        super().__init__()
        self.service = service

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and unrecorded(record.exc_info[1]):
            return False
        if any(unrecorded(arg) for arg in (record.args if isinstance(record.args, tuple) else ())):
            return False
        record.correlation_id = correlation_id.get()
        record.service = self.service
        return True


class JsonFormatter(_JsonFormatter):
    def __init__(self, *args, **kwargs):
        kwargs.setdefault("timestamp", True)
        kwargs.setdefault(
            "fmt", "%(levelname)s %(name)s %(message)s %(service)s %(correlation_id)s"
        )
        kwargs.setdefault("rename_fields", {"levelname": "level", "name": "logger"})
        super().__init__(*args, **kwargs)


def configure_logging(service: str, level: str | None = None) -> None:
    """JSON logs on stderr for this process (idempotent)."""
    root = logging.getLogger()
    for handler in list(root.handlers):  # e.g. the plain handler `nameko run` installs
        root.removeHandler(handler)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    handler.addFilter(CorrelationFilter(service))
    root.addHandler(handler)
    root.setLevel((level or os.environ.get("LOG_LEVEL") or "INFO").upper())
    for noisy in ("amqp", "kombu", "nameko.containers", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def new_correlation_id() -> str:
    return uuid.uuid4().hex




class Observability(DependencyProvider):
    """Correlation ids, worker metrics, JSON logs and the health endpoints."""

    def __init__(self):
        self.started: WeakKeyDictionary = WeakKeyDictionary()
        self.server = None

    def setup(self):
        config = self.container.config
        if not config.get("LOGGING"):
            configure_logging(self.container.service_name, config.get("LOG_LEVEL"))
        port = int(config.get("METRICS_PORT") or 0)
        if port:
            from services.common.health import serve

            self.server = serve(self.container, port, self._ready)

    def stop(self):
        if self.server is not None:
            self.server.kill()
            self.server = None

    def _ready(self) -> dict[str, str]:
        """Each check: ``ok`` or the error that failed it."""
        from kombu import Connection
        from nameko.messaging import QueueConsumer
        from sqlalchemy import text

        checks: dict[str, str] = {}
        # Ready only once every consumer (RPC and events) listens: before that
        # an RPC call would fail with UnknownService.
        consumers = [e for e in self.container.extensions if isinstance(e, QueueConsumer)]
        listening = self.container.started and all(c._consumers_ready.ready() for c in consumers)
        checks["consumers"] = "ok" if listening else "starting"
        for provider in self.container.dependencies:
            engine = getattr(provider, "engine", None)
            if engine is not None:
                try:
                    with engine.connect() as conn:
                        conn.execute(text("SELECT 1"))
                    checks["database"] = "ok"
                except Exception as exc:
                    checks["database"] = f"{type(exc).__name__}: {exc}"[:300]
        try:
            with Connection(self.container.config[AMQP_URI_CONFIG_KEY], connect_timeout=3) as conn:
                conn.ensure_connection(max_retries=1)
            checks["broker"] = "ok"
        except Exception as exc:
            checks["broker"] = f"{type(exc).__name__}: {exc}"[:300]
        return checks

    def worker_setup(self, worker_ctx):
        cid = worker_ctx.data.get(CORRELATION_KEY) or new_correlation_id()
        worker_ctx.data[CORRELATION_KEY] = cid
        correlation_id.set(cid)
        self.started[worker_ctx] = time.perf_counter()

    def worker_result(self, worker_ctx, result=None, exc_info=None):
        started = self.started.pop(worker_ctx, None)
        if started is None:
            return
        if exc_info is None:
            outcome = "ok"
        elif isinstance(exc_info[1], worker_ctx.entrypoint.expected_exceptions or ()):
            outcome = "expected_error"
        else:
            outcome = "error"
        WORKER_SECONDS.labels(
            self.container.service_name, worker_ctx.entrypoint.method_name, outcome
        ).observe(time.perf_counter() - started)

    def worker_teardown(self, worker_ctx):
        correlation_id.set(None)

