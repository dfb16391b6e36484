"""The ``dashscope`` adapter against a fake of DashScope's task API over real
loopback HTTP (tests/fakes/dashscope.py): the documented request shapes,
success for qwen-image and Wan image-to-video, DashScope's error codes, the
content refusal, 429, timeouts, a task that never finishes, and that nothing
identifying an account reaches the vendor."""

from __future__ import annotations

import base64
import io
import json
import time

import pytest
from PIL import Image

from services.generation.providers.base import (
    CONTENT_REFUSED,
    PermanentProviderError,
    TransientProviderError,
)
from services.generation.providers.dashscope import DashScopeProvider
from services.generation.providers.router import build_provider
from tests.fakes.dashscope import IMAGE_PATH, VIDEO_PATH, FakeDashScope
from tests.fakes.providers import png_bytes
from tests.integration.test_generation_providers import JOB as BASE_JOB
from tests.integration.test_generation_providers import provider_request

pytestmark = pytest.mark.integration

KEY = "sk-dashscope-test"
# What the service knows about the job's owner (the sentinels every provider
# test uses, and an IP address); none of it may reach DashScope.
ACCOUNT = {**{k: BASE_JOB[k] for k in ("job_id", "user_id", "email", "api_key", "webhook_url")},
           "ip": "203.0.113.77"}
JOB = {**ACCOUNT, "job_type": "text-to-image", "prompt": "a paper lantern on a river",
       "negative_prompt": "blurry", "n": 2, "width": 1024, "height": 1024, "seed": 11}
SOURCE = png_bytes(96, 64, (10, 200, 90))
VIDEO_JOB = {**ACCOUNT, "job_type": "image-to-video", "prompt": "the lantern drifts",
             "negative_prompt": "shaky", "n": 1, "seed": 5, "duration_s": 4,
             "source_image": SOURCE, "source_content_type": "image/png"}
SENT_HEADERS = {"host", "user-agent", "accept-encoding", "accept", "connection",
                "content-length", "content-type", "authorization", "x-dashscope-async"}


@pytest.fixture
def fake():
    with FakeDashScope(api_key=KEY, hang_s=3) as server:
        yield server


@pytest.fixture
def oss(fake):
    """Results on another origin, as DashScope's OSS URLs are."""
    with FakeDashScope() as server:
        fake.oss = server
        yield server


def provider(fake, **conf) -> DashScopeProvider:
    """Built as the providers file builds it (through the registry)."""
    base = {"type": "dashscope", "base_url": fake.base_url, "api_key": KEY,
            "model": "qwen-image", "region": "cn", "job_types": ["text-to-image"],
            "timeout_s": 2, "poll_interval_s": 0.01, "task_timeout_s": 5,
            "allow_private_network": True, "max_concurrency": 2, "enabled": True}
    return build_provider("qwen", {**base, **conf}, sleep=time.sleep, clock=time.monotonic)


def wan(fake, **conf) -> DashScopeProvider:
    return provider(fake, **{"model": "wan2.5-i2v-preview", "job_types": ["image-to-video"],
                             "resolution": "480P", "durations": [5, 10], **conf})


def submits(fake):
    return [r for r in fake.requests if r.method == "POST" and r.path in (IMAGE_PATH,
                                                                           VIDEO_PATH)]


# ------------------------------------------------------------------ success


def test_qwen_image_one_task_per_image_as_documented(fake, oss):
    events = []
    result = provider(fake).generate(provider_request(JOB), lambda f, s: events.append((f, s)))
    assert [(o.content_type, o.width, o.height) for o in result.outputs] == \
        [("image/png", 1328, 1328)] * 2
    for output in result.outputs:
        Image.open(io.BytesIO(output.data)).verify()
    sent = submits(fake)
    assert len(sent) == 2  # qwen-image makes one image per task
    for index, request in enumerate(sent):
        assert request.path == "/api/v1/services/aigc/text2image/image-synthesis"
        assert request.header("Authorization") == f"Bearer {KEY}"
        assert request.header("X-DashScope-Async") == "enable"
        assert request.json() == {
            "model": "qwen-image", "input": {"prompt": "a paper lantern on a river"},
            "parameters": {"n": 1, "size": "1328*1328", "negative_prompt": "blurry",
                           "seed": 11 + index}}
    polls = [r for r in fake.requests if r.method == "GET" and r.path.startswith("/api/v1/tasks/")]
    assert polls and all(r.header("Authorization") == f"Bearer {KEY}" for r in polls)
    assert all(r.header("X-DashScope-Async") is None for r in polls)
    downloads = oss.requests_to("/oss/")
    assert len(downloads) == 2 and fake.requests_to("/oss/") == []
    assert all(r.header("Authorization") is None for r in downloads)  # not the API's origin
    stages = [s for _, s in events]
    assert stages[0] == "submitting" and stages[-1] == "downloaded"
    assert {"submitted", "pending", "downloading"} <= set(stages)
    assert [f for f, _ in events] == sorted(f for f, _ in events)


def test_the_size_sent_is_the_documented_one_nearest_the_aspect_ratio(fake):
    provider(fake).generate(provider_request(JOB, n=1, width=1536, height=832))
    assert submits(fake)[-1].json()["parameters"]["size"] == "1664*928"


def test_options_from_the_config_are_sent(fake):
    provider(fake, prompt_extend=False, watermark="false", images_per_task=2,
             model="wan2.2-t2i-flash", sizes="any").generate(provider_request(JOB))
    (sent,) = submits(fake)
    assert sent.json() == {
        "model": "wan2.2-t2i-flash",
        "input": {"prompt": "a paper lantern on a river", "negative_prompt": "blurry"},
        "parameters": {"n": 2, "size": "1024*1024", "seed": 11, "prompt_extend": False,
                       "watermark": False}}


def test_wan_image_to_video_sends_the_source_as_a_data_uri(fake):
    result = wan(fake).generate(provider_request(VIDEO_JOB))
    (video,) = result.outputs
    assert video.content_type == "video/mp4" and video.width == 64 and video.duration_s > 0
    (sent,) = submits(fake)
    assert sent.path == "/api/v1/services/aigc/video-generation/video-synthesis"
    assert sent.header("X-DashScope-Async") == "enable"
    assert sent.json() == {
        "model": "wan2.5-i2v-preview",
        "input": {"prompt": "the lantern drifts", "negative_prompt": "shaky",
                  "img_url": "data:image/png;base64," + base64.b64encode(SOURCE).decode()},
        "parameters": {"resolution": "480P", "duration": 5, "seed": 5}}


# ------------------------------------------------------------------ errors


@pytest.mark.parametrize("behaviour, error, code", [
    ("refuse", PermanentProviderError, CONTENT_REFUSED),
    ((400, {"request_id": "r", "code": "IPInfringementSuspect", "message": "x"}),
     PermanentProviderError, CONTENT_REFUSED),
    ((400, {"request_id": "r", "code": "InvalidParameter", "message": "bad size"}),
     PermanentProviderError, "provider_rejected_request"),
    ((400, {"request_id": "r", "code": "Arrearage", "message": "overdue"}),
     PermanentProviderError, "provider_rejected_request"),
    ((403, {"request_id": "r", "code": "AccessDenied.Unpurchased", "message": "no"}),
     PermanentProviderError, "provider_auth_failed"),
    ((400, {"request_id": "r", "code": "Throttling.AllocationQuota", "message": "quota"}),
     TransientProviderError, "provider_rate_limited"),
    (429, TransientProviderError, "provider_rate_limited"),
    (500, TransientProviderError, "provider_server_error"),
    (503, TransientProviderError, "provider_server_error"),
    ("drop", TransientProviderError, "provider_connection_failed"),
    ("garbage", TransientProviderError, "invalid_provider_output"),
    ("redirect", TransientProviderError, "invalid_provider_output"),
])
def test_submit_failures_are_classified(fake, behaviour, error, code):
    fake.fail_next(behaviour)
    with pytest.raises(error) as caught:
        provider(fake).generate(provider_request(JOB, n=1))
    assert caught.value.code == code
    assert KEY not in str(caught.value)


def test_the_content_refusal_names_the_vendor_code_not_the_prompt(fake):
    fake.fail_next("refuse")
    with pytest.raises(PermanentProviderError) as caught:
        provider(fake).generate(provider_request(JOB, n=1))
    assert caught.value.status == 400 and "DataInspectionFailed" in caught.value.message
    assert JOB["prompt"] not in caught.value.message


def test_a_429_carries_retry_after_when_dashscope_sends_one(fake):
    fake.retry_after = "7.5"
    fake.fail_next(429)
    with pytest.raises(TransientProviderError) as caught:
        provider(fake).generate(provider_request(JOB, n=1))
    assert (caught.value.code, caught.value.retry_after) == ("provider_rate_limited", 7.5)
    assert "Throttling.RateQuota" in caught.value.message


def test_a_wrong_key_is_an_auth_failure(fake):
    with pytest.raises(PermanentProviderError) as caught:
        provider(fake, api_key="sk-wrong").generate(provider_request(JOB, n=1))
    assert caught.value.code == "provider_auth_failed"


@pytest.mark.parametrize("failure, error, code", [
    ({"code": "DataInspectionFailed", "message": "Output data may contain inappropriate "
                                                 "content."}, PermanentProviderError,
     CONTENT_REFUSED),
    ({"code": "InvalidParameter.DataInspection", "message": "x"}, PermanentProviderError,
     "provider_rejected_request"),
    ({"code": "InternalError", "message": "x"}, TransientProviderError, "provider_task_failed"),
    ({"code": "Throttling", "message": "x"}, TransientProviderError, "provider_rate_limited"),
])
def test_a_failed_task_is_classified_by_its_code(fake, failure, error, code):
    fake.outcome, fake.failure = "failed", failure
    with pytest.raises(error) as caught:
        wan(fake).generate(provider_request(VIDEO_JOB))
    assert caught.value.code == code


def test_a_refused_image_inside_a_succeeded_task_is_a_refusal(fake):
    fake.outcome = "partial"
    with pytest.raises(PermanentProviderError) as caught:
        provider(fake).generate(provider_request(JOB, n=1))
    assert caught.value.code == CONTENT_REFUSED


def test_an_unknown_task_is_transient(fake):
    fake.tasks.clear()
    original = fake._submit

    def forget(request, video):
        answer = original(request, video)
        fake.tasks.clear()  # the task expired at once
        return answer

    fake._submit = forget
    with pytest.raises(TransientProviderError) as caught:
        provider(fake).generate(provider_request(JOB, n=1))
    assert caught.value.code == "provider_task_failed"


def test_a_few_failed_polls_are_tolerated_but_not_more(fake):
    fake.fail_polls(503, 429)
    assert len(provider(fake).generate(provider_request(JOB, n=1)).outputs) == 1
    fake.fail_polls(503, 503, 503, 503)
    with pytest.raises(TransientProviderError) as caught:
        provider(fake).generate(provider_request(JOB, n=1))
    assert caught.value.code == "provider_server_error"


def test_a_vendor_that_hangs_times_out(fake):
    fake.fail_next("hang")
    started = time.monotonic()
    with pytest.raises(TransientProviderError) as caught:
        provider(fake, timeout_s=0.3).generate(provider_request(JOB, n=1))
    assert caught.value.code == "provider_timeout"
    assert time.monotonic() - started < 2


def test_a_task_that_never_finishes_times_out_and_is_cancelled(fake):
    fake.outcome = "never"
    fake.polls_to_finish = 10**6
    with pytest.raises(TransientProviderError) as caught:
        wan(fake, task_timeout_s=0.3).generate(provider_request(VIDEO_JOB))
    assert caught.value.code == "provider_timeout"
    cancels = [r for r in fake.requests if r.path.endswith("/cancel")]
    assert len(cancels) == 1 and cancels[0].method == "POST"
    assert cancels[0].header("X-DashScope-Async") is None


def test_a_pending_task_left_behind_is_cancelled(fake):
    fake.outcome = "never"
    fake.polls_to_finish = 10**6
    with pytest.raises(TransientProviderError):
        provider(fake, task_timeout_s=0.05, poll_interval_s=0.2).generate(
            provider_request(JOB, n=2))
    states = sorted(task["status"] for task in fake.tasks.values())
    assert states == ["CANCELED", "CANCELED"]  # both were still PENDING


def test_a_result_url_on_another_private_host_is_refused(fake):
    qwen = provider(fake, allow_private_network=False,
                            result_url_allow=["127.0.0.1/32"])
    original = fake._file
    fake._file = lambda *a: original(*a).replace("127.0.0.1", "127.0.0.2")
    with pytest.raises(TransientProviderError) as caught:
        qwen.generate(provider_request(JOB, n=1))
    assert caught.value.code == "invalid_provider_output"
    assert fake.requests_to("/oss/") == []


# ------------------------------------------------------------------ minimisation


def test_nothing_identifying_the_account_reaches_dashscope(fake):
    provider(fake).generate(provider_request(JOB))
    wan(fake).generate(provider_request(VIDEO_JOB))
    identity = list(ACCOUNT.values())
    assert len(fake.requests) > 6
    for recorded in fake.requests:
        assert {h.lower() for h in recorded.headers} <= SENT_HEADERS, recorded.headers
        assert recorded.header("Authorization") in (None, f"Bearer {KEY}")
        raw = json.dumps(recorded.headers) + recorded.path + recorded.body.decode("latin-1")
        for value in identity:
            assert value not in raw
    # the bodies hold the whitelisted fields only
    for recorded in submits(fake):
        body = recorded.json()
        assert set(body) == {"model", "input", "parameters"}
        assert set(body["input"]) <= {"prompt", "negative_prompt", "img_url"}
        assert set(body["parameters"]) <= {"n", "size", "negative_prompt", "seed", "resolution",
                                           "duration"}
    for recorded in fake.requests:
        if recorded.method == "GET" or recorded.path.endswith("/cancel"):
            assert recorded.body == b""


def test_a_configured_workspace_goes_to_the_api_only(fake, oss):
    provider(fake, workspace="llm-ws123").generate(provider_request(JOB, n=1))
    api = [r for r in fake.requests if r.path.startswith("/api/v1/")]
    assert api and all(r.header("X-DashScope-WorkSpace") == "llm-ws123" for r in api)
    assert all(r.header("X-DashScope-WorkSpace") is None for r in oss.requests)
