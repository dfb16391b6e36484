"""The ``comfyui`` adapter against fake ComfyUI servers over real loopback HTTP
(tests/fakes/comfyui.py), with the example workflows shipped under
deploy/providers/comfyui: what is sent, each failure's class, the host pool
(per-host concurrency, health checks, a dead host) and that nothing
identifying an account reaches a host."""

from __future__ import annotations

import io
import json
import threading
import time
from pathlib import Path

import pytest
from PIL import Image

from services.generation.providers.base import (
    CONTENT_REFUSED,
    PermanentProviderError,
    TransientProviderError,
)
from services.generation.providers.comfyui import ComfyUIProvider, open_websocket
from services.generation.providers.http import ProviderHttp
from services.generation.providers.router import build_router
from tests.fakes.comfyui import IMG2IMG, TXT2IMG, FakeComfyUI
from tests.fakes.providers import mp4_bytes, png_bytes
from tests.integration.test_generation_providers import JOB as GENERATION_JOB
from tests.integration.test_generation_providers import provider_request

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
# What the service knows about the job's owner (and where the request came
# from); none of it may reach a host.
JOB = {**GENERATION_JOB, "ip": "203.0.113.77"}
IDENTITY = [JOB[k] for k in (
    "job_id", "user_id", "email", "api_key", "webhook_url", "ip")]
ALLOWED_HEADERS = {"host", "user-agent", "accept-encoding", "accept", "connection",
                   "content-length", "content-type"}


def conf(*fakes, **changes) -> dict:
    return {"type": "comfyui", "hosts": [f.url for f in fakes], "allow_private_network": True,
            "region": "on-premises", "base_dir": str(ROOT / "deploy" / "providers"),
            "timeout_s": 2, "poll_interval_s": 0.01, "task_timeout_s": 3,
            "health_interval_s": 30, "queue_timeout_s": 2,
            "workflows": {"text-to-image": TXT2IMG, "image-to-image": IMG2IMG}, **changes}


def comfy(*fakes, **changes) -> ComfyUIProvider:
    return ComfyUIProvider.from_config("studio", conf(*fakes, **changes))


@pytest.fixture
def fake():
    with FakeComfyUI(hang_s=3) as server:
        yield server


@pytest.fixture
def second():
    with FakeComfyUI(hang_s=3) as server:
        yield server


def submitted(fake) -> list[dict]:
    return [r.json() for r in fake.requests_to("/prompt", "POST")]


def assert_only_whitelisted(fake) -> None:
    """No identifier of the account in any path, header or body; and the only
    JSON sent is the graph + a random client id, or the queue/history calls."""
    assert fake.requests, "the fake received nothing"
    for recorded in fake.requests:
        assert {h.lower() for h in recorded.headers} <= ALLOWED_HEADERS, recorded.headers
        raw = json.dumps(recorded.headers) + recorded.path + recorded.body.decode("latin-1")
        for value in IDENTITY:
            assert value not in raw
        if recorded.path == "/prompt":
            assert set(recorded.json()) == {"prompt", "client_id"}
        elif recorded.path in ("/queue", "/history", "/interrupt") and recorded.method == "POST":
            assert set(recorded.json()) <= {"delete", "prompt_id"}


# ------------------------------------------------------------------ success


def test_text_to_image_fills_the_mapped_inputs_and_fetches_the_outputs(fake):
    events = []
    result = comfy(fake).generate(provider_request(JOB),
                                  lambda fraction, stage: events.append((fraction, stage)))
    assert [(o.content_type, o.width, o.height) for o in result.outputs] == \
        [("image/png", 64, 48)] * 2
    for output in result.outputs:
        Image.open(io.BytesIO(output.data)).verify()
    [body] = submitted(fake)
    graph = body["prompt"]
    shipped = json.loads((ROOT / "deploy/providers/comfyui/txt2img.json").read_text())
    assert graph["6"]["inputs"]["text"] == "a paper boat on a puddle"
    assert graph["7"]["inputs"]["text"] == "blurry"
    assert graph["3"]["inputs"]["seed"] == 11
    assert graph["5"]["inputs"] == {"width": 64, "height": 48, "batch_size": 2}
    # everything not mapped is the operator's workflow, unchanged
    for node in ("4", "8", "9"):
        assert graph[node] == shipped[node]
    assert {k: v for k, v in graph["3"]["inputs"].items() if k != "seed"} == \
        {k: v for k, v in shipped["3"]["inputs"].items() if k != "seed"}
    assert len(body["client_id"]) == 32
    views = fake.requests_to("/view", "GET")
    assert len(views) == 2 and all("type=output" in v.path for v in views)
    # the prompt does not stay in the server's history
    assert fake.requests_to("/history", "POST")[0].json() == {"delete": [list(fake.prompts)[0]]}
    assert fake.history == {}
    assert [stage for _, stage in events][0] == "submitting"
    assert events[-1] == (1.0, "downloaded")
    assert [f for f, _ in events] == sorted(f for f, _ in events)
    assert_only_whitelisted(fake)


def test_image_to_image_uploads_the_source_and_loads_it(fake):
    source = png_bytes(40, 30)
    request = provider_request(JOB, job_type="image-to-image", n=1, strength=0.4,
                               source_image=source, source_content_type="image/png")
    result = comfy(fake).generate(request)
    assert [(o.width, o.height) for o in result.outputs] == [(40, 30)]
    [upload] = fake.requests_to("/upload/image", "POST")
    assert upload.header("Content-Type").startswith("multipart/form-data")
    [(name, data)] = fake.uploads.items()
    assert data == source and name.endswith(".png")
    assert len(name) == len("0" * 24 + ".png")  # a random name, nothing of ours
    graph = submitted(fake)[0]["prompt"]
    assert graph["10"]["inputs"]["image"] == name
    assert graph["3"]["inputs"]["denoise"] == 0.4
    assert graph["6"]["inputs"]["text"] == "a paper boat on a puddle"
    assert graph["7"]["inputs"]["text"] != "blurry"  # not mapped for img2img: not sent
    assert_only_whitelisted(fake)


def test_nothing_identifying_reaches_the_host_in_any_request(fake):
    """The minimisation proof: a job with account identifiers in its context
    becomes requests that carry only the whitelisted fields."""
    request = provider_request(JOB, job_type="image-to-image", n=1,
                               source_image=png_bytes(32, 32), source_content_type="image/png")
    comfy(fake).generate(request)
    comfy(fake).generate(provider_request(JOB))
    paths = {(r.method, r.path.split("?")[0].rsplit("/", 1)[0] if r.path.startswith("/history/")
              else r.path.split("?")[0]) for r in fake.requests}
    assert paths == {("GET", "/system_stats"), ("POST", "/upload/image"), ("POST", "/prompt"),
                     ("GET", "/history"), ("GET", "/view"), ("POST", "/history")}
    for recorded in fake.requests:
        assert recorded.header("Authorization") is None
    assert_only_whitelisted(fake)
    # the graph's text inputs are the operator's workflow or the request's own text
    for body in submitted(fake):
        texts = {n["inputs"].get("text") for n in body["prompt"].values()} - {None}
        assert "a paper boat on a puddle" in texts


def test_without_a_batch_mapping_n_is_several_runs_with_consecutive_seeds(fake):
    inputs = {k: v for k, v in TXT2IMG["inputs"].items() if k != "n"}
    provider = comfy(fake, workflows={"text-to-image": {**TXT2IMG, "inputs": inputs}})
    result = provider.generate(provider_request(JOB, n=3))
    assert len(result.outputs) == 3
    seeds = [body["prompt"]["3"]["inputs"]["seed"] for body in submitted(fake)]
    assert seeds == [11, 12, 13]
    assert all(body["prompt"]["5"]["inputs"]["batch_size"] == 1 for body in submitted(fake))


def test_without_a_seed_a_random_one_is_sent(fake):
    provider = comfy(fake)
    provider.generate(provider_request(JOB, seed=None, n=1))
    provider.generate(provider_request(JOB, seed=None, n=1))
    seeds = [body["prompt"]["3"]["inputs"]["seed"] for body in submitted(fake)]
    assert seeds[0] != seeds[1] and 8566257 not in seeds


def test_routes_under_api_work_as_well(fake):
    """ComfyUI serves every route under /api too; a host URL ending in /api works."""
    result = ComfyUIProvider.from_config("studio", {**conf(fake), "hosts": [fake.url + "/api"]}) \
        .generate(provider_request(JOB, n=1))
    assert len(result.outputs) == 1
    assert all(r.path.startswith("/api/") for r in fake.requests)


def test_an_image_to_video_workflow_returns_the_video_it_saved(fake, tmp_path):
    graph = json.loads((ROOT / "deploy/providers/comfyui/img2img.json").read_text())
    (tmp_path / "i2v.json").write_text(json.dumps(graph))
    real_route = fake.route

    def video(request):
        if request.path.startswith("/view"):
            return 200, {"Content-Type": "video/mp4"}, mp4_bytes(48, 32)
        return real_route(request)

    fake.route = video
    provider = comfy(fake, base_dir=str(tmp_path), workflows={"image-to-video": {
        "file": "i2v.json", "inputs": {"prompt": "6.text", "image": "10.image"}}})
    assert provider.job_types == {"image-to-video"}
    request = provider_request(JOB, job_type="image-to-video", n=1, duration_s=1.0,
                               source_image=png_bytes(48, 32), source_content_type="image/png")
    [output] = provider.generate(request).outputs
    assert (output.content_type, output.width, output.height) == ("video/mp4", 48, 32)
    assert output.duration_s and output.duration_s > 0


def test_an_api_key_goes_to_the_host_as_a_bearer_token():
    """For a reverse proxy in front of ComfyUI; without api_key nothing is sent."""
    with FakeComfyUI(api_key="proxy-token") as guarded:
        comfy(guarded, api_key="proxy-token").generate(provider_request(JOB, n=1))
        assert all(r.header("Authorization") == "Bearer proxy-token" for r in guarded.requests)
        with pytest.raises(PermanentProviderError) as caught:
            comfy(guarded, api_key="wrong").generate(provider_request(JOB, n=1))
        assert caught.value.code == "provider_auth_failed"


def test_keep_history_leaves_the_entry(fake):
    comfy(fake, keep_history=True).generate(provider_request(JOB, n=1))
    assert fake.requests_to("/history", "POST") == [] and len(fake.history) == 1


# ------------------------------------------------------------------ errors


@pytest.mark.parametrize("behaviour, error, code", [
    (400, PermanentProviderError, "provider_rejected_request"),  # node_errors
    (500, TransientProviderError, "provider_server_error"),
    (503, TransientProviderError, "provider_server_error"),
    (429, TransientProviderError, "provider_rate_limited"),
    (404, PermanentProviderError, "provider_rejected_request"),
    ("refuse", PermanentProviderError, CONTENT_REFUSED),
    ("garbage", TransientProviderError, "invalid_provider_output"),
    ("redirect", TransientProviderError, "invalid_provider_output"),
])
def test_submission_failures_are_classified(fake, behaviour, error, code):
    fake.fail_next(behaviour)
    with pytest.raises(error) as caught:
        comfy(fake).generate(provider_request(JOB))
    assert caught.value.code == code
    if behaviour == 429:
        assert caught.value.retry_after == 0


def test_a_graph_that_does_not_validate_is_permanent_and_names_no_prompt(fake, tmp_path):
    broken = json.loads((ROOT / "deploy/providers/comfyui/txt2img.json").read_text())
    broken["3"]["inputs"]["model"] = ["99", 0]  # a link to a node that is not there
    (tmp_path / "broken.json").write_text(json.dumps(broken))
    provider = comfy(fake, base_dir=str(tmp_path),
                     workflows={"text-to-image": {**TXT2IMG, "file": "broken.json"}})
    with pytest.raises(PermanentProviderError) as caught:
        provider.generate(provider_request(JOB))
    assert caught.value.code == "provider_rejected_request" and caught.value.status == 400
    assert "paper boat" not in caught.value.message


def test_a_failed_run_is_transient_and_names_the_exception_type_only(fake):
    fake.outcome = "failed"
    with pytest.raises(TransientProviderError) as caught:
        comfy(fake).generate(provider_request(JOB))
    assert caught.value.code == "provider_task_failed"
    assert "torch.OutOfMemoryError" in caught.value.message
    assert "CUDA" not in caught.value.message


def test_a_safety_node_refusing_is_a_content_refusal(fake):
    fake.outcome = "failed"
    fake.failure = {"exception_type": "NSFWContentDetected",
                    "exception_message": "Safety checker flagged the output as NSFW"}
    with pytest.raises(PermanentProviderError) as caught:
        comfy(fake).generate(provider_request(JOB))
    assert caught.value.code == CONTENT_REFUSED


def test_a_run_that_never_finishes_is_taken_off_the_queue_and_interrupted(fake):
    fake.outcome = "never"
    started = time.monotonic()
    with pytest.raises(TransientProviderError) as caught:
        comfy(fake, task_timeout_s=0.3).generate(provider_request(JOB))
    assert caught.value.code == "provider_timeout"
    assert time.monotonic() - started < 2
    [prompt_id] = fake.prompts
    assert fake.requests_to("/queue", "GET")
    assert fake.requests_to("/queue", "POST")[0].json() == {"delete": [prompt_id]}
    assert fake.interrupted == [prompt_id]  # it was running
    assert_only_whitelisted(fake)


def test_a_host_that_hangs_times_out(fake):
    fake.fail_next("hang")
    started = time.monotonic()
    with pytest.raises(TransientProviderError) as caught:
        comfy(fake, timeout_s=0.3).generate(provider_request(JOB))
    assert caught.value.code == "provider_timeout"
    assert time.monotonic() - started < 2


def test_a_few_failing_polls_are_tolerated(fake):
    real_route = fake.route
    failures = iter([True, True])

    def flaky(request):
        if request.path.startswith("/history/") and next(failures, False):
            return 502, {}, b""
        return real_route(request)

    fake.route = flaky
    assert len(comfy(fake).generate(provider_request(JOB)).outputs) == 2


def test_a_missing_output_file_is_a_malformed_answer(fake):
    real_route = fake.route

    def no_files(request):
        if request.path.startswith("/view"):
            return 404, {}, b""
        return real_route(request)

    fake.route = no_files
    with pytest.raises(TransientProviderError) as caught:
        comfy(fake).generate(provider_request(JOB))
    assert caught.value.code == "invalid_provider_output"


def test_a_run_without_output_files_is_a_malformed_answer(fake, tmp_path):
    graph = json.loads((ROOT / "deploy/providers/comfyui/txt2img.json").read_text())
    graph["9"]["class_type"] = "PreviewImage"
    (tmp_path / "preview.json").write_text(json.dumps(graph))
    provider = comfy(fake, base_dir=str(tmp_path), workflows={
        "text-to-image": {**TXT2IMG, "file": "preview.json", "outputs": ["8"]}})
    with pytest.raises(TransientProviderError) as caught:
        provider.generate(provider_request(JOB))
    assert caught.value.code == "invalid_provider_output"


def test_preview_images_are_used_when_nothing_is_saved(fake, tmp_path):
    graph = json.loads((ROOT / "deploy/providers/comfyui/txt2img.json").read_text())
    graph["9"]["class_type"] = "PreviewImage"
    (tmp_path / "preview.json").write_text(json.dumps(graph))
    provider = comfy(fake, base_dir=str(tmp_path),
                     workflows={"text-to-image": {**TXT2IMG, "file": "preview.json"}})
    assert len(provider.generate(provider_request(JOB)).outputs) == 2
    assert all("type=temp" in v.path for v in fake.requests_to("/view"))


# ------------------------------------------------------------------ the pool


def test_an_unhealthy_host_is_skipped(fake, second):
    fake.healthy = False
    provider = comfy(fake, second)
    for _ in range(3):
        provider.generate(provider_request(JOB, n=1))
    assert submitted(fake) == [] and len(submitted(second)) == 3
    assert len(fake.requests_to("/system_stats")) == 1  # not asked again within the interval
    assert len(second.requests_to("/system_stats")) == 1


def test_a_dead_host_is_skipped_and_rechecked_after_the_interval(second):
    now = [0.0]
    with FakeComfyUI() as dead:
        url = dead.url
    provider = ComfyUIProvider.from_config(
        "studio", {**conf(second), "hosts": [url, second.url]}, clock=lambda: now[0])
    for _ in range(2):  # the second run's turn is the dead host: it hands over
        assert len(provider.generate(provider_request(JOB, n=1)).outputs) == 1
    assert len(submitted(second)) == 2
    assert provider.pool.hosts[0].down_until == 30
    now[0] = 31
    for _ in range(2):
        provider.generate(provider_request(JOB, n=1))
    assert len(submitted(second)) == 4
    assert provider.pool.hosts[0].down_until == 61  # checked again, still dead


def test_a_host_failing_the_submission_hands_the_run_over(fake, second):
    provider = comfy(fake, second)
    fake.fail_next(503, 503, 503)
    for _ in range(3):
        assert len(provider.generate(provider_request(JOB, n=1)).outputs) == 1
    assert len(fake.requests_to("/prompt", "POST")) == 1  # then it was skipped
    assert len(submitted(second)) == 3
    assert provider.pool.hosts[0].down_until > 0


def test_a_submission_that_times_out_is_not_handed_over(fake, second):
    provider = comfy(fake, second, timeout_s=0.3)
    provider.generate(provider_request(JOB, n=1))  # the first turn: the second host
    fake.fail_next("hang")
    with pytest.raises(TransientProviderError) as caught:
        provider.generate(provider_request(JOB, n=1))  # it may have been queued
    assert caught.value.code == "provider_timeout"
    assert len(submitted(second)) == 1


def test_every_host_down_is_transient(fake):
    fake.healthy = False
    with pytest.raises(TransientProviderError) as caught:
        comfy(fake).generate(provider_request(JOB))
    assert caught.value.code == "provider_connection_failed"


def test_per_host_concurrency_spreads_runs_and_makes_the_next_wait(fake, second):
    provider = comfy(fake, second, max_concurrency=1, queue_timeout_s=5)
    fake.hold.set()
    second.hold.set()
    results, errors = [], []

    def run():
        try:
            results.append(provider.generate(provider_request(JOB, n=1)))
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(3)]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + 3
    while len(fake.prompts) + len(second.prompts) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.1)
    # one run per host; the third waits for a slot
    assert (len(fake.prompts), len(second.prompts)) == (1, 1)
    assert [h.in_flight for h in provider.pool.hosts] == [1, 1]
    fake.hold.clear()
    second.hold.clear()
    for thread in threads:
        thread.join(5)
    assert errors == [] and len(results) == 3
    assert len(fake.prompts) + len(second.prompts) == 3
    assert [h.in_flight for h in provider.pool.hosts] == [0, 0]


def test_every_host_busy_beyond_the_queue_timeout_is_transient(fake):
    provider = comfy(fake, max_concurrency=1, queue_timeout_s=0.2)
    provider.pool.hosts[0].in_flight = 1  # a run of this process holds the slot
    with pytest.raises(TransientProviderError) as caught:
        provider.generate(provider_request(JOB))
    assert caught.value.code == "provider_busy"
    assert submitted(fake) == []


def test_the_router_builds_the_pool_from_the_providers_file_shape(fake, second):
    router = build_router({"providers": {"studio": conf(fake, second, max_concurrency=2)},
                           "routes": {"text-to-image": ["studio"],
                                      "image-to-image": ["studio"]}})
    routed = router.run(provider_request(JOB))
    assert routed.provider == "studio" and len(routed.result.outputs) == 2


def test_the_router_leaves_comfyuis_per_host_limit_to_the_pool(fake, second):
    router = build_router({"providers": {"studio": conf(fake, second, max_concurrency=2),
                                         "local": {"type": "local", "max_concurrency": 1}}})
    assert set(router.slots) == {"local"}  # the pool limits per host, the router does not


# ------------------------------------------------------------------ follow: websocket

WS_HEADERS = {"host", "upgrade", "connection", "sec-websocket-key", "sec-websocket-version"}


def history_polls(fake) -> list:
    return fake.requests_to("/history/", "GET")


def test_following_over_the_websocket_needs_no_history_polling(fake):
    events = []
    result = comfy(fake, follow="websocket").generate(
        provider_request(JOB), lambda fraction, stage: events.append((fraction, stage)))
    assert [(o.content_type, o.width, o.height) for o in result.outputs] == \
        [("image/png", 64, 48)] * 2
    [socket_request] = fake.requests_to("/ws")
    [body] = submitted(fake)
    # the websocket listens for the very client id the prompt was submitted with
    assert socket_request.path == f"/ws?clientId={body['client_id']}"
    assert {h.lower() for h in socket_request.headers} <= WS_HEADERS, socket_request.headers
    raw = json.dumps(socket_request.headers) + socket_request.path
    assert not [value for value in IDENTITY if value in raw]
    # the run ended on the socket: /history was read once, for the outputs
    assert len(history_polls(fake)) == 1
    assert [m["type"] for m in fake.ws_sent][-1] == "executing"
    running = [f for f, stage in events if stage == "running"]
    assert len(running) == 2 and running == sorted(running) and running[-1] <= 0.9
    assert [f for f, _ in events] == sorted(f for f, _ in events)
    assert events[-1] == (1.0, "downloaded")
    assert fake.history == {}  # deleted as without the websocket
    deadline = time.monotonic() + 2
    while fake.sockets and time.monotonic() < deadline:
        time.sleep(0.01)
    assert fake.sockets == {}  # closed after the run
    assert_only_whitelisted_but_the_socket(fake)


def assert_only_whitelisted_but_the_socket(fake) -> None:
    fake.requests = [r for r in fake.requests if not r.path.startswith("/ws")]
    assert_only_whitelisted(fake)


def test_several_runs_share_one_websocket(fake, tmp_path):
    workflow = {**TXT2IMG, "inputs": {k: v for k, v in TXT2IMG["inputs"].items() if k != "n"}}
    result = comfy(fake, follow="websocket", workflows={"text-to-image": workflow}).generate(
        provider_request(JOB, n=3))
    assert len(result.outputs) == 3
    assert len(fake.requests_to("/ws")) == 1
    assert len({b["client_id"] for b in submitted(fake)}) == 1
    assert len(history_polls(fake)) == 3  # once per run, after its end


@pytest.mark.parametrize("failure, error, code", [
    ({"exception_type": "torch.OutOfMemoryError", "exception_message": "CUDA out of memory"},
     TransientProviderError, "provider_task_failed"),
    ({"exception_type": "NSFWContentDetected", "exception_message": "flagged as NSFW"},
     PermanentProviderError, CONTENT_REFUSED),
])
def test_an_execution_error_on_the_websocket_fails_the_run(fake, failure, error, code):
    fake.outcome, fake.failure = "failed", failure
    with pytest.raises(error) as caught:
        comfy(fake, follow="websocket").generate(provider_request(JOB))
    assert caught.value.code == code
    assert "CUDA" not in caught.value.message
    assert "execution_error" in [m["type"] for m in fake.ws_sent]
    assert len(history_polls(fake)) == 1
    assert fake.history == {}


def test_without_a_websocket_the_run_is_followed_through_history(fake):
    fake.websocket = False  # /ws answers 404
    result = comfy(fake, follow="websocket").generate(provider_request(JOB))
    assert len(result.outputs) == 2
    assert fake.requests_to("/ws") and fake.ws_sent == []
    assert len(history_polls(fake)) == fake.polls_to_finish


def test_a_websocket_that_breaks_off_hands_over_to_history(fake):
    fake.ws_drop_after = 2
    result = comfy(fake, follow="websocket").generate(provider_request(JOB))
    assert len(result.outputs) == 2
    assert len(fake.ws_sent) == 1 + 2  # the status, then two of the run's messages
    assert len(history_polls(fake)) == fake.polls_to_finish


def test_a_silent_websocket_times_out_and_cancels_the_run(fake):
    fake.outcome = "never"
    started = time.monotonic()
    with pytest.raises(TransientProviderError) as caught:
        comfy(fake, follow="websocket", task_timeout_s=0.3).generate(provider_request(JOB))
    assert caught.value.code == "provider_timeout"
    assert time.monotonic() - started < 2
    [prompt_id] = fake.prompts
    assert fake.requests_to("/queue", "POST")[0].json() == {"delete": [prompt_id]}
    assert fake.interrupted == [prompt_id]


def test_the_websocket_goes_through_the_private_network_rule(fake):
    with pytest.raises(TransientProviderError) as caught:
        open_websocket(ProviderHttp("studio", fake.url), "/ws?clientId=x")
    assert caught.value.code == "invalid_provider_output"
    # a name that resolves to a public address for the check but connects to
    # loopback (DNS rebinding) is refused once connected, before the handshake
    port = fake.url.rsplit(":", 1)[1]
    rebound = ProviderHttp("studio", f"http://localhost:{port}",
                           resolver=lambda host, port: ["203.0.113.5"])
    with pytest.raises(TransientProviderError) as caught:
        open_websocket(rebound, "/ws?clientId=x")
    assert caught.value.code == "invalid_provider_output"
    assert fake.requests_to("/ws") == []
    # allowed, it connects (and sends the key to its own host only)
    http = ProviderHttp("studio", fake.url, "proxy-key", allow_private_network=True)
    ws = open_websocket(http, "/ws?clientId=x")
    try:
        assert json.loads(ws.recv())["type"] == "status"
    finally:
        ws.close()
    assert fake.requests_to("/ws")[0].header("Authorization") == "Bearer proxy-key"
