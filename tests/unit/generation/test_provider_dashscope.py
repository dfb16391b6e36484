"""The ``dashscope`` adapter without a network: its configuration, exactly
what it would send, and how it reads DashScope's task states and error codes
(the HTTP side is stubbed; tests/integration/test_provider_dashscope.py runs
it against a fake server)."""

from __future__ import annotations

import pytest

from services.generation.providers.base import (
    CONTENT_REFUSED,
    PermanentProviderError,
    ProviderRequest,
    Shot,
    TransientProviderError,
)
from services.generation.providers.dashscope import (
    DEFAULT_BASE_URL,
    DashScopeProvider,
    classify,
)
from services.generation.providers.router import ProviderConfigError, build_provider
from tests.fakes.providers import mp4_bytes, png_bytes
from tests.unit.generation.test_router import Clock

SOURCE = png_bytes(32, 32)


def build(**conf) -> DashScopeProvider:
    return build_provider("qwen", {"type": "dashscope", "api_key": "k", "model": "qwen-image",
                                   **conf})


def image_request(**kw) -> ProviderRequest:
    return ProviderRequest(**{"job_type": "text-to-image", "prompt": "a fox", **kw})


def video_request(**kw) -> ProviderRequest:
    return ProviderRequest(**{"job_type": "image-to-video", "prompt": "it runs",
                              "source_image": SOURCE, "source_content_type": "image/png", **kw})


# ------------------------------------------------------------------ configuration


def test_defaults_follow_the_documented_api():
    provider = build()
    assert provider.http.base_url == DEFAULT_BASE_URL == "https://dashscope.aliyuncs.com/api/v1"
    assert provider.job_types == {"text-to-image"}
    assert provider.http.auth_header == "Authorization" and provider.http.auth_scheme == "Bearer"


def test_timeout_s_bounds_the_attempt_and_caps_each_call():
    default = build()
    assert (default.task_timeout_s, default.http.timeout_s) == (600, 30)
    short = build(timeout_s=5)
    assert (short.task_timeout_s, short.http.timeout_s) == (5, 5)
    explicit = build(timeout_s=120, request_timeout_s=10, task_timeout_s=300)
    assert (explicit.task_timeout_s, explicit.http.timeout_s) == (300, 10)


def test_a_wan_i2v_model_runs_image_to_video_by_default():
    assert build(model="wan2.2-i2v-plus").job_types == {"image-to-video"}


def test_keys_read_by_others_are_accepted():
    provider = build(region="cn", max_concurrency=4, enabled=True, allow_private_network=True,
                     base_url="https://dashscope-intl.aliyuncs.com/api/v1",
                     job_types=["text-to-image"], timeout_s=9)
    assert provider.http.timeout_s == 9
    assert provider.http.base_url == "https://dashscope-intl.aliyuncs.com/api/v1"


@pytest.mark.parametrize("conf, key", [
    ({"model": ""}, "model"),
    ({"job_types": ["image-to-image"]}, "job_types"),
    ({"job_types": ["text-to-image", "image-to-video"]}, "job_types"),
    ({"sizes": ["1024x1024"]}, "sizes"),
    ({"sizes": "1328*1328"}, "sizes"),
    ({"images_per_task": 0}, "images_per_task"),
    ({"resolution": "4K"}, "resolution"),
    ({"durations": [0]}, "durations"),
    ({"durations": 5}, "durations"),
    ({"poll_interval_s": 0}, "poll_interval_s"),
    ({"base_url": "ftp://dashscope"}, "base_url"),
])
def test_a_bad_config_is_refused_naming_the_key(conf, key):
    with pytest.raises(ProviderConfigError) as caught:
        build(**conf)
    assert key in str(caught.value) and "qwen" in str(caught.value)


# ------------------------------------------------------------------ what is sent


def test_qwen_image_sends_one_task_per_image_with_distinct_seeds():
    bodies = build().payloads(image_request(n=3, seed=2**31 - 2, negative_prompt="dark",
                                            width=1024, height=1024))
    assert [b["parameters"]["seed"] for b in bodies] == [2**31 - 2, 2**31 - 1, 0]
    assert bodies[0] == {"model": "qwen-image", "input": {"prompt": "a fox"},
                         "parameters": {"n": 1, "size": "1328*1328", "negative_prompt": "dark",
                                        "seed": 2**31 - 2}}


def test_images_per_task_batches_the_images():
    bodies = build(images_per_task=2, model="wan2.2-t2i-flash").payloads(image_request(n=3))
    assert [b["parameters"]["n"] for b in bodies] == [2, 1]


def test_without_a_size_or_seed_nothing_is_sent_for_them():
    (body,) = build().payloads(image_request())
    assert body == {"model": "qwen-image", "input": {"prompt": "a fox"},
                    "parameters": {"n": 1}}


@pytest.mark.parametrize("size, sent", [
    ((1024, 1024), "1328*1328"), ((1536, 832), "1664*928"), ((832, 1536), "928*1664"),
    ((1024, 768), "1472*1104"), ((768, 1024), "1104*1472"), ((1280, 1024), "1472*1104"),
])
def test_the_nearest_documented_size_is_sent(size, sent):
    assert build().size(image_request(width=size[0], height=size[1])) == sent


def test_sizes_any_sends_the_requested_size_with_a_star():
    assert build(sizes="any").size(image_request(width=768, height=512)) == "768*512"


def test_config_flags_are_sent_as_booleans():
    (body,) = build(prompt_extend="no", watermark=True).payloads(image_request())
    assert body["parameters"] == {"n": 1, "prompt_extend": False, "watermark": True}


def test_the_video_payload_carries_the_source_as_a_data_uri():
    (body,) = build(model="wan2.1-i2v-turbo", resolution="720P", durations=[3, 4, 5]).payloads(
        video_request(duration_s=3.5, seed=9, negative_prompt="blur", strength=0.3))
    assert body["input"]["img_url"].startswith("data:image/png;base64,iVBOR")
    assert body["input"]["prompt"] == "it runs" and body["input"]["negative_prompt"] == "blur"
    assert body["parameters"] == {"resolution": "720P", "duration": 4, "seed": 9}


@pytest.mark.parametrize("durations, asked, sent", [
    ((), 4, None), ((5,), 4, 5), ((5, 10), 7, 10), ((5, 10), 30, 10), ((5, 10), None, None),
])
def test_the_duration_is_the_shortest_configured_one_that_is_long_enough(durations, asked, sent):
    assert build(model="wan2.5-i2v-preview", durations=list(durations)).duration(asked) == sent


def test_shots_are_folded_into_the_video_prompt():
    request = video_request(prompt=None, shots=[Shot("a door opens", "zoom_in", 2),
                                                Shot("light pours in")])
    assert DashScopeProvider.video_prompt(request) == (
        "Shot 1 (zoom in, 2s): a door opens Shot 2 (static, 3s): light pours in")


def test_a_video_without_a_source_image_is_refused():
    provider = build(model="wan2.2-i2v-plus")
    with pytest.raises(PermanentProviderError):
        provider.payloads(ProviderRequest("image-to-video", "p"))


# ------------------------------------------------------------------ task states


class StubHttp:
    """Answers ``call`` from a script; ``download`` from ``files``."""

    def __init__(self, polls, files=None):
        self.polls = list(polls)
        self.calls = []
        self.files = files or {}

    def call(self, method, path, payload=None, *, headers=None):
        self.calls.append((method, path, headers))
        if method == "POST" and path.startswith("/services/"):
            return {"output": {"task_id": "t-1", "task_status": "PENDING"}, "request_id": "r"}
        if method == "POST":
            return {"request_id": "r"}
        answer = self.polls.pop(0) if len(self.polls) > 1 else self.polls[0]
        if isinstance(answer, Exception):
            raise answer
        return answer

    def download(self, url):
        return self.files[url], ""


def stubbed(polls, files=None, **conf):
    clock = Clock()
    provider = build_provider("qwen", {"type": "dashscope", "model": "qwen-image",
                                       "poll_interval_s": 1, **conf},
                              sleep=clock.sleep, clock=clock)
    provider.http = StubHttp(polls, files)
    return provider, clock


def state(status, **output):
    return {"request_id": "r", "output": {"task_id": "t-1", "task_status": status, **output}}


def test_suspended_and_running_tasks_are_waited_for():
    provider, clock = stubbed([state("PENDING"), state("SUSPENDED"), state("RUNNING"),
                               state("SUCCEEDED", results=[{"url": "u"}])],
                              files={"u": png_bytes(8, 8)}, workspace="ws-1")
    events = []
    result = provider.generate(image_request(), lambda f, s: events.append(s))
    assert len(result.outputs) == 1 and clock.sleeps == [1, 1, 1]
    submit, *polls = provider.http.calls
    assert submit == ("POST", "/services/aigc/text2image/image-synthesis",
                      {"X-DashScope-Async": "enable", "X-DashScope-WorkSpace": "ws-1"})
    assert polls == [("GET", "/tasks/t-1", {"X-DashScope-WorkSpace": "ws-1"})] * 4
    assert ["pending", "suspended", "running"] == [s for s in events
                                                   if s in ("pending", "suspended", "running")]


@pytest.mark.parametrize("output", [{"video_url": "v"}, {"results": {"video_url": "v"}}])
def test_a_video_result_is_its_video_url(output):
    provider, _ = stubbed([state("SUCCEEDED", **output)], files={"v": mp4_bytes()},
                          model="wan2.2-i2v-flash")
    (video,) = provider.generate(video_request()).outputs
    assert video.content_type == "video/mp4"


@pytest.mark.parametrize("conf, pause", [
    ({"poll_interval_s": 5, "timeout_s": 600}, 5),
    ({"poll_interval_s": 5, "timeout_s": 2}, 0.2),  # a short timeout still gets ~10 polls
])
def test_polls_come_every_poll_interval_s(conf, pause):
    provider, clock = stubbed([state("RUNNING")], **conf)
    with pytest.raises(TransientProviderError):
        provider.generate(image_request())
    assert set(clock.sleeps) == {pause} and sum(clock.sleeps) <= conf["timeout_s"]


@pytest.mark.parametrize("answer, code", [
    (state("CANCELED"), "provider_task_failed"),
    (state("UNKNOWN"), "provider_task_failed"),
    (state("WHATEVER"), "invalid_provider_output"),
    ({"request_id": "r"}, "invalid_provider_output"),
    (state("SUCCEEDED", results=[]), "invalid_provider_output"),
    (state("SUCCEEDED", results=[{"code": "InternalError", "message": "m"}]),
     "provider_task_failed"),
])
def test_odd_task_states_are_transient(answer, code):
    provider, _ = stubbed([answer])
    with pytest.raises(TransientProviderError) as caught:
        provider.generate(image_request())
    assert caught.value.code == code


def test_a_task_past_its_deadline_is_cancelled():
    provider, clock = stubbed([state("RUNNING")], timeout_s=10)
    with pytest.raises(TransientProviderError) as caught:
        provider.generate(image_request())
    assert caught.value.code == "provider_timeout"
    assert sum(clock.sleeps) == 10  # polls every second until the next would be late
    assert provider.http.calls[-1] == ("POST", "/tasks/t-1/cancel", {})
    assert [c for c in provider.http.calls if c[1].endswith("/cancel")] == \
        [("POST", "/tasks/t-1/cancel", {})]  # once


def test_poll_errors_in_a_row_are_tolerated_up_to_the_limit():
    flaky = TransientProviderError("provider_server_error")
    provider, _ = stubbed([flaky, flaky, flaky, state("SUCCEEDED", results=[{"url": "u"}])],
                          files={"u": png_bytes(8, 8)})
    assert len(provider.generate(image_request()).outputs) == 1
    provider, _ = stubbed([flaky, flaky, flaky, flaky], max_poll_errors=3)
    with pytest.raises(TransientProviderError):
        provider.generate(image_request())


@pytest.mark.parametrize("code, kind, expected", [
    ("DataInspectionFailed", PermanentProviderError, CONTENT_REFUSED),
    ("IPInfringementSuspect", PermanentProviderError, CONTENT_REFUSED),
    ("data_inspection_failed", PermanentProviderError, CONTENT_REFUSED),
    ("InvalidParameter", PermanentProviderError, "provider_rejected_request"),
    ("InvalidFile.Resolution", PermanentProviderError, "provider_rejected_request"),
    ("Arrearage", PermanentProviderError, "provider_rejected_request"),
    ("Throttling.RateQuota", TransientProviderError, "provider_rate_limited"),
    ("InternalError.Timeout", TransientProviderError, "provider_task_failed"),
    ("", TransientProviderError, "provider_task_failed"),
])
def test_a_failed_task_code_decides_the_error(code, kind, expected):
    error = classify(code, "qwen")
    assert isinstance(error, kind) and error.code == expected


def test_an_http_error_code_decides_only_refusals_and_throttling():
    assert classify("DataInspectionFailed", "qwen", status=400).code == CONTENT_REFUSED
    assert classify("Throttling", "qwen", status=429, retry_after=3).retry_after == 3
    assert classify("InvalidParameter", "qwen", status=400) is None  # the status decides
    message = classify("DataInspectionFailed", "qwen", status=400).message
    assert message == "qwen answered 400 (DataInspectionFailed)"
