"""The ``gemini`` adapter against a fake of the Gemini API over real loopback
HTTP (tests/fakes/gemini.py): generateContent images, Imagen ``predict``, Veo
through the long-running operation API (submit, poll, download with the key),
every error class, refusals (which Google answers with HTTP 200), 429 with its
RetryInfo, a hang, an operation that never finishes, and that nothing
identifying an account is sent."""

from __future__ import annotations

import base64
import json
import time

import pytest

from services.generation.providers.base import (
    CONTENT_REFUSED,
    PermanentProviderError,
    ProviderError,
    TransientProviderError,
)
from services.generation.providers.router import build_provider
from tests.fakes.gemini import FakeGemini
from tests.fakes.providers import png_bytes
from tests.integration.test_generation_providers import (
    ALLOWED_HEADERS,
    IDENTITY,
    JOB,
    KEY,
    progress_log,
    provider_request,
)

pytestmark = pytest.mark.integration

IMAGE_MODEL, IMAGEN, VEO = "gemini-2.5-flash-image", "imagen-4.0-generate-001", "veo-3.1-generate-preview"
SOURCE = png_bytes(16, 16)


@pytest.fixture
def fake():
    with FakeGemini(api_key=KEY, hang_s=3) as server:
        yield server


def gemini(fake, model: str = IMAGE_MODEL, **changes):
    return build_provider("gemini", {
        "type": "gemini", "base_url": f"{fake.url}/v1beta", "api_key": KEY, "model": model,
        "region": "us", "timeout_s": 2, "poll_interval_s": 0.01, "task_timeout_s": 5,
        "allow_private_network": True, **changes})


def video_request(**changes):
    return provider_request(JOB, job_type="image-to-video", n=1, width=640, height=360,
                            duration_s=8, source_image=SOURCE, source_content_type="image/png",
                            **changes)


def image_to_image(**changes):
    return provider_request(JOB, job_type="image-to-image", n=1, source_image=SOURCE,
                            source_content_type="image/png", strength=0.5, **changes)


def assert_only_whitelisted_data(fake) -> None:
    """Every request: the key only in x-goog-api-key, no account identifier
    anywhere, and bodies holding only the documented whitelisted fields."""
    assert fake.requests, "the fake received nothing"
    for recorded in fake.requests:
        assert {h.lower() for h in recorded.headers} <= ALLOWED_HEADERS | {"x-goog-api-key"}
        assert recorded.header("Authorization") is None
        assert recorded.header("x-goog-api-key") == KEY
        assert KEY not in recorded.path
        raw = json.dumps(recorded.headers) + recorded.path + recorded.body.decode("latin-1")
        for value in IDENTITY:
            assert value not in raw
        body = recorded.json() if recorded.body else {}
        assert set(body) <= {"contents", "generationConfig", "instances", "parameters"}


# ------------------------------------------------------------------ generateContent


def test_generate_content_makes_one_request_per_image(fake):
    events, progress = progress_log()
    result = gemini(fake).generate(provider_request(JOB), progress)  # n=2, 64x48, seed 11
    assert [(o.content_type, o.width, o.height) for o in result.outputs] == \
        [("image/png", 64, 48)] * 2
    sent = fake.requests_to(f"/v1beta/models/{IMAGE_MODEL}:generateContent", "POST")
    assert len(sent) == 2
    assert sent[0].json() == {
        "contents": [{"role": "user", "parts": [{"text": "a paper boat on a puddle"}]}],
        "generationConfig": {"responseModalities": ["TEXT", "IMAGE"], "seed": 11,
                             "imageConfig": {"aspectRatio": "4:3"}}}
    assert sent[1].json()["generationConfig"]["seed"] == 12  # a different image each
    assert [stage for _, stage in events] == ["submitting", "downloading", "downloading",
                                              "downloaded"]
    assert_only_whitelisted_data(fake)


def test_image_to_image_sends_the_source_inline(fake):
    result = gemini(fake, image_size="2K").generate(image_to_image(width=None, height=None))
    assert result.outputs[0].content_type == "image/png"
    body = fake.requests[-1].json()
    text, inline = body["contents"][0]["parts"]
    assert text == {"text": "a paper boat on a puddle"}
    assert inline["inlineData"]["mimeType"] == "image/png"
    assert base64.b64decode(inline["inlineData"]["data"]) == SOURCE
    assert body["generationConfig"]["imageConfig"] == {"imageSize": "2K"}
    assert_only_whitelisted_data(fake)


@pytest.mark.parametrize("outcome, error, code", [
    ("blocked", PermanentProviderError, CONTENT_REFUSED),
    ("safety", PermanentProviderError, CONTENT_REFUSED),
    ("no_image", TransientProviderError, "invalid_provider_output"),
])
def test_refusals_come_with_http_200(fake, outcome, error, code):
    fake.outcome = outcome
    with pytest.raises(error) as caught:
        gemini(fake).generate(provider_request(JOB))
    assert caught.value.code == code
    assert len(fake.requests) == 1  # the first refusal ends it


FAILURES = {  # behaviour of the fake -> the error's code (permanent unless transient)
    500: "provider_server_error", 503: "provider_server_error", 504: "provider_server_error",
    400: "provider_rejected_request", 404: "provider_rejected_request",
    403: "provider_auth_failed", "drop": "provider_connection_failed",
    "garbage": "invalid_provider_output", "redirect": "invalid_provider_output",
}
TRANSIENT = {500, 503, 504, "drop", "garbage", "redirect"}


@pytest.mark.parametrize("behaviour", FAILURES)
def test_failures_are_classified(fake, behaviour):
    fake.fail_next(behaviour)
    with pytest.raises(ProviderError) as caught:
        gemini(fake).generate(provider_request(JOB, n=1))
    assert (caught.value.code, caught.value.transient) == \
        (FAILURES[behaviour], behaviour in TRANSIENT)


def test_429_takes_its_retry_delay_from_retry_info(fake):
    fake.fail_next(429)
    with pytest.raises(TransientProviderError) as caught:
        gemini(fake).generate(provider_request(JOB, n=1))
    assert (caught.value.code, caught.value.retry_after) == ("provider_rate_limited", 2.0)
    fake.fail_next((429, {"error": {"code": 429, "status": "RESOURCE_EXHAUSTED",
                                    "message": "quota"}}))
    with pytest.raises(TransientProviderError) as caught:
        gemini(fake).generate(provider_request(JOB, n=1))
    assert (caught.value.code, caught.value.retry_after) == ("provider_rate_limited", None)


def test_a_wrong_key_is_refused_and_a_hang_times_out(fake):
    with pytest.raises(PermanentProviderError) as caught:
        gemini(fake, api_key="AIza-wrong").generate(provider_request(JOB, n=1))
    assert caught.value.code == "provider_auth_failed"
    fake.fail_next("hang")
    started = time.monotonic()
    with pytest.raises(TransientProviderError) as caught:
        gemini(fake, timeout_s=0.3).generate(provider_request(JOB, n=1))
    assert caught.value.code == "provider_timeout" and time.monotonic() - started < 2


# ------------------------------------------------------------------ Imagen


def test_imagen_predicts_n_images_in_one_request(fake):
    result = gemini(fake, IMAGEN).generate(provider_request(JOB, width=90, height=160))
    assert [(o.width, o.height) for o in result.outputs] == [(36, 64)] * 2
    [sent] = fake.requests
    assert sent.path == f"/v1beta/models/{IMAGEN}:predict"
    assert sent.json() == {"instances": [{"prompt": "a paper boat on a puddle"}],
                           "parameters": {"sampleCount": 2, "aspectRatio": "9:16",
                                          "includeRaiReason": True}}
    fake.outcome = "filtered"
    with pytest.raises(PermanentProviderError) as caught:
        gemini(fake, IMAGEN).generate(provider_request(JOB))
    assert caught.value.code == CONTENT_REFUSED
    assert_only_whitelisted_data(fake)


# ------------------------------------------------------------------ Veo


def test_veo_submits_polls_and_downloads_the_video_with_the_key(fake):
    fake.polls_to_finish = 3
    events, progress = progress_log()
    result = gemini(fake, VEO, resolution="720p").generate(video_request(), progress)
    output = result.outputs[0]
    assert (output.content_type, output.width, output.height) == ("video/mp4", 64, 64)
    submit = fake.requests[0]
    assert (submit.method, submit.path) == ("POST", f"/v1beta/models/{VEO}:predictLongRunning")
    body = submit.json()
    assert body["instances"][0]["prompt"] == "a paper boat on a puddle"
    assert base64.b64decode(body["instances"][0]["image"]["bytesBase64Encoded"]) == SOURCE
    assert body["instances"][0]["image"]["mimeType"] == "image/png"
    assert body["parameters"] == {"aspectRatio": "16:9", "durationSeconds": 8,
                                  "negativePrompt": "blurry", "resolution": "720p"}
    polls = [r for r in fake.requests if r.method == "GET" and "/operations/" in r.path]
    assert len(polls) == 3
    [download] = [r for r in fake.requests if r.path.startswith("/v1beta/files/")]
    assert download.header("x-goog-api-key") == KEY
    stages = [stage for _, stage in events]
    assert stages[0] == "submitting" and stages[-2:] == ["downloading", "downloaded"]
    assert "running" in stages
    assert [f for f, _ in events] == sorted(f for f, _ in events)
    assert_only_whitelisted_data(fake)


def test_a_redirected_download_goes_without_the_key_and_inline_videos_are_decoded(fake):
    fake.video_delivery = "redirect"
    assert gemini(fake, VEO).generate(video_request()).outputs[0].content_type == "video/mp4"
    [stored] = fake.requests_to("/storage/")
    assert stored.header("x-goog-api-key") is None and stored.header("Host").startswith("localhost")
    fake.video_delivery = "inline"
    output = gemini(fake, VEO).generate(video_request()).outputs[0]
    assert (output.content_type, output.width) == ("video/mp4", 64)
    assert not [r for r in fake.requests_to("/v1beta/files/")
                if r.header("x-goog-api-key") is None]


def test_veo_filtered_is_a_refusal_and_a_failed_operation_is_classified(fake):
    fake.outcome = "filtered"
    with pytest.raises(PermanentProviderError) as caught:
        gemini(fake, VEO).generate(video_request())
    assert caught.value.code == CONTENT_REFUSED
    fake.outcome = "failed"
    with pytest.raises(PermanentProviderError) as caught:
        gemini(fake, VEO).generate(video_request())
    assert caught.value.code == "provider_rejected_request"
    fake.failure_code = 13
    with pytest.raises(TransientProviderError) as caught:
        gemini(fake, VEO).generate(video_request())
    assert caught.value.code == "provider_task_failed"
    assert "fake broke" not in caught.value.message


def test_veo_tolerates_a_few_failed_polls(fake):
    fake.fail_polls(503, 429)
    assert len(gemini(fake, VEO).generate(video_request()).outputs) == 1
    fake.fail_polls(503, 503, 503, 503)
    with pytest.raises(TransientProviderError) as caught:
        gemini(fake, VEO).generate(video_request())
    assert caught.value.code in ("provider_server_error", "provider_rate_limited")


def test_an_operation_that_never_finishes_times_out(fake):
    fake.outcome = "never"
    started = time.monotonic()
    with pytest.raises(TransientProviderError) as caught:
        gemini(fake, VEO, task_timeout_s=0.3, poll_interval_s=0.05).generate(video_request())
    assert caught.value.code == "provider_timeout"
    assert 0.2 < time.monotonic() - started < 3
    assert len([r for r in fake.requests if "/operations/" in r.path]) >= 2


def test_a_garbage_operation_name_is_never_followed(fake):
    fake.fail_next("garbage")
    with pytest.raises(TransientProviderError) as caught:
        gemini(fake, VEO).generate(video_request())
    assert caught.value.code == "invalid_provider_output"
    assert len(fake.requests) == 1


def test_only_whitelisted_data_is_sent_by_every_call(fake):
    gemini(fake).generate(provider_request(JOB))
    gemini(fake).generate(image_to_image())
    gemini(fake, IMAGEN).generate(provider_request(JOB))
    gemini(fake, VEO).generate(video_request())
    assert_only_whitelisted_data(fake)
    bodies = [r.body.decode() for r in fake.requests if r.method == "POST"]
    assert len(bodies) == 5
    # the negative prompt goes to Veo only (the one call that documents it)
    assert ["blurry" in body for body in bodies] == [False, False, False, False, True]
