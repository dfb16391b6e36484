"""The ``comfyui`` adapter's parts without a network: the workflow config
(checked at start, naming the provider), filling the graph, picking output
files, classifying a failed run, and the host pool's choices."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import websocket

from services.generation.providers.base import (
    CONTENT_REFUSED,
    PermanentProviderError,
    ProviderRequest,
    TransientProviderError,
)
from services.generation.providers.comfyui import ComfyUIProvider, Workflow
from services.generation.providers.router import ProviderConfigError, build_provider
from tests.fakes.comfyui import IMG2IMG, TXT2IMG

ROOT = Path(__file__).resolve().parents[3]
EXAMPLES = ROOT / "deploy" / "providers"


def studio(**changes) -> dict:
    """The issue's example entry, as the providers file gives it."""
    return {"type": "comfyui", "hosts": ["http://10.0.0.5:8188", "http://10.0.0.6:8188"],
            "max_concurrency": 2, "allow_private_network": True, "region": "on-premises",
            "enabled": True, "job_types": ["text-to-image", "image-to-image"],
            "base_dir": str(EXAMPLES),
            "workflows": {"text-to-image": TXT2IMG, "image-to-image": IMG2IMG}, **changes}


def refused(conf: dict) -> str:
    with pytest.raises(ProviderConfigError) as caught:
        build_provider("studio", conf)
    message = str(caught.value)
    assert message.startswith("providers.studio: "), message
    return message


# ------------------------------------------------------------------ configuration


def test_the_issue_example_with_the_shipped_workflows_builds():
    provider = build_provider("studio", studio())
    assert isinstance(provider, ComfyUIProvider)
    assert provider.job_types == {"text-to-image", "image-to-image"}
    assert [h.url for h in provider.pool.hosts] == ["http://10.0.0.5:8188",
                                                   "http://10.0.0.6:8188"]
    assert provider.pool.max_concurrency == 2
    assert provider.workflows["text-to-image"].batched
    assert not provider.workflows["image-to-image"].batched


def test_the_shipped_workflows_are_standard_sd_checkpoint_graphs_in_api_format():
    for name in ("txt2img.json", "img2img.json"):
        graph = json.loads((EXAMPLES / "comfyui" / name).read_text())
        classes = {node["class_type"] for node in graph.values()}
        assert {"CheckpointLoaderSimple", "CLIPTextEncode", "KSampler", "VAEDecode",
                "SaveImage"} <= classes
        for node in graph.values():  # every link points at a node of the graph
            for value in node["inputs"].values():
                if isinstance(value, list):
                    assert value[0] in graph
    img2img = json.loads((EXAMPLES / "comfyui" / "img2img.json").read_text())
    assert img2img["10"]["class_type"] == "LoadImage"
    assert img2img["3"]["inputs"]["latent_image"] == ["12", 0]  # VAEEncode of the source


def test_a_mapped_node_that_is_not_in_the_workflow_stops_the_start():
    conf = studio(workflows={"text-to-image": {**TXT2IMG, "inputs": {"prompt": "66.text"}}},
                  job_types=None)
    message = refused(conf)
    assert "workflows.text-to-image.inputs.prompt" in message and "'66'" in message


@pytest.mark.parametrize("inputs, words", [
    ({"prompt": "6.txt"}, "has no input 'txt'"),
    ({"prompt": "6"}, "<node id>.<input name>"),
    ({"prompt": []}, "no target"),
    ({"style": "6.text"}, "unknown field"),
])
def test_a_bad_mapping_stops_the_start(inputs, words):
    conf = studio(workflows={"text-to-image": {**TXT2IMG, "inputs": inputs}}, job_types=None)
    assert words in refused(conf)


def test_image_to_image_needs_the_image_input():
    inputs = {k: v for k, v in IMG2IMG["inputs"].items() if k != "image"}
    conf = studio(workflows={"image-to-image": {**IMG2IMG, "inputs": inputs}}, job_types=None)
    assert "workflows.image-to-image.inputs.image" in refused(conf)


def test_workflow_files_that_cannot_work_stop_the_start(tmp_path):
    (tmp_path / "ui.json").write_text(json.dumps({"nodes": [], "links": [], "version": 0.4}))
    (tmp_path / "junk.json").write_text("{not json")
    (tmp_path / "list.json").write_text("[1, 2]")
    for name, words in (("ui.json", "UI-format"), ("junk.json", "is not JSON"),
                        ("list.json", "not an API-format"), ("absent.json", "cannot read")):
        conf = studio(base_dir=str(tmp_path), job_types=None,
                      workflows={"text-to-image": {"file": name, "inputs": {}}})
        assert words in refused(conf), name


@pytest.mark.parametrize("changes, words", [
    ({"workflows": {}}, "workflows"),
    ({"workflows": {"text-to-music": TXT2IMG}}, "unknown job type"),
    ({"workflows": {"text-to-image": {"inputs": {}}}}, "workflows.text-to-image.file"),
    ({"workflows": {"text-to-image": TXT2IMG}}, "workflows.image-to-image: job_types"),
    ({"hosts": []}, "hosts"),
    ({"hosts": ["http://a:8188", "http://a:8188/"]}, "listed twice"),
    ({"hosts": ["ftp://a"]}, "base_url must be an http(s) URL"),
    ({"max_concurrency": 0}, "max_concurrency"),
    ({"health_path": "system_stats"}, "health_path"),
    ({"timeout_s": "soon"}, "could not convert"),
])
def test_a_bad_config_names_the_key(changes, words):
    assert words in refused(studio(**changes))


def test_paths_are_relative_to_base_dir_and_hosts_may_be_one_base_url(tmp_path, monkeypatch):
    (tmp_path / "flows").mkdir()
    (tmp_path / "flows" / "t.json").write_text((EXAMPLES / "comfyui/txt2img.json").read_text())
    conf = {"type": "comfyui", "base_url": "http://127.0.0.1:8188",
            "workflows": {"text-to-image": {"file": "flows/t.json", "inputs": {"prompt": "6.text"}}}}
    provider = build_provider("studio", {**conf, "base_dir": str(tmp_path)})
    assert [h.url for h in provider.pool.hosts] == ["http://127.0.0.1:8188"]
    assert provider.job_types == {"text-to-image"}
    monkeypatch.chdir(tmp_path)  # no base_dir: the current directory
    assert build_provider("studio", conf).job_types == {"text-to-image"}
    absolute = {"file": str(tmp_path / "flows" / "t.json"), "inputs": {"prompt": "6.text"}}
    monkeypatch.chdir(ROOT)
    assert build_provider("studio", {**conf, "workflows": {"text-to-image": absolute}})
    assert build_provider("studio", {**conf, "base_dir": str(tmp_path),
                                     "hosts": "http://a:1, http://b:2"}) \
        .pool.hosts[1].url == "http://b:2"


# ------------------------------------------------------------------ the graph


def workflow(job_type="text-to-image", **changes) -> Workflow:
    conf = {**(TXT2IMG if job_type == "text-to-image" else IMG2IMG), **changes}
    return Workflow.from_config(job_type, conf, EXAMPLES)


def test_build_sets_the_mapped_inputs_on_a_copy():
    flow = workflow()
    request = ProviderRequest("text-to-image", "a fox", negative_prompt="fog", n=3,
                              width=640, height=384)
    graph = flow.build(request, None, 99)
    assert graph["6"]["inputs"]["text"] == "a fox" and graph["7"]["inputs"]["text"] == "fog"
    assert graph["3"]["inputs"]["seed"] == 99
    assert graph["5"]["inputs"] == {"width": 640, "height": 384, "batch_size": 3}
    assert flow.graph["6"]["inputs"]["text"] != "a fox"  # the workflow itself is untouched


def test_fields_without_a_value_keep_the_workflow_values():
    flow = workflow()
    graph = flow.build(ProviderRequest("text-to-image", "a fox"), None, None)
    assert graph["7"]["inputs"]["text"] == flow.graph["7"]["inputs"]["text"]
    assert graph["5"]["inputs"]["width"] == 512 and graph["3"]["inputs"]["seed"] == 8566257


def test_one_field_may_go_to_several_inputs():
    flow = workflow(inputs={"prompt": ["6.text", "7.text"]})
    graph = flow.build(ProviderRequest("text-to-image", "twice"), None, None)
    assert graph["6"]["inputs"]["text"] == graph["7"]["inputs"]["text"] == "twice"
    assert flow.values(ProviderRequest("text-to-image", "twice"), None, 5) == {"prompt": "twice"}


def test_image_to_image_takes_the_uploaded_name_and_the_strength():
    request = ProviderRequest("image-to-image", "ink", strength=0.35, source_image=b"x")
    graph = workflow("image-to-image").build(request, "sub/abc.png", 4)
    assert graph["10"]["inputs"]["image"] == "sub/abc.png"
    assert graph["3"]["inputs"]["denoise"] == 0.35 and graph["3"]["inputs"]["seed"] == 4


# ------------------------------------------------------------------ outputs and failures


def provider(**changes) -> ComfyUIProvider:
    return build_provider("studio", studio(**changes))


def ref(name, kind="output"):
    return {"filename": name, "subfolder": "", "type": kind}


def test_output_files_are_the_saved_ones_in_node_order():
    entry = {"outputs": {"12": {"images": [ref("b.png")]},
                         "9": {"images": [ref("a.png"), ref("p.png", "temp")]},
                         "20": {"gifs": [ref("v.mp4")], "text": ["hello"]},
                         "x": {"images": ["not a dict", {"no": "filename"}]}}}
    names = [f["filename"] for f in provider()._files(entry, workflow())]
    assert names == ["a.png", "b.png", "v.mp4"]


def test_temp_files_count_when_nothing_is_saved_and_named_nodes_take_anything():
    entry = {"outputs": {"9": {"images": [ref("p.png", "temp")]},
                         "12": {"images": [ref("s.png")]}}}
    assert [f["filename"] for f in provider()._files(
        {"outputs": {"9": entry["outputs"]["9"]}}, workflow())] == ["p.png"]
    named = workflow(outputs=["9"])
    assert [f["filename"] for f in provider()._files(entry, named)] == ["p.png"]
    with pytest.raises(TransientProviderError):
        provider()._files({"outputs": None}, workflow())


def test_an_output_node_that_is_not_in_the_workflow_stops_the_start():
    conf = studio(workflows={"text-to-image": {**TXT2IMG, "outputs": ["77"]}}, job_types=None)
    assert "workflows.text-to-image.outputs" in refused(conf)


@pytest.mark.parametrize("messages, error, code", [
    ([["execution_start", {}], ["execution_error", {"exception_type": "RuntimeError",
                                                    "exception_message": "boom"}]],
     TransientProviderError, "provider_task_failed"),
    ([["execution_error", {"exception_type": "NSFWError", "exception_message": "x"}]],
     PermanentProviderError, CONTENT_REFUSED),
    ([["execution_error", {"exception_type": "Exception",
                           "exception_message": "Safety checker flagged the image"}]],
     PermanentProviderError, CONTENT_REFUSED),
    ([["execution_interrupted", {"node_id": "3"}]], TransientProviderError,
     "provider_task_failed"),
    (None, TransientProviderError, "provider_task_failed"),
    ([["odd"], "junk"], TransientProviderError, "provider_task_failed"),
])
def test_a_failed_run_is_classified(messages, error, code):
    failure = provider()._failure(messages)
    assert isinstance(failure, error) and failure.code == code


def test_a_failure_message_shows_the_exception_type_not_its_text():
    failure = provider()._failure([["execution_error", {
        "exception_type": "ValueError", "exception_message": "prompt 'a secret cat' too long"}]])
    assert failure.message == "studio workflow failed: ValueError"


# ------------------------------------------------------------------ the pool


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now

    def sleep(self, seconds):
        self.now += seconds


def pool(monkeypatch, healthy=lambda host: True, **changes):
    clock = Clock()
    comfy = ComfyUIProvider.from_config(
        "studio", studio(**{"hosts": ["http://a:1", "http://b:1", "http://c:1"],
                            "max_concurrency": 1, **changes}),
        sleep=clock.sleep, clock=clock)
    checks = []

    def check(host):
        checks.append(host.url)
        return healthy(host)

    monkeypatch.setattr(comfy.pool, "_healthy", check)
    return comfy.pool, clock, checks


def test_runs_go_to_the_least_busy_host_in_turn(monkeypatch):
    hosts, _, _ = pool(monkeypatch, max_concurrency=2)
    taken = [hosts.acquire().url for _ in range(6)]
    assert sorted(taken) == ["http://a:1", "http://a:1", "http://b:1", "http://b:1",
                             "http://c:1", "http://c:1"]
    assert taken[:3] != taken[3:] or len(set(taken[:3])) == 3
    assert len(set(taken[:3])) == 3  # each host once before any twice
    for host in hosts.hosts:
        hosts.release(host)
        assert host.in_flight == 1


def test_an_unhealthy_host_is_excluded_and_all_busy_waits_then_gives_up(monkeypatch):
    hosts, clock, checks = pool(monkeypatch, healthy=lambda h: h.url != "http://b:1",
                                queue_timeout_s=5, poll_interval_s=1)
    first, second = hosts.acquire(), hosts.acquire()
    assert {first.url, second.url} == {"http://a:1", "http://c:1"}
    assert "http://b:1" in checks
    with pytest.raises(TransientProviderError) as caught:
        hosts.acquire()
    assert caught.value.code == "provider_busy"
    assert 4 <= clock.now <= 5  # waited for a slot, then gave up


def test_no_reachable_host_is_a_connection_failure(monkeypatch):
    hosts, _, _ = pool(monkeypatch, healthy=lambda h: False)
    with pytest.raises(TransientProviderError) as caught:
        hosts.acquire()
    assert caught.value.code == "provider_connection_failed"
    assert all(h.in_flight == 0 for h in hosts.hosts)


def test_a_marked_down_host_comes_back_after_the_interval(monkeypatch):
    hosts, clock, _ = pool(monkeypatch, health_interval_s=10, max_concurrency=5)
    for host in hosts.hosts[1:]:
        hosts.mark_down(host)
    assert {hosts.acquire().url for _ in range(3)} == {"http://a:1"}
    clock.now = 11
    assert {hosts.acquire().url for _ in range(3)} == {"http://b:1", "http://c:1"}


# ------------------------------------------------------------------ follow: websocket


def test_follow_is_history_unless_set_to_websocket():
    assert build_provider("studio", studio()).follow == "history"
    assert build_provider("studio", studio(follow="websocket")).follow == "websocket"
    assert "follow must be one of history, websocket" in refused(studio(follow="sse"))


class Socket:
    """Stands in for a websocket: hands out the frames it is given, then
    raises as a connection that closed."""

    def __init__(self, *frames):
        self.frames, self.timeouts = list(frames), []

    def settimeout(self, seconds):
        self.timeouts.append(seconds)

    def recv(self):
        if not self.frames:
            raise websocket.WebSocketConnectionClosedException("closed")
        return self.frames.pop(0)


def message(kind: str, **data) -> str:
    return json.dumps({"type": kind, "data": data})


@pytest.mark.parametrize("last", [
    message("executing", node=None, prompt_id="p1"),
    message("execution_success", prompt_id="p1"),
    message("execution_error", prompt_id="p1", exception_type="X"),
    message("execution_interrupted", prompt_id="p1"),
])
def test_the_websocket_is_read_until_the_run_ends(last):
    provider = build_provider("studio", studio(follow="websocket", task_timeout_s=60))
    ws = Socket(message("status", status={"exec_info": {"queue_remaining": 1}}, sid="c"),
                b"\x00\x00\x00\x01preview bytes", "not json", json.dumps([1, 2]),
                message("progress", value=3, max=4, prompt_id="other"),
                message("executing", node=None, prompt_id="other"),
                message("executing", node="3", prompt_id="p1"),
                message("progress", value=5, max=20, prompt_id="p1", node="3"),
                message("progress", value="5", max=0, prompt_id="p1", node="3"),
                last, message("executing", node=None, prompt_id="p1"))
    seen = []
    provider._follow(ws, "p1", provider.clock() + 60, seen.append)
    assert seen == [0.25]
    assert ws.frames == [message("executing", node=None, prompt_id="p1")]  # stopped at the end
    assert all(0 < t <= 60 for t in ws.timeouts)


def test_a_socket_that_closes_or_a_passed_deadline_hands_over_to_history():
    provider = build_provider("studio", studio(follow="websocket"))
    closed = Socket(message("executing", node="3", prompt_id="p1"))
    provider._follow(closed, "p1", provider.clock() + 60, lambda done: None)
    assert closed.frames == []
    late = Socket(message("executing", node=None, prompt_id="p1"))
    provider._follow(late, "p1", provider.clock() - 1, lambda done: None)
    assert late.timeouts == [] and len(late.frames) == 1  # not even read
