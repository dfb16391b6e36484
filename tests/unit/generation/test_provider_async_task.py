"""The generic ``async_task`` adapter without a network: JSON pointers (RFC
6901) read and written, the protocol's settings checked at start, exactly
what would be sent, and how a task's answers are read."""

from __future__ import annotations

import base64

import pytest

from services.generation.providers.async_task import (
    DEFAULT_INPUTS,
    AsyncTaskProvider,
    TaskApi,
    pointer_tokens,
    put,
    resolve,
)
from services.generation.providers.base import (
    CONTENT_REFUSED,
    PermanentProviderError,
    ProviderRequest,
    Shot,
    TransientProviderError,
)
from services.generation.providers.config import load_providers_file
from services.generation.providers.router import ProviderConfigError, build_provider
from tests.fakes.providers import png_bytes

BASE = {"type": "async_task", "base_url": "https://video.example", "api_key": "k",
        "region": "us"}
VENDOR = {**BASE, "submit": {"path": "/v2/videos"},
          "inputs": {"prompt": "/input/prompt", "image_data_uri": "/input/image"},
          "task_id": "/data/task/id", "poll": {"path": "/v2/videos/{id}"},
          "status": "/data/state",
          "statuses": {"running": ["PENDING", "RUNNING"], "succeeded": ["SUCCESS"],
                       "failed": ["FAILED"], "refused": ["BLOCKED"], "ended": ["CANCELLED"]},
          "progress": "/data/percent", "progress_scale": 100, "result_urls": "/data/outputs",
          "error_code": "/data/error/code", "error_message": "/data/error/message",
          "error_retryable": None, "refused_codes": ["nsfw_image"],
          "cancel": {"method": "POST", "path": "/v2/videos/{id}/cancel"}}


def provider(**conf) -> AsyncTaskProvider:
    return build_provider("video", {k: v for k, v in conf.items() if v is not ...})


def video_request(**kw) -> ProviderRequest:
    return ProviderRequest(**{"job_type": "image-to-video", "prompt": "a kite",
                              "source_image": png_bytes(8, 8),
                              "source_content_type": "image/png", **kw})


# ------------------------------------------------------------------ JSON pointers


@pytest.mark.parametrize("text, tokens", [
    ("", ()),
    ("/id", ("id",)),
    ("/data/task/id", ("data", "task", "id")),
    ("/a~1b/m~0n", ("a/b", "m~n")),   # RFC 6901's escapes
    ("/", ("",)),                     # the key "" is a key
    ("/output/results/0/url", ("output", "results", "0", "url")),
])
def test_a_pointer_is_split_and_unescaped_as_rfc_6901_says(text, tokens):
    assert pointer_tokens(text, "k") == tokens


@pytest.mark.parametrize("text", ["id", "data/id", "/a~2b", "/a~", 7, None, "/a\nb"])
def test_a_malformed_pointer_is_refused_naming_the_key(text):
    with pytest.raises(ValueError, match="^task_id: .* is not a JSON pointer"):
        pointer_tokens(text, "task_id")


def test_the_whole_document_is_no_place_to_write():
    with pytest.raises(ValueError, match="inputs.prompt"):
        pointer_tokens("", "inputs.prompt", write=True)


def test_resolve_reads_objects_and_arrays_and_misses_quietly():
    doc = {"data": {"items": [{"url": "u0"}, {"url": "u1"}], "a/b": 1, "": 2, "0": "key"}}
    assert resolve(doc, ("data", "items", "1", "url")) == "u1"
    assert resolve(doc, ("data", "a/b")) == 1
    assert resolve(doc, ("data", "")) == 2
    assert resolve(doc, ("data", "0")) == "key"             # an object's key "0"
    assert resolve(doc, ()) is doc
    for missing in [("data", "items", "2"), ("data", "items", "01"), ("data", "items", "-"),
                    ("data", "nope"), ("data", "a/b", "x"), ("data", "items", "x")]:
        assert resolve(doc, missing, "absent") == "absent"


def test_put_makes_objects_and_arrays_in_order():
    body: dict = {}
    put(body, ("content", "0", "type"), "text")
    put(body, ("content", "0", "text"), "a kite")
    put(body, ("content", "1", "image_url", "url"), "data:...")
    put(body, ("tags", "-"), "x")
    put(body, ("tags", "-"), "y")
    assert body == {"content": [{"type": "text", "text": "a kite"},
                                {"image_url": {"url": "data:..."}}], "tags": ["x", "y"]}


@pytest.mark.parametrize("first, second", [
    (("a",), ("a",)),                    # twice at one place
    (("a",), ("a", "b")),                # into a value
    (("list", "0"), ("list", "0")),      # one array item twice
    (("list", "0"), ("list", "x")),      # an array is indexed by numbers
])
def test_put_refuses_a_conflict(first, second):
    body: dict = {}
    put(body, first, 1)
    with pytest.raises(ValueError):
        put(body, second, 2)


def test_an_array_item_past_the_end_is_an_error_at_start_and_the_next_item_at_run_time():
    with pytest.raises(ValueError, match="comes before"):
        put({}, ("list", "1"), "x")
    body: dict = {}
    put(body, ("list", "1"), "x", strict=False)
    assert body == {"list": ["x"]}


# ------------------------------------------------------------------ the defaults


def test_the_defaults_are_the_original_protocol():
    video = provider(**BASE)
    api = video.api
    assert (api.submit.method, api.submit.path) == ("POST", "/v1/tasks")
    assert (api.poll.method, api.poll.path) == ("GET", "/v1/tasks/{id}")
    assert (api.cancel.method, api.cancel.path) == ("DELETE", "/v1/tasks/{id}")
    assert api == TaskApi()
    assert video.job_types == frozenset({"image-to-video"})
    assert video.http.auth_header == "Authorization" and video.http.auth_scheme == "Bearer"
    request = video_request(negative_prompt="fog", seed=3, width=64, height=32, strength=0.5,
                            duration_s=4.0, shots=(Shot("up", "tilt_up", 2.0),))
    body = video.payload(request)
    assert body == {"type": "image-to-video", "prompt": "a kite", "negative_prompt": "fog",
                    "seed": 3, "width": 64, "height": 32, "n": 1, "strength": 0.5,
                    "duration_s": 4.0,
                    "image": {"content_type": "image/png",
                              "data": base64.b64encode(png_bytes(8, 8)).decode()},
                    "shots": [{"prompt": "up", "camera": "tilt_up", "duration_s": 2.0}]}
    assert list(body) == [DEFAULT_INPUTS_KEY[f] for f in DEFAULT_INPUTS if f != "model"]
    assert provider(**BASE, model="m-1").payload(video_request())["model"] == "m-1"


DEFAULT_INPUTS_KEY = {field: pointer[1:] for field, pointer in DEFAULT_INPUTS.items()}


# ------------------------------------------------------------------ a vendor's mapping


def test_a_vendors_mapping_places_the_fields_it_names_and_nothing_else():
    video = provider(**{**VENDOR, "model": "i2v-2",
                        "inputs": {"model": "/model", "prompt": "/content/0/text",
                                   "image_data_uri": "/content/1/image_url/url",
                                   "size": "/parameters/size", "seed": "/parameters/seed",
                                   "image_content_type": "/content/1/mime"},
                        "fixed_inputs": {"/content/0/type": "text",
                                         "/content/1/type": "image_url",
                                         "/parameters/watermark": False}})
    body = video.payload(video_request(negative_prompt="fog", width=64, height=32))
    uri = "data:image/png;base64," + base64.b64encode(png_bytes(8, 8)).decode()
    assert body == {"model": "i2v-2",
                    "content": [{"type": "text", "text": "a kite"},
                                {"type": "image_url", "image_url": {"url": uri},
                                 "mime": "image/png"}],
                    "parameters": {"size": "64x32", "watermark": False}}  # no seed: none given


def test_the_vendors_answers_are_read_where_the_config_says(monkeypatch):
    video = provider(**VENDOR)
    answers = iter([{"data": {"state": "PENDING", "percent": 10}},
                    {"data": {"state": "RUNNING", "percent": 50}},
                    {"data": {"state": "SUCCESS", "outputs": ["https://cdn.example/v.mp4"]}}])
    calls = []
    monkeypatch.setattr(video, "_call",
                        lambda call, task_id=None, payload=None:
                        calls.append((call.method, call.path_for(task_id))) or next(answers))
    video.sleep = lambda s: None
    events = []
    done = video._wait("t/1", lambda f, s: events.append((round(f, 2), s)))
    assert video._result_urls(done) == ["https://cdn.example/v.mp4"]
    assert calls == [("GET", "/v2/videos/t%2F1")] * 3      # the id is quoted
    assert events == [(0.09, "pending"), (0.45, "running")]


@pytest.mark.parametrize("answer, error, code", [
    ({"data": {"state": "FAILED", "error": {"code": "gpu_lost"}}},
     TransientProviderError, "provider_task_failed"),
    ({"data": {"state": "FAILED", "error": {"code": "nsfw_image"}}},
     PermanentProviderError, CONTENT_REFUSED),                      # refused_codes
    ({"data": {"state": "BLOCKED", "error": {"code": "policy"}}},
     PermanentProviderError, CONTENT_REFUSED),                      # the refused status
    ({"data": {"state": "CANCELLED"}}, TransientProviderError, "provider_task_failed"),
    ({"data": {"state": "LOST"}}, TransientProviderError, "invalid_provider_output"),
    ({"data": {}}, TransientProviderError, "invalid_provider_output"),
])
def test_a_vendors_ending_is_classified(answer, error, code):
    video = provider(**VENDOR)
    video._call = lambda *a, **k: answer
    with pytest.raises(error) as caught:
        video._wait("t1", None)
    assert caught.value.code == code


def test_the_default_failure_reading_keeps_the_retryable_flag():
    video = provider(**BASE)
    fail = {"status": "failed", "error": {"code": "safety_filter", "message": "x",
                                          "retryable": False}}
    assert video._failure(fail).code == CONTENT_REFUSED
    fail["error"] = {"code": "bad_size", "message": "flagged by moderation", "retryable": False}
    assert video._failure(fail).code == CONTENT_REFUSED             # the message says it
    fail["error"] = {"code": "bad_size", "retryable": False}
    assert video._failure(fail).code == "provider_rejected_request"
    fail["error"] = {"code": "content_policy", "message": "a https://x/secret echo"}
    failure = video._failure(fail)
    assert failure.code == "provider_task_failed"                   # retryable by default
    assert "secret" not in failure.message and "content_policy" in failure.message


def test_result_urls_are_tried_in_order():
    video = provider(**{**BASE, "result_urls": ["/out/video", "/out/videos", "/legacy"]})
    assert video._result_urls({"out": {"videos": ["a", "b"]}, "legacy": "c"}) == ["a", "b"]
    assert video._result_urls({"legacy": "c"}) == ["c"]
    assert video._result_urls({"out": {"video": [None]}, "legacy": "c"}) == []
    assert video._result_urls({}) == []


def test_extra_headers_and_another_auth_header_are_used():
    video = provider(**{**BASE, "auth_header": "X-Api-Key", "auth_scheme": "",
                        "headers": {"X-Async": "enable"}})
    assert video.http._auth_headers("https://video.example/v1/tasks") == {"X-Api-Key": "k"}
    assert video.api.headers == {"X-Async": "enable"}


def test_cancel_can_be_switched_off_and_a_poll_can_carry_the_id_in_a_body():
    video = provider(**{**BASE, "cancel": None,
                        "poll": {"method": "POST", "path": "/status", "id_at": "/task/uuid"}})
    assert video.api.cancel is None
    assert video.api.poll.body_for("t1") == {"task": {"uuid": "t1"}}
    assert video.api.poll.path_for("t1") == "/status"


# ------------------------------------------------------------------ checked at start


@pytest.mark.parametrize("changes, message", [
    ({"task_id": "data.task.id"}, "task_id: 'data.task.id' is not a JSON pointer"),
    ({"status": "/a~9"}, "status: .* is not a JSON pointer"),
    ({"result_urls": []}, "result_urls must be"),
    ({"result_urls": ["/ok", "bad"]}, r"result_urls\[1\]"),
    ({"progress": "percent"}, "progress: "),
    ({"inputs": {"prompt": "prompt"}}, "inputs.prompt"),
    ({"inputs": {"user_id": "/user"}}, "inputs.user_id: not a Darkroom field"),
    ({"inputs": {"prompt": "/a", "negative_prompt": "/a"}}, "same place"),
    ({"inputs": {"prompt": "/a", "seed": "/a/b"}}, "inside another value"),
    ({"inputs": {"prompt": "/list/1"}}, "comes before"),
    ({"fixed_inputs": {"model": "x"}}, "fixed_inputs.model"),
    ({"fixed_inputs": ["x"]}, "fixed_inputs must map"),
    ({"fixed_inputs": {"/prompt": "x"}}, "same place"),
    ({"poll": {"path": "/v1/tasks"}}, r"poll.path: .* must contain \{id\}"),
    ({"poll": {"path": "v1/tasks/{id}"}}, "poll.path: .* is not a path"),
    ({"poll": {"path": "/v1/{task}/{id}"}}, "poll.path"),
    ({"poll": {"method": "FETCH", "path": "/t/{id}"}}, "poll.method must be one of"),
    ({"poll": {"method": "POST"}}, "poll.path is required"),
    ({"poll": {"method": "GET", "path": "/s", "id_at": "/id"}}, "poll.id_at: a GET has no body"),
    ({"poll": "/v1/tasks/{id}"}, "poll must be a mapping"),
    ({"poll": {"url": "/x/{id}"}}, "poll.url: not a setting of poll"),
    ({"submit": {"path": "/v1/tasks/{id}"}}, "submit.path: there is no task id yet"),
    ({"submit": {"id_at": "/id"}}, "submit.id_at: not a setting"),
    ({"cancel": {"path": "/cancel"}}, r"cancel.path: .* must contain \{id\}"),
    ({"statuses": {"running": ["r"]}}, "statuses.succeeded: at least one"),
    ({"statuses": {"running": ["r"], "succeeded": ["r"]}}, "'r' is in both running and succ"),
    ({"statuses": {"running": ["r"], "succeeded": ["s"], "done": ["d"]}}, "statuses.done"),
    ({"statuses": {"running": [["r"]], "succeeded": ["s"]}}, "statuses.running must be a list"),
    ({"statuses": ["running"]}, "statuses must map"),
    ({"progress_scale": 0}, "progress_scale must be above 0"),
    ({"refused_codes": "nsfw"}, "refused_codes must be a list"),
    ({"headers": {"Authorization": "x"}}, "headers: 'Authorization' cannot be set"),
    ({"headers": {"Content-Type": "text/plain"}}, "cannot be set"),
    ({"headers": {"X-A": "a\r\nX-B: b"}}, "headers.X-A must be a one-line string"),
    ({"auth_header": "X Api Key"}, "auth_header: "),
    ({"auth_scheme": "Bearer token"}, "auth_scheme: "),
    ({"job_types": ["text-to-music"]}, "job_types: 'text-to-music'"),
    ({"task_timeout_s": "soon"}, "task_timeout_s must be a number"),
    ({"max_poll_errors": -1}, "max_poll_errors must be at least 0"),
])
def test_a_setting_that_cannot_work_stops_the_service_naming_the_provider(changes, message):
    with pytest.raises(ProviderConfigError, match=rf"^providers\.video: .*{message}"):
        provider(**{**BASE, **changes})


def test_the_seed_001_example_is_a_vendor_mapping_that_sends_only_the_image_and_prompts():
    from tests.unit.generation.test_provider_examples import EXAMPLES, keys_of

    path = next(p for p in EXAMPLES if p.name == "seed-001.yaml")
    conf = load_providers_file(path, keys_of(path))["providers"]["video"]
    video = build_provider("video", conf)
    assert video.api != TaskApi()  # not the defaults: a vendor's own shape
    assert (video.api.submit.path, video.api.poll.path) == ("/v2/videos", "/v2/videos/{id}")
    body = video.payload(video_request(negative_prompt="fog", seed=3, width=64, height=32,
                                       shots=(Shot("up", "tilt_up", 2.0),)))
    assert set(body) == {"model", "input", "parameters"}
    assert set(body["input"]) == {"prompt", "image", "shots"}  # policy 001, section 4
