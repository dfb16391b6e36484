"""The read path against a bare Flask endpoint (issue 15).

Measured: ``GET /v1/me``, ``GET /v1/generations/{id}``, ``GET
/v1/billing/balance`` and ``POST /v1/generations`` through the gateway, with
a session token, the whole stack as processes (bench/pipeline.py's stack: a
provider that answers at once), once on SQLite databases (as ``make dev``)
and once on PostgreSQL (``DARKROOM_BENCH_POSTGRES_URL``, default the local
server with trust auth; a fresh database per service, dropped at the end).

Floor: bench/read_floor.py, a bare Flask app under the gateway's own gunicorn
settings (deploy/config/gunicorn.conf.py: the same workers, worker class and
threads), answering a JSON body of the same size as the endpoint's.

Load: wrk (Debian's package; ``make bench`` installs it as deploy/test-tools.sh
installs its tools), SECONDS seconds per measurement after a short warm-up, at
1 and 16 connections (the submit at 1); each measurement of the gateway right
after the floor's, so both see the same machine. Printed: req/s, p50, p95, the
ratios, the CPU time each process spent per request (``/proc/<pid>/stat``: where
the time went, whatever else loads the machine) and each process's resident set
at rest.

Targets: the three reads reach 1/3 of the floor's req/s at 16 connections and
at most 3x its p50 at 1; the submit at most 5x the floor's p50 at 1; every
service at most 100 MB resident at rest.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import requests

from bench.pipeline import JOB, stack, wait_done
from bench.stack import children, cpu_seconds, processes, rss_mb, service_pids
from tests.conftest import Process, base_env
from tests.fakes.providers import FakeOpenAIImages

SECONDS = int(os.environ.get("DARKROOM_BENCH_READ_SECONDS", "5"))
POSTGRES = os.environ.get("DARKROOM_BENCH_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
SERVICES = ("auth", "notifications", "storage", "billing", "generation", "privacy")
FLOOR_COMMAND = "gunicorn --config deploy/config/gunicorn.conf.py bench.read_floor:app"
RSS_LIMIT_MB = 100

# (label, method, path template, connections, target): "rps" the req/s ratio at
# 16 connections (at least 1/3), "p50" the p50 ratio at 1 (at most the number)
MEASURED = [
    ("GET /v1/me", "GET", "/v1/me", [(1, ("p50", 3)), (16, ("rps", 1 / 3))]),
    ("GET /v1/generations/{id}", "GET", "/v1/generations/{job}", [(1, ("p50", 3)), (16, ("rps", 1 / 3))]),
    ("GET /v1/billing/balance", "GET", "/v1/billing/balance", [(1, ("p50", 3)), (16, ("rps", 1 / 3))]),
    ("POST /v1/generations", "POST", "/v1/generations", [(1, ("p50", 5))]),
]

LUA = """
wrk.method = "{method}"
wrk.headers["Content-Type"] = "application/json"
{auth}
wrk.body = {body}
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("READ_PATH %d %d %d %d %d\\n", summary.requests, summary.duration,
    latency:percentile(50), latency:percentile(95),
    e.connect + e.read + e.write + e.status + e.timeout))
end
"""


def wrk(url: str, connections: int, *, method: str = "GET", token: str | None = None,
        body: str | None = None, seconds: int = SECONDS) -> dict:
    """req/s, p50 and p95 (ms) of ``seconds`` of ``connections`` keep-alive
    connections; fails when a request failed or did not answer 2xx."""
    with tempfile.NamedTemporaryFile("w", suffix=".lua") as script:
        script.write(LUA.format(
            method=method,
            auth=f'wrk.headers["Authorization"] = "Bearer {token}"' if token else "",
            body=f"[[{body}]]" if body else "nil"))
        script.flush()
        out = subprocess.run(
            ["wrk", f"-t{min(connections, 2)}", f"-c{connections}", f"-d{seconds}s",
             "--timeout", "10s", "-s", script.name, url],
            capture_output=True, text=True, check=True).stdout
    line = next(x for x in out.splitlines() if x.startswith("READ_PATH "))
    count, micros, p50, p95, errors = (int(v) for v in line.split()[1:])
    if errors:
        raise SystemExit(f"{errors} of {count} requests to {url} failed:\n{out}"
                         f"{sample_failures(url, connections, method, token, body)}")
    return {"rps": count / (micros / 1e6), "p50": p50 / 1000, "p95": p95 / 1000,
            "requests": count}


def sample_failures(url: str, connections: int, method: str, token: str | None,
                    body: str | None) -> str:
    """What failing requests answered: the same load again, from Python, for a moment."""
    headers = {"Content-Type": "application/json",
               **({"Authorization": f"Bearer {token}"} if token else {})}

    def one(_):
        r = requests.request(method, url, headers=headers, data=body, timeout=30)
        return None if r.status_code < 300 else f"{r.status_code} {r.text[:300]}"

    with ThreadPoolExecutor(connections) as pool:
        failures = [f for f in pool.map(one, range(connections * 4)) if f]
    return "\n".join(sorted(set(failures))[:5])


def ensure_wrk() -> None:
    if shutil.which("wrk") is None:
        subprocess.run(["deploy/test-tools.sh", "wrk"], check=False)
    if shutil.which("wrk") is None:
        raise SystemExit("bench.read_path needs wrk: apt-get install wrk")


@contextmanager
def postgres_databases():
    """``<SERVICE>_DATABASE_URL`` of a fresh PostgreSQL database per service."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    from services.common.db import normalise_url

    engine = create_engine(normalise_url(POSTGRES), isolation_level="AUTOCOMMIT")
    tag = uuid.uuid4().hex[:8]
    names = {service: f"dr_bench_{tag}_{service}" for service in SERVICES}
    with engine.connect() as conn:
        for name in names.values():
            conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield {f"{service.upper()}_DATABASE_URL":
               make_url(POSTGRES).set(database=name).render_as_string(hide_password=False)
               for service, name in names.items()}
    finally:
        engine.dispose()  # new connections: the server may have restarted meanwhile
        with engine.connect() as conn:
            for name in names.values():
                conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        engine.dispose()


def run(label: str, env: dict) -> bool:
    """The stack on ``env``'s databases and the floor, measured; True when
    every target was met."""
    met = True
    with FakeOpenAIImages(api_key="sk-bench") as provider, processes() as (start, free_port), \
            tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        started = start.by_name
        client = stack(start, free_port, provider.url, tmp, env=env)
        token = client.headers["Authorization"].split()[1]
        job = client.session.post(f"{client.base}/v1/generations", json=JOB,
                                  headers=client.headers, timeout=30).json()["id"]
        wait_done(client, [job])

        floor_port = free_port()
        floor = Process("read-floor", base_env(GATEWAY_PORT=floor_port, LOG_LEVEL="WARNING"),
                        tmp, command=FLOOR_COMMAND).start()
        try:
            floor.wait_ready(f"http://127.0.0.1:{floor_port}/bytes/2")
            floor_base = f"http://127.0.0.1:{floor_port}"
            gateway = started["gateway"].proc.pid
            pids = service_pids(started)
            body = json.dumps(JOB)
            print(f"{label}: {SECONDS} s per measurement (wrk); floor: bare Flask, same gunicorn "
                  f"settings, a JSON body of the same size")
            print(f"  {'endpoint':26s} {'conns':>5s}  {'req/s':>8s} {'p50 ms':>7s} {'p95 ms':>7s}"
                  f"   {'floor req/s':>11s} {'p50 ms':>7s} {'p95 ms':>7s}   ratios (target)")
            for name, method, template, runs in MEASURED:
                url = client.base + template.format(job=job)
                sample = client.session.request(method, url, headers=client.headers,
                                                json=JOB if method == "POST" else None,
                                                timeout=30)
                assert sample.status_code in (200, 202), sample.text
                floor_url = f"{floor_base}/bytes/{len(sample.content)}"
                for connections, (kind, target) in runs:
                    args = dict(method=method, body=body if method == "POST" else None)
                    wrk(floor_url, connections, seconds=1, **args)  # warm-up
                    wrk(url, connections, token=token, seconds=1, **args)
                    floor_workers = children(floor.proc.pid)
                    floor_before = sum(cpu_seconds(pid) for pid in floor_workers)
                    f = wrk(floor_url, connections, **args)
                    floor_cpu = ((sum(cpu_seconds(pid) for pid in floor_workers) - floor_before)
                                 * 1000 / f["requests"])
                    before = {name: cpu_seconds(pid) for name, pid in pids.items()}
                    m = wrk(url, connections, token=token, **args)
                    spent = {name: (cpu_seconds(pid) - before[name]) * 1000 / m["requests"]
                             for name, pid in pids.items()}
                    rps_ratio, p50_ratio = m["rps"] / f["rps"], m["p50"] / f["p50"]
                    ok = rps_ratio >= target if kind == "rps" else p50_ratio <= target
                    met &= ok
                    goal = (f"req/s >= {target:.2f}" if kind == "rps" else f"p50 <= {target:g}x")
                    print(f"  {name:26s} {connections:5d}  {m['rps']:8.1f} {m['p50']:7.1f} "
                          f"{m['p95']:7.1f}   {f['rps']:11.1f} {f['p50']:7.1f} {f['p95']:7.1f}   "
                          f"req/s {rps_ratio:.2f}, p50 {p50_ratio:.1f}x ({goal}: "
                          f"{'PASS' if ok else 'FAIL'})")
                    # where the time went: CPU per request, whatever else loads the machine
                    print(f"  {'':26s} {'':5s}  CPU ms per request: " + ", ".join(
                        f"{name} {ms:.2f}" for name, ms in spent.items() if ms >= 0.05)
                        + f"; the floor's workers {floor_cpu:.2f}")
            # at rest: the load over, the outbox relays and access-log batches done
            time.sleep(5)
            pids["gateway (master)"] = gateway
            sizes = {name: rss_mb(pid) for name, pid in pids.items()}
            ok = max(sizes.values()) <= RSS_LIMIT_MB
            met &= ok
            print(f"  resident at rest (MB, target <= {RSS_LIMIT_MB}: {'PASS' if ok else 'FAIL'}): "
                  + ", ".join(f"{name} {mb:.0f}" for name, mb in sizes.items()))
        finally:
            floor.stop()
    return met


def main() -> None:
    ensure_wrk()
    met = run("SQLite", {})
    with postgres_databases() as urls:
        met &= run("PostgreSQL", urls)
    print(f"read path: {'every target met' if met else 'some targets missed'}")


if __name__ == "__main__":
    main()
