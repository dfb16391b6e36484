"""The domain metrics of docs/operations.md, scraped over HTTP from the services'
metrics ports after causing what they measure. The services run through their
real entrypoints (`nameko run`, the Procfile's lines) on RabbitMQ and
PostgreSQL; the states are made by writing rows the way the services would
(an expired object, an overdue privacy request, jobs, a broken account), and
by publishing a dead letter into a handler's real ``dlq.`` queue.
"""

from __future__ import annotations

import time
import uuid
from datetime import timedelta
from types import SimpleNamespace

import pytest
import requests
from kombu import Connection
from nameko.standalone.rpc import ClusterRpcProxy
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import delete
from sqlalchemy.orm import Session

from services.billing.models import Account
from services.common.db import make_engine
from services.common.ids import new_id, utcnow
from services.common.messaging import DLQ_PREFIX
from services.generation.models import Job
from services.privacy.models import PrivacyRequest
from services.storage.models import StoredObject
from tests.conftest import base_env, free_port, wait_for

pytestmark = pytest.mark.integration

SERVICES = ("storage", "privacy", "billing", "generation")


@pytest.fixture(scope="module")
def stack(make_vhost, make_database, start_process, tmp_path_factory):
    amqp_uri, _ = make_vhost("metrics")
    ports = {name: free_port() for name in SERVICES}
    urls = {name: make_database(f"metrics_{name}") for name in SERVICES}
    env = base_env(
        AMQP_URI=amqp_uri, OUTBOX_RELAY_INTERVAL_SECONDS=1,
        STORAGE_BACKEND="fs", STORAGE_FS_ROOT=str(tmp_path_factory.mktemp("metrics-objects")),
        STORAGE_URL_SECRET="metrics-url-secret", PUBLIC_BASE_URL="http://gateway.test:8000",
        **{f"{name.upper()}_DATABASE_URL": url for name, url in urls.items()},
        **{f"{name.upper()}_METRICS_PORT": port for name, port in ports.items()},
    )
    processes = {name: start_process(name, env) for name in SERVICES}
    for name, port in ports.items():
        processes[name].wait_ready(f"http://127.0.0.1:{port}/readyz")
    engines = {name: make_engine(url) for name, url in urls.items()}
    with ClusterRpcProxy({"AMQP_URI": amqp_uri}, timeout=30) as rpc:
        yield SimpleNamespace(rpc=rpc, ports=ports, engines=engines, amqp_uri=amqp_uri)
    for engine in engines.values():
        engine.dispose()


def scrape(stack, service: str) -> dict[tuple[str, tuple], float]:
    """GET /metrics of ``service``: (sample name, sorted labels) → value."""
    answer = requests.get(f"http://127.0.0.1:{stack.ports[service]}/metrics", timeout=10)
    assert answer.status_code == 200
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(answer.text) for s in family.samples}


def value(samples, name: str, **labels) -> float | None:
    return samples.get((name, tuple(sorted((k, str(v)) for k, v in labels.items()))))


def test_purge_backlog_and_progress(stack):
    """An object expired an hour ago shows in the backlog; the purge empties
    it and counts the object purged."""
    before = scrape(stack, "storage")
    assert value(before, "darkroom_purge_backlog_objects") == 0
    assert value(before, "darkroom_purge_backlog_seconds") == 0
    purged_before = value(before, "darkroom_purge_objects_total", outcome="purged") or 0
    now = utcnow()
    oid, owner = new_id(), new_id()
    with Session(stack.engines["storage"]) as db:
        db.add(StoredObject(
            id=oid, owner_id=owner, kind="output", status="committed", content_type="image/png",
            size=1, sha256="0" * 64, key=f"objects/{owner}/{oid}", created_at=now,
            committed_at=now, expires_at=now - timedelta(hours=1)))
        db.commit()
    during = scrape(stack, "storage")
    assert value(during, "darkroom_purge_backlog_objects") == 1
    assert 3600 <= value(during, "darkroom_purge_backlog_seconds") < 3700

    stack.rpc.storage.purge_expired({})
    after = scrape(stack, "storage")
    assert value(after, "darkroom_purge_backlog_objects") == 0
    assert value(after, "darkroom_purge_objects_total", outcome="purged") == purged_before + 1


def test_dead_letters_and_queue_depths(stack):
    """A message in a handler's dead-letter queue is counted under that queue;
    the service's RPC queue is reported too."""
    before = scrape(stack, "storage")
    dlqs = {dict(labels)["queue"]: v for (name, labels), v in before.items()
            if name == "darkroom_dead_letters"}
    assert dlqs and all(q.startswith(DLQ_PREFIX) for q in dlqs)
    assert value(before, "darkroom_queue_messages", service="storage", queue="rpc-storage") == 0
    queue = sorted(dlqs)[0]
    with Connection(stack.amqp_uri) as conn:
        producer = conn.Producer()
        producer.publish({"test": "dead letter"}, exchange="", routing_key=queue, serializer="json")
    wait_for(lambda: value(scrape(stack, "storage"), "darkroom_dead_letters",
                           service="storage", queue=queue) == dlqs[queue] + 1,
             10, 0.2, "the dead letter counted")


def test_privacy_requests_due_and_overdue(stack):
    """Open requests are counted by how soon they are due; a completed one is not."""
    now = utcnow()
    rows = [("erasure", "pending", now - timedelta(days=1)),        # overdue
            ("export", "failed", now + timedelta(days=3)),          # due within 7 days
            ("export", "completed", now - timedelta(days=2))]       # closed: not counted
    with Session(stack.engines["privacy"]) as db:
        for kind, status, due_at in rows:
            db.add(PrivacyRequest(
                id=new_id(), user_id=uuid.uuid4(), type=kind, status=status,
                open_type=kind if status != "completed" else None, phase=0,
                created_at=now - timedelta(days=40), due_at=due_at, updated_at=now,
                starts_at=now + timedelta(days=30) if kind == "erasure" else None,
                assembly_attempts=99))
        db.commit()
    samples = scrape(stack, "privacy")
    assert value(samples, "darkroom_privacy_requests", type="erasure", due="overdue") == 1
    assert value(samples, "darkroom_privacy_requests", type="export", due="due_7d") == 1
    assert value(samples, "darkroom_privacy_requests", type="export", due="overdue") == 0
    assert value(samples, "darkroom_privacy_requests", type="export", due="later") == 0


def test_ledger_verification_result(stack):
    """The whole-ledger verification sets the problems gauge and its time; an
    account whose balance no entry explains makes it non-zero."""
    before = scrape(stack, "billing")  # no verification yet: never verified, nothing found
    assert value(before, "darkroom_ledger_verification_timestamp_seconds") == 0
    assert value(before, "darkroom_ledger_verification_problems") == 0
    started = time.time()
    assert stack.rpc.billing.verify_ledger()["problems"] == []
    samples = scrape(stack, "billing")
    assert value(samples, "darkroom_ledger_verification_problems") == 0
    assert value(samples, "darkroom_ledger_verification_timestamp_seconds") >= int(started)

    now = utcnow()
    with Session(stack.engines["billing"]) as db:
        db.add(Account(user_id=uuid.uuid4(), plan="free", available=5, held=0, entry_seq=0,
                       created_at=now, updated_at=now))
        db.commit()
    problems = stack.rpc.billing.verify_ledger()["problems"]
    assert problems
    assert value(scrape(stack, "billing"),
                 "darkroom_ledger_verification_problems") == len(problems)

    # A walk page by page (darkroom-ops billing verify) sets them at its last
    # page, with the problems of every page: not before.
    with Session(stack.engines["billing"]) as db:
        db.execute(delete(Account).where(Account.available == 5, Account.entry_seq == 0))
        db.add_all(Account(user_id=uuid.uuid4(), plan="free", available=0, held=0, entry_seq=0,
                           created_at=now, updated_at=now) for _ in range(2))
        db.commit()
    page = stack.rpc.billing.verify_ledger(None, 1)
    assert page["accounts_total"] >= 2 and page["next_cursor"]
    while page["next_cursor"]:
        assert value(scrape(stack, "billing"),
                     "darkroom_ledger_verification_problems") == len(problems)
        page = stack.rpc.billing.verify_ledger(None, 1, page["next_cursor"])
        assert page["accounts_total"] is None
    assert value(scrape(stack, "billing"), "darkroom_ledger_verification_problems") == 0


def test_jobs_by_state_and_provider(stack):
    """Active jobs by state and provider, from the jobs table at each scrape;
    a job that reaches a final state is counted in the finished counter."""
    now = utcnow()

    def job(status, provider):
        return Job(id=new_id(), user_id=uuid.uuid4(), type="text-to-image", status=status,
                   attempt=1, prompt="p", params={}, price=1, priority=0, progress=0.0,
                   stage="render", provider=provider, output_ids=[], created_at=now,
                   updated_at=now, started_at=now,
                   lease_expires_at=now + timedelta(hours=1) if status == "running" else None,
                   finished_at=now if status == "succeeded" else None)

    with Session(stack.engines["generation"]) as db:
        db.add_all([job("running", "local"), job("succeeded", "local")])
        db.commit()
    samples = scrape(stack, "generation")
    assert value(samples, "darkroom_jobs", state="running", provider="local") == 1
    assert value(samples, "darkroom_jobs", state="queued", provider="none") == 0
    assert value(samples, "darkroom_jobs", state="succeeded", provider="local") is None
