"""The volcengine_ark adapter against a fake of Ark's public API over real
loopback HTTP (tests/fakes/ark.py): request shapes, success with real
images and videos, Ark's error codes and refusals, 429, timeouts, a task
that never finishes, failover through the router, and that nothing
identifying an account reaches Ark."""

from __future__ import annotations

import base64
import dataclasses
import io
import json
import time

import pytest
from PIL import Image

from services.generation.providers.base import (
    CONTENT_REFUSED,
    PermanentProviderError,
    ProviderRequest,
    Shot,
    TransientProviderError,
)
from services.generation.providers.router import build_provider, build_router
from tests.fakes.ark import INPUT_REFUSAL, REFUSAL, RISK_REFUSAL, FakeArk
from tests.fakes.providers import png_bytes

pytestmark = pytest.mark.integration

KEY = "ark-test-key-0123"
IMAGE_MODEL = "doubao-seedream-4-5-251128"
VIDEO_MODEL = "doubao-seedance-1-0-pro-250528"
# What the service knows about the job and its owner; none of it may reach Ark.
JOB = {
    "job_id": "0190a5c3-0000-7000-8000-00000000a4c1",
    "user_id": "0190a5c3-1111-7000-8000-0000000a4cde",
    "email": "ark.owner.sentinel@example.org",
    "api_key": "drk_live_arksentinelsentinel",
    "webhook_url": "https://hooks.ark-sentinel.example/x",
    "ip": "203.0.113.77",
    "job_type": "text-to-image",
    "prompt": "a paper boat on a puddle",
    "negative_prompt": "blurry",
    "n": 2,
    "width": 1024,
    "height": 768,
    "seed": 11,
}
IDENTITY = [JOB[k] for k in ("job_id", "user_id", "email", "api_key", "webhook_url", "ip")]
ALLOWED_HEADERS = {"host", "user-agent", "accept-encoding", "accept", "connection",
                   "content-length", "content-type", "authorization"}
IMAGE_FIELDS = {"model", "prompt", "size", "response_format", "seed", "image", "watermark"}
TASK_FIELDS = {"model", "content", "ratio", "duration", "seed", "resolution", "watermark"}


def provider_request(**changes) -> ProviderRequest:
    """How a job becomes a provider request: only the request's own fields."""
    fields = {f.name for f in dataclasses.fields(ProviderRequest)}
    return ProviderRequest(**{k: v for k, v in {**JOB, **changes}.items() if k in fields})


def video_request(**changes) -> ProviderRequest:
    return provider_request(**{"job_type": "image-to-video", "n": 1,
                               "source_image": png_bytes(32, 24),
                               "source_content_type": "image/png", "duration_s": 5, **changes})


def conf(fake: FakeArk, **extra) -> dict:
    return {"type": "volcengine_ark", "base_url": f"{fake.url}/api/v3", "api_key": KEY,
            "model": IMAGE_MODEL, "video_model": VIDEO_MODEL, "region": "cn",
            "job_types": ["text-to-image", "image-to-image", "image-to-video"],
            "timeout_s": 2, "poll_interval_s": 0.01, "task_timeout_s": 5,
            "allow_private_network": True, **extra}


def ark(fake: FakeArk, **extra):
    return build_provider("seedream", conf(fake, **extra))


def progress_log():
    events = []
    return events, lambda fraction, stage: events.append((fraction, stage))


def assert_only_whitelisted_data_reached(fake: FakeArk) -> None:
    """Every recorded path, header and body: no account identifier, only the
    documented fields we mean to send, the key only as Ark's bearer."""
    assert fake.requests, "the fake received nothing"
    for recorded in fake.requests:
        assert {h.lower() for h in recorded.headers} <= ALLOWED_HEADERS, recorded.headers
        auth = recorded.header("Authorization")
        assert auth in (None, f"Bearer {KEY}")
        if recorded.path.startswith("/tos/"):
            assert auth is None  # the key never goes to the storage host
        raw = json.dumps(recorded.headers) + recorded.path + recorded.body.decode("latin-1")
        for value in IDENTITY:
            assert value not in raw
        if recorded.method == "POST":
            body = recorded.json()
            allowed = IMAGE_FIELDS if recorded.path.endswith("/images/generations") \
                else TASK_FIELDS
            assert set(body) <= allowed, set(body) - allowed
        else:
            assert recorded.body == b""


@pytest.fixture
def fake():
    with FakeArk(api_key=KEY, hang_s=3) as server:
        yield server


# ------------------------------------------------------------------ Seedream images


def test_text_to_image_makes_one_request_per_image_and_downloads_each(fake):
    events, progress = progress_log()
    result = ark(fake).generate(provider_request(), progress)
    assert [(o.content_type, o.width, o.height) for o in result.outputs] == \
        [("image/png", 2218, 1663)] * 2  # 1024x768 scaled to Seedream 4.5's minimum
    for output in result.outputs:
        Image.open(io.BytesIO(output.data)).verify()
    sent = fake.requests_to("/api/v3/images/generations", "POST")
    assert [r.json() for r in sent] == [
        {"model": IMAGE_MODEL, "prompt": "a paper boat on a puddle", "size": "2218x1663",
         "response_format": "url", "seed": 11},
        {"model": IMAGE_MODEL, "prompt": "a paper boat on a puddle", "size": "2218x1663",
         "response_format": "url", "seed": 12},
    ]
    assert all(r.header("Authorization") == f"Bearer {KEY}" for r in sent)
    assert all(r.header("Content-Type") == "application/json" for r in sent)
    assert len(fake.requests_to("/tos/", "GET")) == 2
    assert [stage for _, stage in events] == ["submitting", "generating", "generating",
                                              "downloaded"]
    assert [f for f, _ in events] == sorted(f for f, _ in events)
    assert_only_whitelisted_data_reached(fake)


def test_base64_results_need_no_download(fake):
    result = ark(fake, response_format="b64_json").generate(provider_request(n=1))
    assert result.outputs[0].width == 2218
    assert fake.requests_to("/tos/") == []


def test_image_to_image_sends_the_source_bytes_inline(fake):
    source = png_bytes(40, 30, (1, 2, 3))
    request = provider_request(job_type="image-to-image", n=1, source_image=source,
                               source_content_type="image/png", strength=0.4)
    result = ark(fake, watermark=False).generate(request)
    assert result.outputs[0].content_type == "image/png"
    body = fake.requests_to("/api/v3/images/generations")[0].json()
    assert body["image"] == "data:image/png;base64," + base64.b64encode(source).decode()
    assert body["watermark"] is False
    assert fake.sources == [source]
    assert_only_whitelisted_data_reached(fake)


def test_a_size_below_the_models_range_is_what_ark_refuses(fake):
    with pytest.raises(PermanentProviderError) as caught:
        ark(fake, min_pixels=0).generate(provider_request(n=1))
    assert caught.value.code == "provider_rejected_request"
    assert "InvalidParameter" in caught.value.message


@pytest.mark.parametrize("behaviour, error, code", [
    (500, TransientProviderError, "provider_server_error"),
    (503, TransientProviderError, "provider_server_error"),
    (429, TransientProviderError, "provider_rate_limited"),
    (400, PermanentProviderError, "provider_rejected_request"),
    (404, PermanentProviderError, "provider_rejected_request"),
    (401, PermanentProviderError, "provider_auth_failed"),
    (403, PermanentProviderError, "provider_auth_failed"),
    (REFUSAL, PermanentProviderError, CONTENT_REFUSED),
    (INPUT_REFUSAL, PermanentProviderError, CONTENT_REFUSED),
    (RISK_REFUSAL, PermanentProviderError, CONTENT_REFUSED),
    ((400, {"error": {"code": "ContentSecurityDetectionError", "message": "Internal error.",
                      "param": "", "type": "BadRequest"}}),
     TransientProviderError, "provider_server_error"),
    ((400, {"error": {"code": "InvalidEndpoint.ClosedEndpoint", "message": "closed",
                      "param": "", "type": "BadRequest"}}),
     TransientProviderError, "provider_server_error"),
    ("drop", TransientProviderError, "provider_connection_failed"),
    ("garbage", TransientProviderError, "invalid_provider_output"),
    ("redirect", TransientProviderError, "invalid_provider_output"),  # never followed
])
def test_image_failures_are_classified_by_arks_codes(fake, behaviour, error, code):
    fake.fail_next(behaviour)
    with pytest.raises(error) as caught:
        ark(fake).generate(provider_request())
    assert caught.value.code == code
    assert "sensitive information" not in caught.value.message  # Ark's text is not passed on


def test_a_refused_output_reported_inside_a_200_is_a_content_refusal(fake):
    fake.image_error = {"code": "OutputImageSensitiveContentDetected",
                        "message": "The request failed because the output image may contain "
                                   "sensitive information."}
    with pytest.raises(PermanentProviderError) as caught:
        ark(fake).generate(provider_request())
    assert caught.value.code == CONTENT_REFUSED


def test_a_429_is_transient_with_retry_after_when_ark_sends_one(fake):
    fake.fail_next(429)
    with pytest.raises(TransientProviderError) as caught:
        ark(fake).generate(provider_request())
    assert (caught.value.code, caught.value.retry_after) == ("provider_rate_limited", None)
    fake.retry_after = "7"
    fake.fail_next(429)
    with pytest.raises(TransientProviderError) as caught:
        ark(fake).generate(provider_request())
    assert caught.value.retry_after == 7


def test_ark_that_hangs_times_out(fake):
    fake.fail_next("hang")
    started = time.monotonic()
    with pytest.raises(TransientProviderError) as caught:
        ark(fake, timeout_s=0.3).generate(provider_request())
    assert caught.value.code == "provider_timeout"
    assert time.monotonic() - started < 2


def test_a_wrong_key_is_an_auth_failure(fake):
    with pytest.raises(PermanentProviderError) as caught:
        ark(fake, api_key="ark-wrong").generate(provider_request())
    assert caught.value.code == "provider_auth_failed"


def test_a_result_url_the_guard_refuses_is_never_fetched(fake):
    fake.result_base = "file://"
    with pytest.raises(TransientProviderError) as caught:
        ark(fake).generate(provider_request())
    assert caught.value.code == "invalid_provider_output"
    assert "result URL" in caught.value.message
    assert fake.requests_to("/tos/") == []


# ------------------------------------------------------------------ Seedance video


def test_image_to_video_creates_a_task_polls_it_and_downloads_the_video(fake):
    fake.polls_to_finish = 3
    events, progress = progress_log()
    source = png_bytes(32, 24)
    result = ark(fake, resolution="720p").generate(video_request(seed=5), progress)
    output = result.outputs[0]
    assert (output.content_type, output.width, output.height) == ("video/mp4", 64, 64)
    assert output.duration_s == pytest.approx(1.0)
    created = fake.requests_to("/api/v3/contents/generations/tasks", "POST")
    assert len(created) == 1 and created[0].header("Authorization") == f"Bearer {KEY}"
    assert created[0].json() == {
        "model": VIDEO_MODEL,
        "content": [{"type": "text", "text": "a paper boat on a puddle"},
                    {"type": "image_url", "role": "first_frame",
                     "image_url": {"url": "data:image/png;base64,"
                                          + base64.b64encode(source).decode()}}],
        "ratio": "adaptive", "duration": 5, "seed": 5, "resolution": "720p"}
    polls = fake.requests_to("/api/v3/contents/generations/tasks/", "GET")
    assert len(polls) == 3
    assert all(p.path.startswith("/api/v3/contents/generations/tasks/cgt-") for p in polls)
    assert [stage for _, stage in events] == ["submitting", "queued", "running", "downloading",
                                              "downloaded"]
    assert [f for f, _ in events] == sorted(f for f, _ in events)
    assert_only_whitelisted_data_reached(fake)


def test_a_storyboard_becomes_timed_lines_of_the_one_text(fake):
    ark(fake).generate(video_request(duration_s=None, prompt="",
                                     shots=(Shot("a boat drifts", "pan_left", 2.0),
                                            Shot("close-up", "zoom_in", 1.5))))
    body = fake.requests_to("/api/v3/contents/generations/tasks", "POST")[0].json()
    assert body["content"][0] == {
        "type": "text",
        "text": "[0-2s] a boat drifts, camera pan left\n[2-3.5s] close-up, camera zoom in"}
    assert body["duration"] == 4


@pytest.mark.parametrize("failure, error, code", [
    ({"code": "OutputVideoSensitiveContentDetected", "message": "m"},
     PermanentProviderError, CONTENT_REFUSED),
    ({"code": "InputImageSensitiveContentDetected.PrivacyInformation", "message": "real person"},
     PermanentProviderError, CONTENT_REFUSED),
    ({"code": "InvalidParameter", "message": "m"},
     PermanentProviderError, "provider_rejected_request"),
    ({"code": "InternalServiceError", "message": "m"},
     TransientProviderError, "provider_task_failed"),
])
def test_a_failed_task_is_classified_by_its_error_code(fake, failure, error, code):
    fake.outcome, fake.failure = "failed", failure
    with pytest.raises(error) as caught:
        ark(fake).generate(video_request())
    assert caught.value.code == code


def test_an_expired_task_is_transient(fake):
    fake.outcome = "expired"
    with pytest.raises(TransientProviderError) as caught:
        ark(fake).generate(video_request())
    assert caught.value.code == "provider_task_failed"


@pytest.mark.parametrize("behaviour, error, code", [
    (REFUSAL, PermanentProviderError, CONTENT_REFUSED),
    (429, TransientProviderError, "provider_rate_limited"),
    (500, TransientProviderError, "provider_server_error"),
    ("garbage", TransientProviderError, "invalid_provider_output"),  # no task id
])
def test_task_creation_failures_are_classified(fake, behaviour, error, code):
    fake.fail_next(behaviour)
    with pytest.raises(error) as caught:
        ark(fake).generate(video_request())
    assert caught.value.code == code
    assert fake.requests_to("/api/v3/contents/generations/tasks/") == []


def test_a_task_that_never_finishes_times_out_and_is_cancelled(fake):
    fake.outcome = "never"
    started = time.monotonic()
    with pytest.raises(TransientProviderError) as caught:
        ark(fake, poll_interval_s=0.05, task_timeout_s=0.3).generate(video_request())
    assert caught.value.code == "provider_timeout"
    assert time.monotonic() - started < 2
    deletes = fake.requests_to("/api/v3/contents/generations/tasks/", "DELETE")
    assert len(deletes) == 1 and deletes[0].header("Authorization") == f"Bearer {KEY}"
    assert [task["status"] for task in fake.tasks.values()] == ["cancelled"]
    assert_only_whitelisted_data_reached(fake)


def test_a_running_task_that_cannot_be_cancelled_still_times_out(fake):
    fake.outcome, fake.never_state = "never", "running"
    with pytest.raises(TransientProviderError) as caught:
        ark(fake, poll_interval_s=0.05, task_timeout_s=0.2).generate(video_request())
    assert caught.value.code == "provider_timeout"
    assert len(fake.requests_to("/api/v3/contents/generations/tasks/", "DELETE")) == 1


def test_a_few_failed_polls_are_tolerated_but_not_many(fake):
    fake.fail_polls(500, 502)
    assert ark(fake).generate(video_request()).outputs
    fake.fail_polls(500, 500, 500, 500)
    with pytest.raises(TransientProviderError) as caught:
        ark(fake).generate(video_request())
    assert caught.value.code == "provider_server_error"


@pytest.mark.parametrize("setup", [
    lambda f: setattr(f, "video", b"<html>oops</html>"),
    lambda f: setattr(f, "video_url", "file:///etc/passwd"),
])
def test_a_bad_video_result_is_a_malformed_answer(fake, setup):
    setup(fake)
    with pytest.raises(TransientProviderError) as caught:
        ark(fake).generate(video_request())
    assert caught.value.code == "invalid_provider_output"


# ------------------------------------------------------------------ through the router


def router_config(fake: FakeArk, **extra) -> dict:
    return {  # the providers file's structure (docs/providers.md)
        "providers": {"seedream": conf(fake, **extra),
                      "local": {"type": "local", "video_size": 64, "video_fps": 4}},
        "routes": {"text-to-image": ["seedream", "local"],
                   "image-to-video": ["seedream", "local"]},
        "retry": {"attempts": 2, "base_delay_s": 0.01, "max_delay_s": 0.05},
        "breaker": {"failures": 2, "cooldown_s": 60},
    }


def test_a_429_is_retried_and_then_succeeds(fake):
    fake.fail_next(429)
    routed = build_router(router_config(fake)).run(provider_request(n=1))
    assert routed.provider == "seedream"
    assert [a.code for a in routed.attempts] == ["provider_rate_limited", None]


def test_an_ark_outage_fails_over_to_the_next_provider(fake):
    fake.mode = 503
    routed = build_router(router_config(fake)).run(provider_request(n=1))
    assert routed.provider == "local"


def test_a_refusal_is_not_retried_on_ark(fake):
    fake.fail_next(REFUSAL)
    router = build_router(router_config(fake))
    with pytest.raises(PermanentProviderError) as caught:  # the router stops at a refusal
        router.run(provider_request(n=1))
    assert caught.value.code == CONTENT_REFUSED
    assert [(a.provider, a.code) for a in caught.value.attempts] == [("seedream",
                                                                       CONTENT_REFUSED)]
    assert len(fake.requests_to("/api/v3/images/generations")) == 1
