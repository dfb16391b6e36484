"""Darkroom's domain metrics, each defined here once (docs/operations.md, "Metrics").

Two kinds:

- **Events**, counted where they happen: provider calls (the router), jobs
  reaching a final state, webhook deliveries, purged objects, ledger
  verifications.
- **State**, read at each scrape (:class:`StateCollector`): a service whose
  class names ``state_metrics`` (a function ``(engine, now) -> samples``)
  has it run against its database, and every service reports the depth of
  its own queues and of their dead-letter queues (a passive declare over its
  own AMQP connection: no management API needed). Several replicas report
  the same queue; alerts take the ``max``.

The worker and event metrics are in :mod:`services.common.observability`, the
gateway's HTTP metrics in :mod:`gateway.metrics`.
"""

from __future__ import annotations

import logging
import threading
from datetime import UTC, datetime

from nameko.extensions import DependencyProvider
from prometheus_client import REGISTRY, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily

log = logging.getLogger(__name__)

# ------------------------------------------------------------------ events

PROVIDER_SECONDS = Histogram(
    "darkroom_provider_request_seconds",
    "Time of one provider call, by provider and outcome (ok, transient, permanent)",
    ["provider", "outcome"],
    buckets=(0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600),
)
PROVIDER_ERRORS = Counter(
    "darkroom_provider_errors_total",
    "Provider calls that failed, by provider and error code",
    ["provider", "code"],
)
PROVIDER_CIRCUIT_OPEN = Gauge(
    "darkroom_provider_circuit_open",
    "1 while a provider's circuit breaker is open or half-open (probing), 0 when closed",
    ["provider"],
)
JOBS_FINISHED = Counter(
    "darkroom_jobs_finished_total",
    "Generation jobs that reached a final state, by state and provider (none: never given to one)",
    ["state", "provider"],
)
WEBHOOK_DELIVERIES = Counter(
    "darkroom_webhook_deliveries_total",
    "Webhook delivery attempts, by outcome (delivered, retrying, failed: given up)",
    ["outcome"],
)
PURGED_OBJECTS = Counter(
    "darkroom_purge_objects_total",
    "Expired objects the retention purge handled, by outcome (purged, failed: left for a later batch)",
    ["outcome"],
)
LEDGER_PROBLEMS = Gauge(
    "darkroom_ledger_verification_problems",
    "Problems the last whole-ledger verification found (0: the ledger balances)",
)
LEDGER_VERIFIED_AT = Gauge(
    "darkroom_ledger_verification_timestamp_seconds",
    "When the last whole-ledger verification ran (Unix time)",
)
BREACHES_OVERDUE = Gauge(
    "darkroom_privacy_breaches_overdue",
    "Breach incidents still open (not reported) 48 hours after detection; the regulator "
    "deadline is 72 hours (docs/runbooks/breach.md)",
)

# ------------------------------------------------------------------ state, read at each scrape

#: name -> (help, label names): every gauge a :class:`StateCollector` may report.
STATE_GAUGES: dict[str, tuple[str, tuple[str, ...]]] = {
    "darkroom_jobs": (
        "Active generation jobs (queued, reserved, running) by state and provider",
        ("state", "provider")),
    "darkroom_privacy_requests": (
        "Open privacy requests by type and due (overdue, due_7d: due within 7 days, later)",
        ("type", "due")),
    "darkroom_purge_backlog_objects": (
        "Expired objects not yet purged", ()),
    "darkroom_purge_backlog_seconds": (
        "How long the oldest expired object has waited for the purge (0: none waits)", ()),
    "darkroom_queue_messages": (
        "Messages waiting in a service's queue (its RPC queue and event handler queues)",
        ("service", "queue")),
    "darkroom_dead_letters": (
        "Messages in a dead-letter queue (dlq.<queue>) of a service's event handler",
        ("service", "queue")),
}

Sample = tuple[str, dict[str, str], float]  # (gauge name, labels, value)


def queue_samples(container) -> list[Sample]:
    """The depth of the service's RPC and event queues and of its dead-letter
    queues; a queue that does not exist (yet) is left out."""
    from amqp.exceptions import NotFound
    from kombu import Connection
    from nameko.constants import AMQP_URI_CONFIG_KEY
    from nameko.events import EventHandler
    from nameko.rpc import RpcConsumer

    from services.common.messaging import dlq_name

    service = container.service_name
    queues: list[tuple[str, str]] = []
    for ext in container.extensions:
        if isinstance(ext, RpcConsumer) and getattr(ext, "queue", None) is not None:
            queues.append(("darkroom_queue_messages", ext.queue.name))
    for ext in container.entrypoints:
        if isinstance(ext, EventHandler) and getattr(ext, "queue", None) is not None:
            queues.append(("darkroom_queue_messages", ext.queue.name))
            queues.append(("darkroom_dead_letters", dlq_name(ext.queue.name)))
    samples: list[Sample] = []
    with Connection(container.config[AMQP_URI_CONFIG_KEY], connect_timeout=3) as conn:
        conn.ensure_connection(max_retries=1)
        for metric, name in dict.fromkeys(queues):
            channel = conn.channel()
            try:
                _, count, _ = channel.queue_declare(queue=name, passive=True)
            except NotFound:
                continue  # the channel is closed by the broker
            channel.close()
            samples.append((metric, {"service": service, "queue": name}, float(count)))
    return samples


def database_engine(container):
    for provider in container.dependencies:
        engine = getattr(provider, "engine", None)
        if engine is not None:
            return engine
    return None


class StateCollector:
    """The state gauges of the services running in this process (one
    container per service name: the newest started)."""

    def __init__(self):
        self.containers: dict[str, object] = {}
        self.lock = threading.Lock()

    def watch(self, container) -> None:
        with self.lock:
            self.containers[container.service_name] = container

    def unwatch(self, container) -> None:
        with self.lock:
            if self.containers.get(container.service_name) is container:
                del self.containers[container.service_name]

    def describe(self):
        return [GaugeMetricFamily(name, doc, labels=list(labels))
                for name, (doc, labels) in STATE_GAUGES.items()]

    def samples(self, container, now: datetime) -> list[Sample]:
        samples: list[Sample] = []
        sampler = getattr(container.service_cls, "state_metrics", None)
        engine = database_engine(container)
        if sampler is not None and engine is not None:
            try:
                samples.extend(sampler(engine, now))
            except Exception as exc:  # a scrape never fails: the gauge is missing instead
                log.warning("metrics: %s state unreadable: %s", container.service_name, exc)
        try:
            samples.extend(queue_samples(container))
        except Exception as exc:
            log.warning("metrics: %s queues unreadable: %s", container.service_name, exc)
        return samples

    def collect(self):
        families = {name: GaugeMetricFamily(name, doc, labels=list(labels))
                    for name, (doc, labels) in STATE_GAUGES.items()}
        with self.lock:
            containers = list(self.containers.values())
        now = datetime.now(UTC)
        for container in containers:
            for name, labels, value in self.samples(container, now):
                family = families[name]
                family.add_metric([labels[label] for label in STATE_GAUGES[name][1]], value)
        return list(families.values())


STATE = StateCollector()
REGISTRY.register(STATE)


class StateMetrics(DependencyProvider):
    """Declared by every service (:class:`services.common.service.DarkroomService`):
    while the service serves /metrics (``METRICS_PORT``), its state gauges are
    read at each scrape."""

    def setup(self):
        self.watching = bool(int(self.container.config.get("METRICS_PORT") or 0))
        if self.watching:
            STATE.watch(self.container)

    def stop(self):
        if self.watching:
            STATE.unwatch(self.container)

    def kill(self):
        self.stop()

