"""A RabbitMQ node lost in the middle of a job stream, on a three-node cluster.

The stack: two replicas of every nameko service and one gateway, each
process through its Procfile command with ``AMQP_QUEUE_TYPE=quorum`` and an
``AMQP_URI`` naming the three nodes (kombu's ``;`` failover), each process
in another order so the connections spread over the nodes; PostgreSQL (a
fresh database per service, shared by its replicas), S3 (the tests'
endpoint), a fake OpenAI-compatible images API that answers at once.

A few client threads submit a steady stream of text-to-image jobs over HTTP.
In the middle, the node that leads the most quorum queues is killed
(SIGKILL: the node lost, not a goodbye) and started again 30 seconds later.
Every submit must be answered 202, on its first try but for a call in flight
at the moment the node goes (its reply queue goes with the node: the gateway
answers 503 and the client retries with the same ``Idempotency-Key``, as
darkroom-client does; at most one per client, counted and printed). Every
job must end ``succeeded`` with one output, and be held and captured exactly
once in billing's ledger; ``darkroom-ops billing verify`` (the real CLI) is
clean, and the cluster heals: three running nodes, every quorum queue with
its three members online. While the node is down, both replicas of every
service must consume from all their queues again (a service whose RPC reply
queue was durable on the lost node could not, and stopped consuming). The
gateway is connected to the lost node first, so it loses its connections too.
Jobs' leases are 30 s (120 by default) so that one whose worker lost its way
would be run again within the test. The figures (submit p50/max during the
outage, time to heal, connections at rest) are printed; docs/scaling.md
quotes them.
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import pytest
import requests
from sqlalchemy import text

from services.common.db import make_engine
from tests.conftest import (
    REPO,
    base_env,
    free_port,
    processes,
    procfile_commands,
    providers_file,
    wait_for,
)
from tests.e2e.stack import Stack, verified_login
from tests.fakes.providers import FakeOpenAIImages

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(900)]

SERVICES = ("auth", "notifications", "storage", "billing", "generation", "privacy")
REPLICAS = 2
CLIENTS = 4
JOBS = 120  # over STREAM_SECONDS, from CLIENTS threads
STREAM_SECONDS = 60
OUTAGE_AT = 15  # seconds into the stream
OUTAGE_SECONDS = 30
GRANT = 10_000
PROVIDER_KEY = "sk-cluster"
OPS = str(Path(sys.executable).parent / "darkroom-ops")


MAX_ATTEMPTS = 3  # a client retries a 5xx or a dropped connection, as darkroom-client does


@dataclass
class Submit:
    started: float  # seconds since the stream began
    seconds: float  # from the first attempt to the last answer, waits included
    status: int | None
    job_id: str | None = None
    error: str | None = None
    attempts: int = 0
    first_failure: str | None = None


@pytest.fixture(scope="module")
def stack(rabbit_cluster, make_database, s3_endpoint, tmp_path_factory, process_log_dir):
    start, stop_all = processes(process_log_dir)
    provider = FakeOpenAIImages(api_key=PROVIDER_KEY, hang_s=5).start()
    mail_dir = tmp_path_factory.mktemp("cluster-mail")
    port = free_port()
    urls = {name: make_database(f"cl_{name}") for name in SERVICES}
    common = dict(
        AMQP_QUEUE_TYPE="quorum",
        OUTBOX_RELAY_INTERVAL_SECONDS=1,
        **{f"{name.upper()}_DATABASE_URL": url for name, url in urls.items()},
        STORAGE_BACKEND="s3", S3_ENDPOINT=s3_endpoint.url, S3_ACCESS_KEY=s3_endpoint.access_key,
        S3_SECRET_KEY=s3_endpoint.secret_key, S3_BUCKET=s3_endpoint.bucket_name("cluster"),
        S3_REGION=s3_endpoint.region, STORAGE_URL_SECRET="cluster-url-secret",
        MAIL_URL=f"file://{mail_dir}",
        GATEWAY_PORT=port, PUBLIC_BASE_URL=f"http://127.0.0.1:{port}",
        RATELIMIT_AUTH="100000 per minute", RATELIMIT_DEFAULT="100000 per minute",
        AUTH_RESEND_MIN_INTERVAL_SECONDS=0,
        BILLING_PLAN_FREE_SIGNUP_GRANT=GRANT,
        GENERATION_MAX_ACTIVE_JOBS_PER_USER=JOBS,
        GENERATION_LEASE_SECONDS=30,
        GENERATION_PROVIDERS_FILE=providers_file(
            tmp_path_factory.mktemp("cluster-providers"),
            {"openai": {"type": "openai_images", "base_url": provider.url,
                        "api_key": PROVIDER_KEY, "timeout_s": 30}},
            {"text-to-image": ["openai"]}),
    )
    started, ready, engines = {}, [], {}
    order = 0
    try:
        for name in SERVICES:  # all started at once, then waited for
            for replica in range(1, REPLICAS + 1):
                metrics = free_port()
                rotation = [(order + i) % 3 for i in range(3)]  # connections spread
                order += 1
                env = base_env(**common, AMQP_URI=rabbit_cluster.uri(rotation),
                               **{f"{name.upper()}_METRICS_PORT": metrics})
                proc = start(f"{name}-{replica}", env, command=procfile_commands()[name])
                started[f"{name}-{replica}"] = proc
                ready.append((proc, f"http://127.0.0.1:{metrics}/readyz"))
        for proc, url in ready:
            proc.wait_ready(url, timeout=240)
        # the node to lose: the one leading the most queues once all are declared;
        # the gateway connects to it first, so it loses its connections too
        victim = rabbit_cluster.leader_of_most()
        first = rabbit_cluster.nodes.index(victim)
        gateway_env = base_env(**common, AMQP_URI=rabbit_cluster.uri(
            [(first + i) % 3 for i in range(3)]))
        started["gateway"] = start("gateway", gateway_env)
        started["gateway"].wait_ready(f"http://127.0.0.1:{port}/readyz", timeout=120)
        site = Stack(f"http://127.0.0.1:{port}", mail_dir, started, None)
        users = []
        for _ in range(CLIENTS):
            _, registered, _ = verified_login(site)
            users.append((registered["user"]["id"], registered["api_key"]["key"]))
        engines.update({name: make_engine(url) for name, url in urls.items()})
        yield SimpleNamespace(site=site, users=users, engines=engines, provider=provider,
                              processes=started, victim=victim, ops_env=base_env(
                                  AMQP_URI=rabbit_cluster.uri([2, 1, 0]),
                                  OPS_RPC_TIMEOUT_SECONDS=30))
    finally:
        for engine in engines.values():
            engine.dispose()
        stop_all()
        provider.stop()


def sql(stack, service: str, statement: str, **params):
    with stack.engines[service].connect() as conn:
        return conn.execute(text(statement), params).all()


def stream(stack, start: float) -> tuple[list[threading.Thread], list[Submit]]:
    """CLIENTS threads, each submitting its share of JOBS at an even pace over
    STREAM_SECONDS. A submit answered 5xx or cut off is retried as a client
    does: the same Idempotency-Key (so it cannot make a second job), after the
    answer's Retry-After, at most MAX_ATTEMPTS times; the test counts them."""
    per_client = JOBS // CLIENTS
    interval = STREAM_SECONDS / per_client
    results: list[Submit] = []
    lock = threading.Lock()

    def client(index: int, api_key: str):
        session = requests.Session()
        for n in range(per_client):
            due = start + index * interval / CLIENTS + n * interval
            time.sleep(max(0.0, due - time.monotonic()))
            began = time.monotonic()
            submit = Submit(began - start, 0.0, None)
            key = f"cl-{index}-{n}-{uuid.uuid4().hex}"
            while submit.attempts < MAX_ATTEMPTS:
                submit.attempts += 1
                wait = 1.0
                try:
                    r = session.post(f"{stack.site.base_url}/v1/generations", timeout=120,
                                     headers={"X-API-Key": api_key, "Idempotency-Key": key},
                                     json={"type": "text-to-image", "size": "512x512",
                                           "prompt": f"lighthouse {index}-{n}"})
                    submit.status, submit.error = r.status_code, None
                    if r.status_code == 202:
                        submit.job_id = r.json()["id"]
                        break
                    submit.error = r.text[:300]
                    if r.status_code < 500:
                        break  # a client does not retry a refusal
                    wait = float(r.headers.get("Retry-After", wait))
                except requests.RequestException as exc:
                    submit.status, submit.error = None, repr(exc)
                submit.first_failure = submit.first_failure or f"{submit.status} {submit.error}"
                time.sleep(wait)
            submit.seconds = time.monotonic() - began
            with lock:
                results.append(submit)

    threads = [threading.Thread(target=client, args=(i, key), daemon=True)
               for i, (_, key) in enumerate(stack.users)]
    for thread in threads:
        thread.start()
    return threads, results


def short_of_consumers(cluster) -> dict[str, int] | None:
    """The RPC and event queues without a consumer per replica (queue -> its
    consumers); None when there is no such queue yet."""
    served = [q for q in cluster.queues() if q["type"] == "quorum"
              and q["name"].startswith(("rpc-", "evt-"))]
    if not served:
        return None
    return {q["name"]: q["consumers"] for q in served if q["consumers"] != REPLICAS}


def every_replica_consumes(cluster) -> bool:
    """Each service's RPC queue and event queues have a consumer per replica."""
    return short_of_consumers(cluster) == {}


def healed(cluster) -> bool:
    if len(cluster.running_nodes()) != 3:
        return False
    quorum = [q for q in cluster.queues() if q["type"] == "quorum"]
    return bool(quorum) and all(len(q["members"]) == 3 and len(q["online"]) == 3
                                and q.get("leader") for q in quorum)


def test_a_node_lost_mid_stream_loses_nothing_and_the_cluster_heals(stack, rabbit_cluster):
    queues = rabbit_cluster.queues()
    assert {q["name"] for q in queues if q["type"] == "quorum"} >= {
        f"rpc-{name}" for name in SERVICES}
    assert all(len(q["online"]) == 3 for q in queues if q["type"] == "quorum")
    # a replica is ready once its consumers listen, but the cluster's consumer
    # counts can lag its readiness by a moment
    try:
        wait_for(lambda: every_replica_consumes(rabbit_cluster), 60, 1,
                 "every replica to consume before the stream")
    except Exception:
        raise AssertionError(
            f"queues short of consumers: {short_of_consumers(rabbit_cluster)}") from None

    connections = rabbit_cluster.connections()  # at rest, before the stream: for sizing
    per_node = {n.name: sum(1 for c in connections if c["node"] == n.name)
                for n in rabbit_cluster.nodes}

    start = time.monotonic()
    threads, results = stream(stack, start)

    time.sleep(max(0.0, start + OUTAGE_AT - time.monotonic()))
    victim = stack.victim
    assert rabbit_cluster.leader_of_most() is victim  # leaders stay put while all nodes run
    led = sum(1 for q in queues if q.get("leader") == victim.name)
    victim.kill()
    lost_at = time.monotonic() - start
    # every replica consumes again from every queue of its service, on the other nodes
    wait_for(lambda: every_replica_consumes(rabbit_cluster), OUTAGE_SECONDS - 5, 0.5,
             "both replicas of every service to consume again while the node is down")
    consuming_after = time.monotonic() - start - lost_at
    time.sleep(max(0.0, start + lost_at + OUTAGE_SECONDS - time.monotonic()))
    victim.start()
    back_at = time.monotonic() - start
    victim.await_startup()
    wait_for(lambda: healed(rabbit_cluster), 180, 1, "the cluster to heal")
    healed_after = time.monotonic() - start - back_at

    for thread in threads:
        thread.join(300)
    assert not any(thread.is_alive() for thread in threads), "a client is still waiting"

    # every submit answered 202 (a client retry allowed only at the loss, below)
    failed = [s for s in results if s.status != 202]
    during = sorted(s.seconds for s in results if lost_at <= s.started <= back_at)
    every = sorted(s.seconds for s in results)
    quorum = sum(1 for q in queues if q["type"] == "quorum")
    print(f"\n[cluster] {len(results)} submits; node {victim.name} (leader of {led} of "
          f"{quorum} quorum queues) "
          f"killed at {lost_at:.1f}s, every replica consuming again {consuming_after:.1f}s "
          f"later, node started at {back_at:.1f}s, cluster healed "
          f"{healed_after:.1f}s after its start; submit p50/max during the outage "
          f"{statistics.median(during):.3f}/{max(during):.3f}s ({len(during)} submits), "
          f"overall {statistics.median(every):.3f}/{max(every):.3f}s")
    retried = [s for s in results if s.attempts > 1]
    print(f"[cluster] submits retried by their client: {len(retried)} "
          f"{[(round(s.started - lost_at, 1), s.attempts, s.first_failure[:90]) for s in retried]}")
    print(f"[cluster] at rest: {len(connections)} connections, "
          f"{sum(c['channels'] for c in connections)} channels from "
          f"{len(stack.processes)} processes; per node {sorted(per_node.values())}")
    assert len(results) == JOBS and not failed, failed[:5]
    # a retry is for a call in flight when the node went: at most one per client,
    # right at the loss (its reply queue gone with the node)
    assert len(retried) <= CLIENTS, retried
    assert all(-1 <= s.started - lost_at <= 10 for s in retried), retried
    assert len(during) >= JOBS * OUTAGE_SECONDS // STREAM_SECONDS // 2  # the stream went on
    job_ids = {s.job_id for s in results}
    assert len(job_ids) == JOBS

    # every job succeeded, once, with one output
    user_ids = [uuid.UUID(user_id) for user_id, _ in stack.users]

    def jobs():
        return sql(stack, "generation", "SELECT id, status, price FROM jobs "
                   "WHERE user_id = ANY(:users)", users=user_ids)

    def all_done():
        rows = jobs()
        return len(rows) == JOBS and all(r.status == "succeeded" for r in rows)

    try:
        wait_for(all_done, 300, 1, "every job to succeed")
    finally:
        rows = jobs()
        print("[cluster] job states:", {s: sum(1 for r in rows if r.status == s)
                                        for s in {r.status for r in rows}})
    rows = jobs()
    assert {str(r.id) for r in rows} == job_ids
    # one committed output each (a slot whose RPC reply was lost with the node
    # stays pending, for storage's orphan sweep)
    objects = sql(stack, "storage", "SELECT job_id, status, count(*) AS n FROM objects "
                  "WHERE job_id = ANY(:jobs) GROUP BY job_id, status",
                  jobs=[r.id for r in rows])
    committed = {o.job_id: o.n for o in objects if o.status == "committed"}
    print("[cluster] pending output slots left:",
          sum(o.n for o in objects if o.status != "committed"))
    assert all(committed.get(r.id) == 1 for r in rows), committed

    # held and captured once per job, nothing left held, nothing charged twice
    def ledger():
        entries = sql(stack, "billing", "SELECT job_id, kind, amount FROM ledger_entries "
                      "WHERE job_id = ANY(:jobs)", jobs=[r.id for r in rows])
        per_job = {r.id: [] for r in rows}
        for entry in entries:
            per_job[entry.job_id].append(entry.kind)
        return per_job

    wait_for(lambda: all(sorted(kinds) == ["capture", "hold"] for kinds in ledger().values()),
             120, 1, "one hold and one capture per job")
    price = {r.id: r.price for r in rows}
    accounts = sql(stack, "billing", "SELECT user_id, available, held FROM accounts "
                   "WHERE user_id = ANY(:users)", users=user_ids)
    spent = {u: 0 for u in user_ids}
    for r in sql(stack, "generation", "SELECT id, user_id FROM jobs WHERE user_id = ANY(:users)",
                 users=user_ids):
        spent[r.user_id] += price[r.id]
    assert {a.user_id: (a.available, a.held) for a in accounts} == {
        u: (GRANT - spent[u], 0) for u in user_ids}

    verify = subprocess.run([OPS, "billing", "verify"], env=stack.ops_env, cwd=REPO,
                            capture_output=True, text=True, timeout=120)
    assert verify.returncode == 0, verify.stderr
    assert "the ledger is consistent" in verify.stdout

    # healed: three nodes, every quorum queue with its three members online
    assert healed(rabbit_cluster)
    assert victim.name in rabbit_cluster.running_nodes()
