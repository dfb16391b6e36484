"""Authenticated request throughput through the gateway.

Baseline: the gateway with its credential cache off (every request resolves the
token with an RPC to auth). Measured: the default cache. Same auth service,
same machine, same run. Prints requests/s and latency percentiles for both and
their ratio.
"""

from __future__ import annotations

import statistics
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import requests

from bench.stack import processes

REQUESTS = 600
CONCURRENCY = 8


def run(url: str, token: str) -> dict:
    session = requests.Session()
    headers = {"Authorization": f"Bearer {token}"}
    latencies: list[float] = []

    def one(_):
        t0 = time.perf_counter()
        r = session.get(url, headers=headers, timeout=30)
        latencies.append(time.perf_counter() - t0)
        assert r.status_code == 200, r.text

    for _ in range(20):  # warm up the pool and connections
        one(None)
    latencies.clear()
    started = time.perf_counter()
    with ThreadPoolExecutor(CONCURRENCY) as pool:
        list(pool.map(one, range(REQUESTS)))
    elapsed = time.perf_counter() - started
    q = statistics.quantiles(latencies, n=100)
    return {"rps": REQUESTS / elapsed, "p50_ms": q[49] * 1000, "p95_ms": q[94] * 1000}


def main() -> None:
    with processes() as (start, free_port):
        auth, env = start("auth", AUTH_METRICS_PORT=free_port())
        auth.wait_ready(f"http://127.0.0.1:{env['AUTH_METRICS_PORT']}/readyz")
        gateways = {}
        for label, cache in (("baseline (no credential cache)", 0), ("credential cache 15 s", 15)):
            port = free_port()
            gw, _ = start("gateway", GATEWAY_PORT=port, GATEWAY_AUTH_CACHE_SECONDS=cache,
                          RATELIMIT_ENABLED="false", GATEWAY_WORKERS=1)
            gw.wait_ready(f"http://127.0.0.1:{port}/healthz")
            gateways[label] = f"http://127.0.0.1:{port}"

        base = next(iter(gateways.values()))
        email, password = f"bench-{uuid.uuid4().hex[:8]}@example.com", "benchmark passphrase"
        requests.post(f"{base}/v1/auth/register", json={"email": email, "password": password},
                      timeout=30).raise_for_status()
        token = requests.post(f"{base}/v1/auth/login", json={"email": email, "password": password},
                              timeout=30).json()["token"]

        results = {label: run(f"{url}/v1/me", token) for label, url in gateways.items()}
        print(f"GET /v1/me, {REQUESTS} requests, {CONCURRENCY} client threads, 1 gunicorn worker each")
        for label, r in results.items():
            print(f"  {label:32s} {r['rps']:8.1f} req/s   p50 {r['p50_ms']:6.1f} ms   p95 {r['p95_ms']:6.1f} ms")
        (b, m) = results.values()
        print(f"  ratio cached/baseline: {m['rps'] / b['rps']:.2f}x throughput, "
              f"{b['p50_ms'] / m['p50_ms']:.2f}x lower p50")
