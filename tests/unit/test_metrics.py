"""The event metrics of services/common/metrics.py, scraped (the Prometheus
text exposition, parsed) after causing each event: provider calls and circuit
breakers through the router, webhook delivery outcomes, and the state gauges
served by a service's /metrics app even when part of the state is unreadable.
The scrape-time gauges against real services: tests/integration/test_metrics.py.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from types import SimpleNamespace

import pytest
from prometheus_client import REGISTRY, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from services.common import metrics
from services.common.errors import DomainError
from services.common.health import health_app
from services.generation import deliveries, webhooks
from services.generation.models import WebhookDelivery
from services.generation.providers.base import (
    ProviderOutput,
    ProviderRequest,
    ProviderResult,
    TransientProviderError,
)
from services.generation.providers.router import BreakerPolicy, RetryPolicy, Router
from tests.unit.databases import migrated_database

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


def parse(text: str) -> dict[tuple[str, tuple], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def scrape() -> dict[tuple[str, tuple], float]:
    return parse(generate_latest(REGISTRY).decode())


def value(samples, name: str, **labels) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


class Flaky:
    """Fails ``failures`` times with a transient error, then succeeds."""

    def __init__(self, name: str, failures: int):
        self.name, self.failures = name, failures
        self.job_types = frozenset({"text-to-image"})

    def generate(self, request, progress=None):
        if self.failures:
            self.failures -= 1
            raise TransientProviderError("provider_timeout")
        return ProviderResult((ProviderOutput(b"png", "image/png", 1, 1),))


def test_provider_calls_errors_and_circuit_state_are_scraped():
    name = f"flaky-{uuid.uuid4().hex[:6]}"
    clock = SimpleNamespace(now=0.0)
    provider = Flaky(name, failures=2)
    router = Router({name: provider}, {"text-to-image": [name]},
                    RetryPolicy(1), BreakerPolicy(failures=2, cooldown_s=30),
                    clock=lambda: clock.now, sleep=lambda s: None)
    request = ProviderRequest("text-to-image", "a kite", seed=1)
    assert value(scrape(), "darkroom_provider_circuit_open", provider=name) == 0

    for _ in range(2):  # two transient failures open the breaker
        try:
            router.run(request)
        except TransientProviderError:
            pass
    samples = scrape()
    assert value(samples, "darkroom_provider_errors_total", provider=name,
                 code="provider_timeout") == 2
    assert value(samples, "darkroom_provider_request_seconds_count", provider=name,
                 outcome="transient") == 2
    assert value(samples, "darkroom_provider_circuit_open", provider=name) == 1

    clock.now += 31  # the cooldown passed: the probe succeeds and closes it
    router.run(request)
    samples = scrape()
    assert value(samples, "darkroom_provider_circuit_open", provider=name) == 0
    assert value(samples, "darkroom_provider_request_seconds_count", provider=name,
                 outcome="ok") == 1


def test_webhook_delivery_outcomes_are_counted(tmp_path):
    before = scrape()
    with migrated_database("generation", tmp_path) as db:
        def row():
            url = "https://hooks.example.com/x"
            delivery = WebhookDelivery(
                id=uuid.uuid4(), job_id=uuid.uuid4(), user_id=uuid.uuid4(), attempt=1,
                job_status="succeeded", url=url, receiver=webhooks.receiver_of(url), body="{}",
                status=deliveries.PENDING, tries=0, next_attempt_at=NOW, created_at=NOW)
            db.add(delivery)
            db.commit()
            return delivery

        deliveries.record(db, row(), webhooks.Delivery(True, False, 204), NOW, 8)
        deliveries.record(db, row(), webhooks.Delivery(False, True, 503, "receiver_error"), NOW, 8)
        deliveries.record(db, row(), webhooks.Delivery(False, False, 410, "receiver_refused"),
                          NOW, 8)
    after = scrape()
    for outcome in ("delivered", "retrying", "failed"):
        assert (value(after, "darkroom_webhook_deliveries_total", outcome=outcome)
                == value(before, "darkroom_webhook_deliveries_total", outcome=outcome) + 1)


def test_jobs_reaching_a_final_state_are_counted(tmp_path):
    """A cancelled job (never given to a provider) counts once under
    ``cancelled``/``none``; a failed cancel counts nothing."""
    from services.generation import jobs
    from services.generation.settings import GenerationSettings
    from tests.unit.generation.test_jobs import Events, submit

    settings = GenerationSettings(max_active_jobs_per_user=2, lease_seconds=60)
    before = value(scrape(), "darkroom_jobs_finished_total", state="cancelled", provider="none")
    with migrated_database("generation", tmp_path) as db:
        user, events = uuid.uuid4(), Events()
        job = submit(db, settings, user, events)
        jobs.cancel(db, settings, user, job.id, NOW, events)
        db.commit()
        with pytest.raises(DomainError):  # already cancelled: not counted again
            jobs.cancel(db, settings, user, job.id, NOW, events)
    assert value(scrape(), "darkroom_jobs_finished_total", state="cancelled",
                 provider="none") == before + 1


def test_a_services_metrics_app_serves_its_state_and_survives_what_it_cannot_read():
    """The state sampler's gauges appear on /metrics; the queues (no broker
    at this address) are left out instead of failing the scrape."""

    class Service:
        @staticmethod
        def state_metrics(engine, now):
            assert engine == "the engine"
            return [("darkroom_purge_backlog_objects", {}, 7.0)]

    container = SimpleNamespace(
        service_name=f"svc-{uuid.uuid4().hex[:6]}", service_cls=Service,
        dependencies=[SimpleNamespace(engine="the engine")], extensions=[], entrypoints=[],
        config={"AMQP_URI": "amqp://guest:guest@127.0.0.1:1/"})
    metrics.STATE.watch(container)
    try:
        app = health_app(lambda: {})
        status = []
        body = b"".join(app({"PATH_INFO": "/metrics", "REQUEST_METHOD": "GET"},
                            lambda s, headers: status.append(s)))
    finally:
        metrics.STATE.unwatch(container)
    assert status == ["200 OK"]
    samples = parse(body.decode())
    assert value(samples, "darkroom_purge_backlog_objects") == 7
    assert not [k for k in samples if k[0] == "darkroom_queue_messages"]
    assert container.service_name not in metrics.STATE.containers
