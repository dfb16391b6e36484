"""The generation pipeline end to end: jobs submitted through the gateway,
timed from the client's submit to the job's ``succeeded``.

Measured: JOBS text-to-image jobs (one 512x512 image each) submitted over HTTP
by CLIENTS threads against the whole stack as processes (gateway, auth,
notifications, storage on the fs backend, billing, generation, privacy; SQLite
databases, one RabbitMQ vhost), with a model provider that answers at once (a
fake OpenAI-compatible images API on loopback). A job's time is from just
before its POST to its ``finished_at``; throughput is jobs over the time from
the first submit to the last ``finished_at``.

Floor, in the same run through the same broker: the same number of chains of
HOPS messages with plain AMQP (kombu), persistent and publisher-confirmed like
the services' messages, each hop a consumer that publishes to the next queue,
started the same way by CLIENTS threads. HOPS counts the broker messages on a
job's path from submit to succeeded: the submit RPC and its reply (2),
auth.get_user and its reply (2: spending needs a verified address),
billing.quote and its reply (2), generation.job_requested (1),
billing.credits_reserved (1), storage.create_output_slot and its reply (2),
storage.commit_objects and its reply (2).

Rounds: ROUNDS (3) pipeline runs on the same stack, each between two floor
runs; a round's ratios are against the mean of the floors before and after
it (this VM's speed drifts by a third over minutes, and both sides should
see the same machine), and the medians over the rounds are the result.

Targets (issue 15): p50 within 1.5x the floor's p50; throughput at least
0.2 of the floor's chains/s. Beside each round: the CPU time each process
spent per job (``/proc/<pid>/stat``), where a job's time went whatever else
loads the machine.
"""

from __future__ import annotations

import email
import email.policy
import os
import statistics
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import requests
from kombu import Connection, Exchange, Queue
from nameko.standalone.rpc import ClusterRpcProxy

from bench.stack import broker_pid, cpu_seconds, processes, rss_mb, service_pids
from tests.conftest import providers_file
from tests.e2e.stack import code_from
from tests.fakes.providers import FakeOpenAIImages

JOBS = int(os.environ.get("DARKROOM_BENCH_PIPELINE_JOBS", "500"))
CLIENTS = int(os.environ.get("DARKROOM_BENCH_PIPELINE_CLIENTS", "8"))
ROUNDS = int(os.environ.get("DARKROOM_BENCH_PIPELINE_ROUNDS", "3"))
HOPS = 12
P50_TARGET, RATE_TARGET = 1.5, 0.2
REST_SECONDS = float(os.environ.get("DARKROOM_BENCH_REST_SECONDS", "5"))
JOB = {"type": "text-to-image", "prompt": "a benchmark teapot", "size": "512x512"}
OPEN = ("queued", "reserved", "running")  # a job in none of these has finished
PASSWORD = "benchmark passphrase"


# ---------------------------------------------------------------- the floor


def floor(amqp_uri: str, chains: int, clients: int) -> dict:
    """``chains`` chains of HOPS persistent, confirmed messages through the broker."""
    exchange = Exchange("", type="direct")
    tag = uuid.uuid4().hex[:8]
    queues = [Queue(f"bench-floor-{tag}-{i}", durable=True, auto_delete=True) for i in range(HOPS)]
    done: dict[str, float] = {}
    finished = threading.Event()
    stop = threading.Event()

    def hop(index: int, ready: threading.Barrier) -> None:
        # consume on one connection, publish (and wait for confirms) on another,
        # as a nameko service does
        with Connection(amqp_uri) as conn, \
                Connection(amqp_uri, transport_options={"confirm_publish": True}) as out:
            producer = out.Producer()
            last = index == HOPS - 1

            def on_message(body, message):
                if last:
                    done[body["chain"]] = time.perf_counter()
                    if len(done) == chains:
                        finished.set()
                else:
                    producer.publish(body, exchange=exchange, routing_key=queues[index + 1].name,
                                     serializer="json", delivery_mode=2)
                message.ack()

            with conn.Consumer(queues[index], callbacks=[on_message], prefetch_count=CLIENTS):
                ready.wait()
                while not stop.is_set():
                    try:
                        conn.drain_events(timeout=0.2)
                    except TimeoutError:
                        continue

    ready = threading.Barrier(HOPS + 1)
    threads = [threading.Thread(target=hop, args=(i, ready), daemon=True) for i in range(HOPS)]
    for thread in threads:
        thread.start()
    ready.wait()

    starts: dict[str, float] = {}
    local = threading.local()

    def start_chain(n: int) -> None:
        if not hasattr(local, "conn"):
            local.conn = Connection(amqp_uri, transport_options={"confirm_publish": True})
            local.producer = local.conn.Producer()
        chain = f"c{n}"
        starts[chain] = time.perf_counter()
        local.producer.publish({"chain": chain}, exchange=exchange, routing_key=queues[0].name,
                               serializer="json", delivery_mode=2)

    began = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(start_chain, range(chains)))
    assert finished.wait(300), f"the floor finished {len(done)} of {chains} chains"
    stop.set()
    for thread in threads:
        thread.join(5)
    latencies = [done[c] - starts[c] for c in starts]
    return summary(latencies, max(done.values()) - began, chains)


# ---------------------------------------------------------------- the pipeline


def wait_ready(proc, url: str) -> None:
    proc.wait_ready(url, timeout=120)


@dataclass
class Client:
    """A verified account with credits, on the stack's gateway."""

    base: str
    headers: dict
    amqp_uri: str
    session: requests.Session = field(default_factory=requests.Session)


def stack(start, free_port, provider_url: str, tmp: Path, *, providers: dict | None = None,
          routes: dict | None = None, warm_up: bool = True, env: dict | None = None) -> Client:
    """The whole stack as processes, an account with credits for every round,
    and every hop warmed up. ``providers``/``routes``: another providers file
    than the fake OpenAI images API at ``provider_url`` (then ``warm_up``
    False skips the text-to-image warm-up jobs); ``env``: settings for every
    process that win over these (other database URLs)."""
    gateway_port = free_port()
    mail_dir, objects = tmp / "mail", tmp / "objects"
    common = dict(
        MAIL_URL=f"file://{mail_dir}", STORAGE_BACKEND="fs", STORAGE_FS_ROOT=str(objects),
        PUBLIC_BASE_URL=f"http://127.0.0.1:{gateway_port}",
        STORAGE_URL_SECRET="bench-url-secret",
        STORAGE_DATABASE_URL=f"sqlite:///{tmp}/storage.db",
        BILLING_DATABASE_URL=f"sqlite:///{tmp}/billing.db",
        GENERATION_DATABASE_URL=f"sqlite:///{tmp}/generation.db",
        PRIVACY_DATABASE_URL=f"sqlite:///{tmp}/privacy.db",
        GENERATION_PROVIDERS_FILE=providers_file(
            tmp, providers or {"openai": {"type": "openai_images", "base_url": provider_url,
                                          "api_key": "sk-bench"}},
            routes or {"text-to-image": ["openai"]}),
        GENERATION_MAX_ACTIVE_JOBS_PER_USER=JOBS + 10,
        GATEWAY_PORT=gateway_port, RATELIMIT_ENABLED="false",
    )
    common.update(env or {})
    started = []
    for name in ("auth", "notifications", "storage", "billing", "generation", "privacy"):
        port = free_port()
        proc, env = start(name, **common, **{f"{name.upper()}_METRICS_PORT": port})
        started.append((proc, f"http://127.0.0.1:{port}/readyz"))
    for proc, url in started:
        wait_ready(proc, url)
    gateway, env = start("gateway", **common)
    wait_ready(gateway, f"http://127.0.0.1:{gateway_port}/readyz")
    base = f"http://127.0.0.1:{gateway_port}"

    session = requests.Session()
    address = f"bench-{uuid.uuid4().hex[:8]}@example.com"
    registered = session.post(f"{base}/v1/auth/register", json={"email": address,
                              "password": PASSWORD}, timeout=30)
    registered.raise_for_status()
    user_id = registered.json()["user"]["id"]
    deadline = time.monotonic() + 30
    while not list(mail_dir.glob("*.eml")) and time.monotonic() < deadline:
        time.sleep(0.1)
    message = email.message_from_bytes(next(mail_dir.glob("*.eml")).read_bytes(),
                                       policy=email.policy.default)
    session.post(f"{base}/v1/auth/verify-email",
                 json={"email": address, "code": code_from(message)}, timeout=30).raise_for_status()
    token = session.post(f"{base}/v1/auth/login", json={"email": address, "password": PASSWORD},
                         timeout=30).json()["token"]
    with ClusterRpcProxy({"AMQP_URI": env["AMQP_URI"]}, timeout=30) as rpc:
        rpc.billing.get_balance(user_id)
        rpc.billing.adjust(user_id, (JOBS + 10) * ROUNDS, "benchmark credits", f"bench-{user_id}")

    client = Client(base, {"Authorization": f"Bearer {token}"}, env["AMQP_URI"], session)
    for _ in range(5 if warm_up else 0):  # warm up every hop
        job = session.post(f"{base}/v1/generations", json=JOB, headers=client.headers,
                           timeout=30).json()
        wait_done(client, [job["id"]])
    return client


def pipeline(client: Client) -> dict:
    """JOBS jobs submitted by CLIENTS threads, timed to their ``finished_at``."""
    local = threading.local()
    submitted: dict[str, float] = {}
    answered: list[float] = []  # how long the 202 took

    def submit(_):
        if not hasattr(local, "session"):
            local.session = requests.Session()
        t0 = time.time()
        response = local.session.post(f"{client.base}/v1/generations", json=JOB,
                                      headers=client.headers, timeout=60)
        assert response.status_code == 202, response.text
        submitted[response.json()["id"]] = t0
        answered.append(time.time() - t0)

    began = time.time()
    with ThreadPoolExecutor(CLIENTS) as pool:
        list(pool.map(submit, range(JOBS)))
    finished = wait_done(client, list(submitted))
    latencies = [finished[j] - submitted[j] for j in submitted]
    result = summary(latencies, max(finished.values()) - began, JOBS)
    result["submit_p50_ms"] = statistics.median(answered) * 1000
    return result


def wait_done(client: Client, job_ids: list[str]) -> dict[str, float]:
    """``finished_at`` (unix time) of each job once every one has succeeded.

    ``finished_at`` is the server's, so how often this looks does not change
    the figures, only the load it adds: while jobs are open it asks for one
    job of each open status (three small requests a second), then reads every
    job once."""
    deadline = time.monotonic() + 600
    while any(open_jobs(client, status) for status in OPEN):
        assert time.monotonic() < deadline, "jobs did not finish within 10 minutes"
        time.sleep(1)  # (under gunicorn's 2 s keep-alive: no reused dead socket)
    pending, finished = set(job_ids), {}
    cursor = None
    while True:
        params = {"limit": 100, **({"cursor": cursor} if cursor else {})}
        page = client.session.get(f"{client.base}/v1/generations", params=params,
                                  headers=client.headers, timeout=30).json()
        for job in page["items"]:
            if job["id"] in pending:
                assert job["status"] == "succeeded", job
                finished[job["id"]] = datetime.fromisoformat(job["finished_at"]).timestamp()
                pending.discard(job["id"])
        cursor = page["next_cursor"]
        if not cursor or not pending:
            break
    assert not pending, f"{len(pending)} jobs are missing from the list"
    return finished


def open_jobs(client: Client, status: str) -> bool:
    page = client.session.get(f"{client.base}/v1/generations",
                              params={"status": status, "limit": 1}, headers=client.headers,
                              timeout=30)
    page.raise_for_status()
    return bool(page.json()["items"])


def summary(latencies: list[float], elapsed: float, count: int) -> dict:
    q = statistics.quantiles(latencies, n=100)
    return {"rate": count / elapsed, "p50_ms": q[49] * 1000, "p95_ms": q[94] * 1000}


def main() -> None:
    import tempfile

    with FakeOpenAIImages(api_key="sk-bench") as provider, processes() as (start, free_port), \
            tempfile.TemporaryDirectory() as tmp:
        client = stack(start, free_port, provider.url, Path(tmp))
        floors = [floor(client.amqp_uri, JOBS, CLIENTS)]
        rounds = []
        pids = service_pids(start.by_name)
        if broker_pid():  # the whole broker: the floor's chains are not running meanwhile
            pids["rabbitmq"] = broker_pid()
        for _ in range(ROUNDS):  # each round between two floors: drift hits both alike
            before = {name: cpu_seconds(pid) for name, pid in pids.items()}
            rounds.append(pipeline(client))
            rounds[-1]["cpu_ms"] = {name: (cpu_seconds(pid) - before[name]) * 1000 / JOBS
                                    for name, pid in pids.items()}
            floors.append(floor(client.amqp_uri, JOBS, CLIENTS))
        time.sleep(REST_SECONDS)  # the load over: the outbox relays and batches done
        resident = {name: rss_mb(pid) for name, pid in pids.items() if name != "rabbitmq"}
    print(f"{JOBS} text-to-image jobs through the gateway, {CLIENTS} client threads, a provider "
          f"that answers at once; floor: {JOBS} chains of {HOPS} AMQP hops, same broker; "
          f"{ROUNDS} rounds, each against the mean of the floors before and after it")
    p50_ratios, rate_ratios = [], []
    for n, measured in enumerate(rounds):
        before, after = floors[n], floors[n + 1]
        raw = {key: (before[key] + after[key]) / 2 for key in before}
        p50_ratios.append(measured["p50_ms"] / raw["p50_ms"])
        rate_ratios.append(measured["rate"] / raw["rate"])
        print(f"round {n + 1}")
        print(f"  floor (plain AMQP chains)   {raw['rate']:8.1f} chains/s   p50 "
              f"{raw['p50_ms']:7.1f} ms   p95 {raw['p95_ms']:7.1f} ms")
        print(f"  pipeline (submit→succeeded) {measured['rate']:8.1f} jobs/s     p50 "
              f"{measured['p50_ms']:7.1f} ms   p95 {measured['p95_ms']:7.1f} ms   (202 answered "
              f"in {measured['submit_p50_ms']:.1f} ms, p50)")
        print(f"  p50 ratio {p50_ratios[-1]:.2f}   throughput ratio {rate_ratios[-1]:.3f}")
        cpu = measured["cpu_ms"]
        print(f"  CPU ms per job: {sum(cpu.values()):.1f} (" + ", ".join(
            f"{name} {ms:.1f}" for name, ms in cpu.items()) + ")")
    print(f"resident {REST_SECONDS:g} s after the last round (MB): "
          + ", ".join(f"{name} {mb:.0f}" for name, mb in resident.items()))
    p50, rate = statistics.median(p50_ratios), statistics.median(rate_ratios)
    print(f"median of {ROUNDS} rounds: p50 ratio pipeline/floor {p50:.2f} (target <= "
          f"{P50_TARGET}: {'PASS' if p50 <= P50_TARGET else 'FAIL'}); throughput ratio "
          f"{rate:.3f} (target >= {RATE_TARGET}: {'PASS' if rate >= RATE_TARGET else 'FAIL'})")


if __name__ == "__main__":
    main()
