"""The volcengine_ark adapter without a network: configuration, exactly what
each request carries, sizes, and how Ark's error codes are read."""

from __future__ import annotations

import base64

import pytest

from services.generation.providers.base import (
    CONTENT_REFUSED,
    PermanentProviderError,
    ProviderRequest,
    Shot,
    TransientProviderError,
    wait_for_task,
)
from services.generation.providers.common import base64_bytes
from services.generation.providers.router import ProviderConfigError, build_provider
from services.generation.providers.volcengine_ark import (
    DEFAULT_BASE_URL,
    ArkProvider,
    ark_errors,
    failure,
    refused,
    scaled_size,
    video_text,
)

CONF = {"type": "volcengine_ark", "api_key": "ark-key", "model": "doubao-seedream-4-5-251128"}
SOURCE = b"\x89PNG\r\n\x1a\nnot-really-but-bytes"


def ark(**conf) -> ArkProvider:
    return ArkProvider.from_config("seedream", {**CONF, **conf})


def image_request(**changes) -> ProviderRequest:
    fields = {"job_type": "text-to-image", "prompt": "a red fox", "negative_prompt": "blurry",
              "n": 1, "width": 1024, "height": 1024, "seed": None, **changes}
    return ProviderRequest(**fields)


def video_request(**changes) -> ProviderRequest:
    fields = {"job_type": "image-to-video", "prompt": "the fox turns its head",
              "source_image": SOURCE, "source_content_type": "image/png", **changes}
    return ProviderRequest(**fields)


# ------------------------------------------------------------------ configuration


def test_the_defaults_are_arks_public_beijing_api_and_the_image_job_types():
    provider = ark()
    assert provider.http.base_url == DEFAULT_BASE_URL == "https://ark.cn-beijing.volces.com/api/v3"
    assert provider.job_types == {"text-to-image", "image-to-image"}
    assert provider.http.auth_header == "Authorization" and provider.http.auth_scheme == "Bearer"
    assert provider.response_format == "url" and provider.ratio == "adaptive"


def test_the_router_builds_it_and_ignores_the_keys_it_owns():
    provider = build_provider("seedream", {
        **CONF, "base_url": "https://ark.ap-southeast.bytepluses.com/api/v3", "region": "sg",
        "max_concurrency": 8, "enabled": True, "base_dir": "/etc/darkroom", "timeout_s": 30,
        "job_types": ["text-to-image"], "allow_private_network": "false"})
    assert isinstance(provider, ArkProvider)
    assert provider.http.base_url == "https://ark.ap-southeast.bytepluses.com/api/v3"
    assert provider.http.timeout_s == 30 and provider.job_types == {"text-to-image"}


@pytest.mark.parametrize("conf, key", [
    ({"api_key": ""}, "api_key"),
    ({"model": None}, "model"),
    ({"base_url": "ftp://ark.example"}, "base_url"),
    ({"job_types": ["text-to-music"]}, "job_types"),
    ({"job_types": ["text-to-image", "image-to-video"]}, "video_model"),
    ({"response_format": "png"}, "response_format"),
    ({"ratio": "wide"}, "ratio"),
    ({"timeout_s": 0}, "timeout_s"),
    ({"poll_interval_s": "soon"}, "poll_interval_s"),
    ({"task_timeout_s": -1}, "task_timeout_s"),
    ({"min_duration_s": 13}, "min_duration_s"),
    ({"min_pixels": -1}, "min_pixels"),
    ({"min_pixels": 4096 * 4096, "max_pixels": 2048 * 2048}, "max_pixels"),
    ({"max_poll_errors": "many"}, "max_poll_errors"),
])
def test_a_bad_config_is_refused_naming_the_key(conf, key):
    with pytest.raises(ProviderConfigError) as caught:
        build_provider("seedream", {**CONF, **conf})
    assert key in str(caught.value) and "seedream" in str(caught.value)


def test_one_entry_can_run_images_and_video_with_two_models():
    provider = ark(job_types=["text-to-image", "image-to-video"],
                   video_model="doubao-seedance-1-0-pro-250528")
    assert provider.model == "doubao-seedream-4-5-251128"
    assert provider.video_model == "doubao-seedance-1-0-pro-250528"
    video_only = ark(job_types="image-to-video", model="doubao-seedance-1-0-pro-250528")
    assert video_only.video_model == "doubao-seedance-1-0-pro-250528"


# ------------------------------------------------------------------ image payloads


def test_an_image_request_sends_the_prompt_size_and_format_only():
    body = ark().payload(image_request())
    assert body == {"model": "doubao-seedream-4-5-251128", "prompt": "a red fox",
                    "size": "1920x1920", "response_format": "url"}
    assert "negative_prompt" not in body and "n" not in body  # Ark has neither


def test_seeds_differ_per_image_so_n_requests_give_n_pictures():
    provider = ark()
    request = image_request(seed=2**31 - 1, n=3)
    assert [provider.payload(request, i)["seed"] for i in range(3)] == [2**31 - 1, 0, 1]


def test_image_to_image_sends_the_source_as_a_data_uri_and_no_strength():
    request = image_request(job_type="image-to-image", source_image=SOURCE,
                            source_content_type="image/JPEG", strength=0.3)
    body = ark(watermark=False, response_format="b64_json").payload(request)
    assert body["image"] == "data:image/jpeg;base64," + base64.b64encode(SOURCE).decode()
    assert body["watermark"] is False and body["response_format"] == "b64_json"
    assert "strength" not in body


def test_a_configured_size_wins_and_no_size_falls_back_to_2k():
    assert ark(size="4K").payload(image_request())["size"] == "4K"
    assert ark().payload(image_request(width=None, height=None))["size"] == "2K"
    assert ark(min_pixels=0).payload(image_request(width=768, height=512))["size"] == "768x512"
    seedream_3 = ark(min_pixels=512 * 512, max_pixels=2048 * 2048)
    assert seedream_3.payload(image_request(width=1536, height=1536))["size"] == "1536x1536"


@pytest.mark.parametrize("width, height, min_pixels, expected", [
    (1024, 1024, 2560 * 1440, "1920x1920"),
    (1536, 1024, 2560 * 1440, "2352x1568"),
    (512, 1536, 1280 * 720, "555x1663"),
    (2560, 1440, 2560 * 1440, "2560x1440"),
    (8192, 8192, 0, "4096x4096"),
])
def test_sizes_are_scaled_into_seedreams_pixel_range_keeping_the_aspect_ratio(
        width, height, min_pixels, expected):
    size = scaled_size(width, height, min_pixels)
    assert size == expected
    w, h = (int(v) for v in size.split("x"))
    assert min_pixels <= w * h <= 4096 * 4096
    assert abs(w / h - width / height) < 0.01


# ------------------------------------------------------------------ video payloads


def test_a_video_task_carries_the_text_the_first_frame_and_parameters():
    provider = ark(job_types=["image-to-video"], model="doubao-seedance-1-0-pro-250528",
                   resolution="720p", watermark="no")
    body = provider.task_payload(video_request(duration_s=4.4, seed=9, negative_prompt="x",
                                               width=1024, height=1024))
    assert body == {
        "model": "doubao-seedance-1-0-pro-250528",
        "content": [
            {"type": "text", "text": "the fox turns its head"},
            {"type": "image_url", "role": "first_frame",
             "image_url": {"url": "data:image/png;base64," + base64.b64encode(SOURCE).decode()}},
        ],
        "ratio": "adaptive", "duration": 4, "seed": 9, "resolution": "720p", "watermark": False,
    }


def test_a_storyboard_is_written_into_the_text_and_sets_the_duration():
    request = video_request(prompt="", shots=(Shot("a boat drifts", "pan_left", 2.0),
                                              Shot("close-up", "static", 1.5)))
    assert video_text(request) == "[0-2s] a boat drifts, camera pan left\n[2-3.5s] close-up"
    body = ark(job_types=["image-to-video"]).task_payload(request)
    assert body["content"][0]["text"].startswith("[0-2s]")
    assert body["duration"] == 4  # the shots' 3.5 s, in whole seconds
    assert "seed" not in body and "resolution" not in body and "watermark" not in body


def test_durations_are_kept_within_the_configured_range():
    provider = ark(job_types=["image-to-video"], min_duration_s=5, max_duration_s=10)
    assert provider.task_payload(video_request(duration_s=2))["duration"] == 5
    assert provider.task_payload(video_request(duration_s=30))["duration"] == 10
    assert "duration" not in provider.task_payload(video_request())
    only_image = provider.task_payload(video_request(prompt=""))
    assert [item["type"] for item in only_image["content"]] == ["image_url"]


# ------------------------------------------------------------------ errors


@pytest.mark.parametrize("code, expected", [
    ("OutputImageSensitiveContentDetected", True),
    ("InputTextSensitiveContentDetected", True),
    ("InputImageSensitiveContentDetected.PrivacyInformation", True),
    ("SensitiveContentDetected.SevereViolation", True),
    ("OutputVideoSensitiveContentDetected", True),
    ("InputTextRiskDetection", True),
    ("OutputImageRiskDetection", True),
    ("ContentSecurityDetectionError", False),
    ("InvalidParameter", False),
    (None, False),
])
def test_arks_refusal_codes_are_recognised(code, expected):
    assert refused(code) is expected


def test_ark_error_codes_map_onto_the_provider_errors():
    refusal = ark_errors(400, "OutputImageSensitiveContentDetected", "seedream answered 400")
    assert isinstance(refusal, PermanentProviderError) and refusal.code == CONTENT_REFUSED
    for code in ("ContentSecurityDetectionError", "InvalidEndpoint.ClosedEndpoint"):
        mapped = ark_errors(400, code, "w")
        assert isinstance(mapped, TransientProviderError)
        assert mapped.code == "provider_server_error"
    assert ark_errors(400, "InvalidParameter", "w") is None  # the common mapping applies
    assert ark_errors(429, "RateLimitExceeded.EndpointRPMExceeded", "w") is None


@pytest.mark.parametrize("error, kind, code", [
    ({"code": "OutputVideoSensitiveContentDetected", "message": "the prompt echoed"},
     PermanentProviderError, CONTENT_REFUSED),
    ({"code": "InvalidParameter.Duration", "message": "x"},
     PermanentProviderError, "provider_rejected_request"),
    ({"code": "InternalServiceError", "message": "x"}, TransientProviderError,
     "provider_task_failed"),
    (None, TransientProviderError, "provider_task_failed"),
    ({"code": "<script>", "message": "x"}, TransientProviderError, "provider_task_failed"),
])
def test_a_failed_generation_is_classified_by_its_code_alone(error, kind, code):
    raised = failure("seedance", error, "task")
    assert isinstance(raised, kind) and raised.code == code
    assert "echoed" not in raised.message and "<script>" not in raised.message


class Answers:
    """Stands in for ProviderHttp.call: canned answers, calls recorded."""

    def __init__(self, *answers):
        self.answers, self.calls = list(answers), []

    def __call__(self, method, path, payload=None, *, errors=None):
        self.calls.append((method, path, payload))
        answer = self.answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer


def test_a_per_image_error_inside_a_200_is_raised_as_arks_code_says():
    provider = ark()
    provider.http.call = Answers({"data": [{"error": {
        "code": "OutputImageSensitiveContentDetected", "message": "m"}}]})
    with pytest.raises(PermanentProviderError) as caught:
        provider.generate(image_request())
    assert caught.value.code == CONTENT_REFUSED
    provider.http.call = Answers({"data": [], "error": {"code": "InternalServiceError"}})
    with pytest.raises(TransientProviderError) as caught:
        provider.generate(image_request())
    assert caught.value.code == "provider_task_failed"
    provider.http.call = Answers({"data": []})
    with pytest.raises(TransientProviderError) as caught:
        provider.generate(image_request())
    assert caught.value.code == "invalid_provider_output"


@pytest.mark.parametrize("task, code", [
    ({"status": "cancelled"}, "provider_task_failed"),
    ({"status": "expired"}, "provider_task_failed"),
    ({"status": "paused"}, "invalid_provider_output"),
    ({"status": "succeeded", "content": {}}, "invalid_provider_output"),
])
def test_tasks_that_end_without_a_video_are_transient(task, code):
    provider = ark(job_types=["image-to-video"], poll_interval_s=0.01)
    provider.sleep = lambda s: None
    provider.http.call = Answers({"id": "cgt-1"}, task)
    with pytest.raises(TransientProviderError) as caught:
        provider.generate(video_request())
    assert caught.value.code == code


def test_a_video_job_wants_one_video():
    provider = ark(job_types=["image-to-video"])
    provider.http.call = Answers()
    with pytest.raises(PermanentProviderError):
        provider.generate(video_request(n=2))
    assert provider.http.call.calls == []


def test_a_job_type_not_configured_is_refused_before_any_call():
    provider = ark(job_types=["text-to-image"])
    provider.http.call = Answers()
    with pytest.raises(PermanentProviderError) as caught:
        provider.generate(image_request(job_type="image-to-image", source_image=SOURCE))
    assert caught.value.code == "unsupported_job_type"
    assert provider.http.call.calls == []


# ------------------------------------------------------------------ the shared helpers it uses


def test_wait_for_task_tolerates_a_few_failed_polls_and_cancels_at_the_deadline():
    now, cancelled = [0.0], []

    def sleep(seconds):
        now[0] += seconds

    answers = iter([TransientProviderError("provider_server_error"), {"s": "run"},
                    {"s": "done"}])

    def fetch():
        answer = next(answers)
        if isinstance(answer, Exception):
            raise answer
        return answer

    def read(answer):
        return answer if answer["s"] == "done" else None

    assert wait_for_task(fetch, read, who="v", interval_s=1, timeout_s=10, max_errors=1,
                         sleep=sleep, clock=lambda: now[0]) == {"s": "done"}

    def cancel():
        cancelled.append(True)
        raise TransientProviderError("provider_server_error")  # best effort: swallowed

    with pytest.raises(TransientProviderError) as caught:
        wait_for_task(lambda: {"s": "run"}, read, who="v", interval_s=1, timeout_s=3,
                      max_errors=1, sleep=sleep, clock=lambda: now[0], cancel=cancel)
    assert caught.value.code == "provider_timeout" and cancelled == [True]


def test_base64_bytes_checks_size_and_alphabet():
    assert base64_bytes(base64.b64encode(b"abc").decode(), "v", 10) == b"abc"
    for text in ("not base64!", base64.b64encode(b"x" * 100).decode()):
        with pytest.raises(TransientProviderError) as caught:
            base64_bytes(text, "v", 10)
        assert caught.value.code == "invalid_provider_output"
