"""The parts of a submit no change to generation can remove (issue 15: the
submit within 5x of a bare Flask endpoint's p50).

A submit through the gateway is at least: the gateway's RPC to generation
(request and reply, both persistent and publisher-confirmed, as every nameko
RPC), generation's RPC to auth (the verified-address check: spending needs
it, docs/design.md), and one committed transaction (the job, its submit lock
and its outbox row). Measured here, one at a time, each the median of
ROUNDS sequential calls on an idle stack:

- ``rpc``: ``auth.ping`` (a method that does nothing) from a plain process,
  the round trip of one RPC: nameko's publish with confirm, the service's
  worker, its reply with confirm;
- ``publish``: one persistent, publisher-confirmed message (kombu), what the
  outbox's publish of ``job_requested`` costs when it is before the reply;
- ``commit``: one insert committed, on a SQLite file (as ``make dev``) and on
  PostgreSQL (``DARKROOM_BENCH_POSTGRES_URL``).

Compare with the floor's p50 (bench/read_path.py prints it, 0.3–0.5 ms on
the development VM): 5x the floor is 1.5–2.5 ms.
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time
import uuid

from kombu import Connection, Exchange, Queue
from nameko.standalone.rpc import ClusterRpcProxy
from sqlalchemy import Column, MetaData, String, Table, create_engine

from bench.read_path import POSTGRES, postgres_databases
from bench.stack import processes

ROUNDS = int(os.environ.get("DARKROOM_BENCH_PARTS_ROUNDS", "300"))


def median_ms(call, rounds: int = ROUNDS) -> float:
    for _ in range(20):  # warm-up
        call()
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        call()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1000


def commit_ms(url: str) -> float:
    engine = create_engine(url)
    table = Table("bench_commit", MetaData(), Column("id", String(36), primary_key=True))
    table.metadata.create_all(engine)

    def one():
        with engine.begin() as conn:
            conn.execute(table.insert().values(id=str(uuid.uuid4())))

    try:
        return median_ms(one)
    finally:
        engine.dispose()


def main() -> None:
    load = os.getloadavg()[0]
    with processes() as (start, free_port):
        port = free_port()
        auth, env = start("auth", AUTH_METRICS_PORT=port)
        auth.wait_ready(f"http://127.0.0.1:{port}/readyz", timeout=120)
        amqp = env["AMQP_URI"]
        with ClusterRpcProxy({"AMQP_URI": amqp}, timeout=30) as rpc:
            rpc_ms = median_ms(rpc.auth.ping)
        queue = Queue(f"bench-parts-{uuid.uuid4().hex[:8]}", durable=True, auto_delete=False)
        with Connection(amqp, transport_options={"confirm_publish": True}) as conn:
            queue(conn.default_channel).declare()
            producer = conn.Producer()
            publish_ms = median_ms(lambda: producer.publish(
                {"n": 1}, exchange=Exchange(""), routing_key=queue.name, serializer="json",
                delivery_mode=2))
            queue(conn.default_channel).delete()
    with tempfile.TemporaryDirectory() as tmp:
        sqlite_ms = commit_ms(f"sqlite:///{tmp}/parts.db")
    with postgres_databases() as urls:
        from services.common.db import normalise_url

        postgres_ms = commit_ms(normalise_url(urls["GENERATION_DATABASE_URL"]))
    print(f"the parts of a submit, each the median of {ROUNDS} sequential calls on an idle "
          f"stack (load average {load:.1f} at the start; PostgreSQL at {POSTGRES.split('@')[-1]})")
    print(f"  one RPC round trip (auth.ping from a plain process)   {rpc_ms:6.2f} ms")
    print(f"  one persistent, confirmed publish                     {publish_ms:6.2f} ms")
    print(f"  one committed insert, SQLite file                     {sqlite_ms:6.2f} ms")
    print(f"  one committed insert, PostgreSQL                      {postgres_ms:6.2f} ms")
    print(f"  a submit's least: two RPC round trips in sequence, the second inside the first "
          f"(gateway→generation, generation→auth; generation's own checks overlap the second), "
          f"one commit: {2 * rpc_ms + min(sqlite_ms, postgres_ms):.2f} ms or more")


if __name__ == "__main__":
    main()
