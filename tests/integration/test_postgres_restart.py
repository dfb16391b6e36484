"""PostgreSQL restarting under a stream of jobs. Real generation, billing and
storage processes and the gateway (their Procfile commands) on databases in a private
PostgreSQL server of this module's own (tests/private_postgres.py: the shared
server is never restarted), storage on the tests' S3 endpoint, a fake
OpenAI-compatible provider on loopback, auth faked as in the other stacks.

While jobs are submitted one after another the server is restarted (a fast
shutdown and start at once), then stopped for ``DOWN_SECONDS`` and started
again. Afterwards:

- every job the database holds (those whose submit answered and any whose
  answer was lost) ends ``succeeded``, its provider called once and that
  call in the disclosure log;
- each is charged exactly once (one capture in billing's ledger), no hold is
  left open, and ``darkroom-ops billing verify`` is clean;
- no event was dead-lettered: handlers that met the outage waited it out,
  although their retry delays (``EVENT_RETRY_DELAYS_MS``) add up to far less;
- a submit made while the server is down is refused with 503
  ``service_unavailable`` (``details.cause: database``, and the
  ``details.retry_after`` the gateway sends as Retry-After), not a bare
  internal error; a read through the gateway answers the same 503 with
  Retry-After;
- no service process died.
"""

from __future__ import annotations

import threading
import time
import urllib.parse
import uuid
from types import SimpleNamespace

import pytest
import requests
from nameko.standalone.rpc import ClusterRpcProxy
from sqlalchemy import create_engine, text

from services.common.db import normalise_url
from services.common.errors import DomainError
from tests.conftest import base_env, wait_for
from tests.fakes.providers import FakeOpenAIImages
from tests.integration.job_stack import start_job_stack
from tests.integration.probe_service import FAKE_TOKEN_PREFIX
from tests.integration.test_ops_users import ops

pytestmark = pytest.mark.integration

DOWN_SECONDS = 10
USERS = 6
SUBMIT_INTERVAL_SECONDS = 0.3


@pytest.fixture(scope="module")
def stack(make_vhost, rabbit_server, private_postgres, start_process, s3_endpoint,
          tmp_path_factory):
    amqp_uri, vhost = make_vhost("postgres-restart")
    provider = FakeOpenAIImages().start()
    urls = {name: private_postgres.create_database(f"restart_{name}")
            for name in ("billing", "storage", "generation")}
    started = start_job_stack(
        start_process, tmp_path_factory, amqp_uri, databases=urls, s3=s3_endpoint,
        s3_url=s3_endpoint.url, bucket=s3_endpoint.bucket_name("pg-restart"),
        provider_url=provider.url,
        # retry delays far shorter than the outage: a handler that meets it
        # must wait it out, not use up its attempts and be dead-lettered
        services=dict(EVENT_RETRY_DELAYS_MS="[300, 1000]"),
        # a lease longer than the stop, as in production (120 s): a running job's
        # heartbeat cannot renew it while the server is down
        generation=dict(GENERATION_INFRA_RETRY_SECONDS=90, GENERATION_RPC_TIMEOUT_SECONDS=5,
                        GENERATION_LEASE_SECONDS=30),
        gateway=dict(GATEWAY_AUTH_CACHE_SECONDS=60))
    engines = {name: create_engine(normalise_url(url), pool_pre_ping=True)
               for name, url in urls.items()}
    with ClusterRpcProxy({"AMQP_URI": amqp_uri}, timeout=60) as rpc:
        for service in ("billing", "storage", "generation"):
            wait_for(lambda s=service: getattr(rpc, s).ping(), 30, 0.2, f"{service} RPC")
        yield SimpleNamespace(base=started.base, amqp_uri=amqp_uri, vhost=vhost,
                              mgmt=rabbit_server[1], rpc=rpc, procs=started.procs,
                              engines=engines, pg=private_postgres, provider=provider)
    for engine in engines.values():
        engine.dispose()
    provider.stop()


class Submitter(threading.Thread):
    """Submits a job every ``SUBMIT_INTERVAL_SECONDS`` (round robin over the
    users) on its own RPC proxy until stopped; keeps what each submit answered."""

    def __init__(self, amqp_uri: str, users: list[str]):
        super().__init__(daemon=True)
        self.amqp_uri, self.users = amqp_uri, users
        self.accepted: list[tuple[str, str]] = []
        self.refused: list[DomainError] = []
        self.failed: list[BaseException] = []
        self.done = threading.Event()

    def run(self) -> None:
        with ClusterRpcProxy({"AMQP_URI": self.amqp_uri}, timeout=30) as rpc:
            n = 0
            while not self.done.is_set():
                user = self.users[n % len(self.users)]
                n += 1
                try:
                    job = rpc.generation.submit(user, {"type": "text-to-image",
                                                       "prompt": f"a lighthouse {n}",
                                                       "size": "512x512"})
                    self.accepted.append((user, job["id"]))
                except DomainError as exc:
                    self.refused.append(exc)
                except Exception as exc:  # noqa: BLE001 - kept and asserted on
                    self.failed.append(exc)
                self.done.wait(SUBMIT_INTERVAL_SECONDS)

    def wait_accepted(self, count: int, timeout: float) -> None:
        wait_for(lambda: len(self.accepted) >= count, timeout, 0.2,
                 f"{count} accepted submits (now {len(self.accepted)}, "
                 f"refused {len(self.refused)}, failed {self.failed[-1:]})")


def read_job(stack, user: str, job_id: str) -> requests.Response:
    return requests.get(f"{stack.base}/v1/generations/{job_id}", timeout=60,
                        headers={"Authorization": f"Bearer {FAKE_TOKEN_PREFIX}{user}"})


def sql(stack, service: str, statement: str, **params):
    with stack.engines[service].connect() as conn:
        return conn.execute(text(statement), params).all()


def test_jobs_survive_a_postgres_restart_and_a_stop(stack):
    users = [str(uuid.uuid4()) for _ in range(USERS)]
    for user in users:
        assert stack.rpc.billing.get_balance(user)["available"] == 50
    submitter = Submitter(stack.amqp_uri, users)
    submitter.start()
    try:
        submitter.wait_accepted(8, 60)
        stack.pg.restart()  # a fast restart: every open connection is cut
        before_stop = len(submitter.accepted)
        submitter.wait_accepted(before_stop + 8, 90)
        user, job_id = submitter.accepted[-1]
        assert read_job(stack, user, job_id).status_code == 200  # its credential now cached
        stack.pg.stop()
        refused_before = len(submitter.refused)
        stopped = time.monotonic()
        # a submit while the server is down is answered, and with 503
        wait_for(lambda: len(submitter.refused) > refused_before, DOWN_SECONDS + 30, 0.2,
                 "a submit refused while PostgreSQL is down")
        # so is a read through the API: 503 and when to come back, not a 500
        read = read_job(stack, user, job_id)
        assert read.status_code == 503, read.text
        assert read.json()["error"]["code"] == "service_unavailable"
        assert read.json()["error"]["details"]["cause"] == "database"
        assert int(read.headers["Retry-After"]) >= 1
        time.sleep(max(0.0, DOWN_SECONDS - (time.monotonic() - stopped)))
        stack.pg.start()
        after_start = len(submitter.accepted)
        submitter.wait_accepted(after_start + 8, 90)
    finally:
        submitter.done.set()
        submitter.join(60)

    assert not submitter.failed, submitter.failed[:3]
    assert submitter.refused, "no submit met the outage"
    for exc in submitter.refused:
        assert (exc.status, exc.code, exc.details["cause"]) == (
            503, "service_unavailable", "database"), exc
        assert exc.details["retry_after"] >= 1

    ids = {job_id for _, job_id in submitter.accepted}

    def all_finished():
        rows = sql(stack, "generation", "SELECT id, status FROM jobs")
        return all(status in ("succeeded", "failed") for _, status in rows) and rows

    rows = wait_for(all_finished, 240, 1, "every job to finish")
    statuses = {str(job_id): status for job_id, status in rows}
    assert ids <= set(statuses), ids - set(statuses)
    assert set(statuses.values()) == {"succeeded"}, {
        s: sum(1 for v in statuses.values() if v == s) for s in set(statuses.values())}

    # the paid provider call was made once per job, and each is in the disclosure log
    assert len(stack.provider.requests_to("/v1/images/generations", "POST")) == len(statuses)
    disclosed = sql(stack, "generation", "SELECT job_id, count(*) FROM disclosures GROUP BY job_id")
    assert {str(job_id): count for job_id, count in disclosed} == {j: 1 for j in statuses}

    def settled():
        return not sql(stack, "billing", "SELECT id FROM holds WHERE status = 'open'")

    wait_for(settled, 60, 0.5, "every hold to be captured")
    captures = sql(stack, "billing", "SELECT job_id, count(*) FROM ledger_entries "
                                     "WHERE kind = 'capture' GROUP BY job_id")
    charged = {str(job_id): count for job_id, count in captures}
    assert charged == {job_id: 1 for job_id in statuses}, charged
    holds = sql(stack, "billing", "SELECT status, count(*) FROM holds GROUP BY status")
    assert dict(holds) == {"captured": len(statuses)}, holds

    queues = requests.get(f"{stack.mgmt}/api/queues/{urllib.parse.quote(stack.vhost, safe='')}",
                          timeout=10).json()
    dead = {q["name"]: q.get("messages", 0) for q in queues if q["name"].startswith("dlq.")}
    assert dead and not any(dead.values()), dead
    verify = ops(base_env(AMQP_URI=stack.amqp_uri, OPS_RPC_TIMEOUT_SECONDS=30),
                 "billing", "verify")
    assert verify.returncode == 0, verify.stdout + verify.stderr
    for name, proc in stack.procs.items():
        assert proc.alive(), f"{name} died:\n{proc.logs()[-3000:]}"
