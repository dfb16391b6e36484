"""The gateway's edges through the whole stack: crafted pagination cursors on
every list, and a second gateway (the real gunicorn command, one worker)
with an internal port and a small event-stream budget: /metrics and /readyz
only on the internal port, a burst of readiness probes pinging each service
about once, and live progress streams limited per user and per process."""

from __future__ import annotations

import base64
import re
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from tests.conftest import free_port, procfile_commands, wait_for
from tests.e2e.stack import verified_login

pytestmark = pytest.mark.e2e

ROW_ID = "0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b"
LISTS = ("/v1/images", "/v1/generations", "/v1/me/sessions", "/v1/me/api-keys",
         "/v1/billing/ledger", "/v1/billing/orders", "/v1/privacy/requests")


def pack(text: str | bytes) -> str:
    raw = text.encode() if isinstance(text, str) else text
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


CRAFTED = [
    "!!!", "a", "\x00", "é", pack(b"\xff\xfe|x"), pack("[1, 2]"), pack("null"),
    pack(f"2020-01-01T00:00:00|{ROW_ID}"),  # no zone
    pack(f"0001-01-01T00:00:00+14:00|{ROW_ID}"),  # before the year 1 in UTC
    pack(f"9999-12-31T23:59:59-14:00|{ROW_ID}"),  # after the year 9999 in UTC
    pack(f"2020-01-01|{ROW_ID}"), pack(f"99999999-01-01T00:00:00Z|{ROW_ID}"),
    pack("2020-01-01T00:00:00Z|12345678123456781234567812345678"),
    pack("2020-01-01T00:00:00Z|" + "1" * 40), pack(f"2020-01-01T00:00:00Z\x00|{ROW_ID}"),
    pack(f"seq:{2**31}"), pack(f"seq:{2**63}"), pack(f"seq:{10**30}"), pack("seq:-1"), pack("seq:1e9"),
]


@pytest.fixture(scope="module")
def token(stack):
    return verified_login(stack)[2]


@pytest.mark.parametrize("path", LISTS)
def test_a_crafted_cursor_is_400_invalid_request_on_every_list(stack, token, path):
    assert stack.call("GET", path, token=token).status_code == 200
    for cursor in CRAFTED:
        response = stack.call("GET", path, token=token, params={"cursor": cursor})
        assert response.status_code == 400, (path, cursor, response.text)
        assert response.json()["error"]["code"] == "invalid_request", (path, cursor)


# ---------------------------------------------------------------- a second gateway


@pytest.fixture(scope="module")
def edge(stack, start_process):
    """The real gunicorn command, one worker (so its limits are the process's),
    an internal port for /metrics and /readyz, at most 3 event streams."""
    port, internal = free_port(), free_port()
    env = {**stack.env, "GATEWAY_PORT": str(port), "GATEWAY_INTERNAL_PORT": str(internal),
           "GATEWAY_WORKERS": "1", "GATEWAY_THREADS": "12", "GATEWAY_EVENT_STREAMS": "3",
           "GATEWAY_READY_CACHE_SECONDS": "1"}
    proc = start_process("gateway-edges", env, command=procfile_commands()["gateway"])
    proc.public = f"http://127.0.0.1:{port}"
    proc.internal = f"http://127.0.0.1:{internal}"
    proc.wait_ready(f"{proc.internal}/readyz")
    return proc


def test_metrics_and_readiness_answer_only_on_the_internal_port(edge):
    for path in ("/metrics", "/readyz"):
        refused = requests.get(f"{edge.public}{path}", timeout=10)
        assert refused.status_code == 404, path
        assert refused.json()["error"]["code"] == "not_found"
        # no forwarded header turns the public port into the internal one
        assert requests.get(f"{edge.public}{path}", timeout=10, headers={
            "X-Forwarded-Host": edge.internal[len("http://"):], "X-Forwarded-Port": "1",
            "Host": edge.internal[len("http://"):]}).status_code == 404
    ready = requests.get(f"{edge.internal}/readyz", timeout=10)
    assert ready.status_code == 200 and ready.json()["status"] == "ok"
    metrics = requests.get(f"{edge.internal}/metrics", timeout=10)
    assert metrics.status_code == 200 and "darkroom_http_requests_total" in metrics.text
    for base in (edge.public, edge.internal):
        assert requests.get(f"{base}/healthz", timeout=10).status_code == 200
    # the internal port serves health only; the public one the API
    assert requests.get(f"{edge.internal}/v1/openapi.json", timeout=10).status_code == 404
    assert requests.get(f"{edge.public}/v1/openapi.json", timeout=10).status_code == 200


def pings(stack, service: str) -> float:
    """How many ``ping`` RPCs ``service`` has run (its own worker metrics)."""
    port = stack.env[f"{service.upper()}_METRICS_PORT"]
    text = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("darkroom_worker_seconds_count{") and 'entrypoint="ping"' in line)


def test_a_burst_of_readiness_probes_pings_each_service_about_once_a_second(stack, edge):
    time.sleep(1.1)  # whatever the gateway cached before is stale now
    before = {name: pings(stack, name) for name in ("auth", "billing")}
    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=10) as executor:
        statuses = list(executor.map(
            lambda _: requests.get(f"{edge.internal}/readyz", timeout=20).status_code, range(100)))
    elapsed = time.monotonic() - started
    assert statuses == [200] * 100
    time.sleep(0.5)  # a worker's duration is recorded as it finishes

    for name, count in before.items():
        rounds = pings(stack, name) - count
        assert 1 <= rounds <= int(elapsed) + 2, (name, rounds, elapsed)


# ---------------------------------------------------------------- live progress streams


def stream(edge, token: str, job_id: str) -> requests.Response:
    return requests.get(f"{edge.public}/v1/generations/{job_id}/events", stream=True, timeout=30,
                        headers={"Authorization": f"Bearer {token}"})


def balance(stack, token) -> dict:
    return stack.call("GET", "/v1/billing/balance", token=token).json()


def funded_user(stack) -> str:
    token = verified_login(stack)[2]
    wait_for(lambda: balance(stack, token).get("available", 0) > 0, 20, 0.2, "signup grant")
    return token


def submit(stack, token: str, body: dict) -> str:
    response = stack.call("POST", "/v1/generations", token=token, json=body)
    assert response.status_code == 202, response.text
    return response.json()["id"]


def status(stack, token: str, job_id: str) -> str:
    return stack.call("GET", f"/v1/generations/{job_id}", token=token).json()["status"]


def test_one_user_holds_two_streams_the_process_three_and_a_closed_one_frees_its_slot(stack,
                                                                                         edge):
    first, second, third = funded_user(stack), funded_user(stack), funded_user(stack)
    upload = stack.call("POST", "/v1/uploads", token=first, files={
        "file": ("a.png", _png(), "image/png")})
    assert upload.status_code == 201, upload.text
    stack.video.outcome = "never"  # the video runs until told otherwise: its streams stay open
    opened: list[requests.Response] = []
    jobs: list[tuple[str, str]] = []
    try:
        video = submit(stack, first, {"type": "image-to-video", "prompt": "a slow pan",
                                      "source_image_id": upload.json()["id"], "duration_s": 2})
        jobs.append((first, video))
        wait_for(lambda: status(stack, first, video) == "running", 30, 0.2, "the video running")
        # the others' jobs wait behind it (one run slot): not final either
        for token in (second, third):
            jobs.append((token, submit(stack, token, {"type": "text-to-image", "prompt": "a kite",
                                                      "size": "512x512"})))

        for _ in range(2):
            opened.append(stream(edge, first, video))
            assert opened[-1].status_code == 200
        refused = stream(edge, first, video)
        assert refused.status_code == 429
        assert refused.json()["error"]["code"] == "too_many_streams"
        assert refused.headers["Retry-After"]

        opened.append(stream(edge, second, jobs[1][1]))  # another user: not refused
        assert opened[-1].status_code == 200
        full = stream(edge, third, jobs[2][1])  # the process's three are taken
        assert full.status_code == 503
        assert full.json()["error"]["code"] == "service_unavailable"

        opened.pop(0).close()  # a client goes away; the server frees its slot when it notices

        def reopened():
            response = stream(edge, first, video)
            if response.status_code == 200:
                return response
            assert response.status_code == 429, response.text
            response.close()
            return None

        opened.append(wait_for(reopened, 30, 0.5, "the closed stream's slot"))
        assert status(stack, first, video) == "running"  # freed by the disconnect, not the end
    finally:
        stack.video.outcome = "succeeded"
        for response in opened:
            response.close()
        for token, job_id in jobs:
            wait_for(lambda t=token, j=job_id: status(stack, t, j) in (
                "succeeded", "failed", "cancelled", "rejected"), 60, 0.3, "the job to end")


def _png() -> bytes:
    import io

    from PIL import Image

    out = io.BytesIO()
    Image.new("RGB", (64, 48), (30, 90, 160)).save(out, "PNG")
    return out.getvalue()


def test_the_docs_page_and_every_file_it_loads_come_from_the_gateway(stack):
    """/v1/docs (Swagger UI) works offline: the gunicorn gateway serves the
    page and each script and style it names, and the document it shows."""
    page = stack.http.get(f"{stack.base_url}/v1/docs", timeout=10)
    assert page.status_code == 200 and page.headers["Content-Type"].startswith("text/html")
    urls = re.findall(r'(?:src|href)="([^"]+)"', page.text)
    assert len(urls) == 4 and all(url.startswith("/v1/docs/") for url in urls)  # no CDN
    for url in urls:
        served = stack.http.get(f"{stack.base_url}{url}", timeout=10)
        assert served.status_code == 200 and len(served.content) > 100, url
    doc = stack.call("GET", "/v1/openapi.json").json()
    assert doc["openapi"] == "3.1.0" and set(doc["webhooks"]) == {
        "job.started", "job.completed", "job.failed", "job.cancelled"}
