"""The fal adapter without a network: configuration, what each request body
holds (the ``inputs`` mapping), URLs, and how answers and errors are read."""

from __future__ import annotations

import base64
import json

import pytest
import requests

from services.generation.providers.base import (
    CONTENT_REFUSED,
    PermanentProviderError,
    ProviderRequest,
    TransientProviderError,
)
from services.generation.providers.fal import (
    DEFAULT_BASE_URL,
    DEFAULT_INPUTS,
    FalHttp,
    FalProvider,
    _fal_error_type,
)
from services.generation.providers.router import ProviderConfigError, build_provider
from tests.fakes.providers import png_bytes

CONF = {"type": "fal", "model": "fal-ai/flux/dev", "api_key": "fal-key"}


def fal(**conf) -> FalProvider:
    return FalProvider.from_config("flux", {**CONF, **conf})


def request(**kw) -> ProviderRequest:
    return ProviderRequest(**{"job_type": "text-to-image", "prompt": "a red fox", **kw})


def response(status: int, body, headers: dict | None = None) -> requests.Response:
    answer = requests.Response()
    answer.status_code = status
    answer._content = json.dumps(body).encode() if not isinstance(body, bytes) else body
    answer.headers.update({"Content-Type": "application/json", **(headers or {})})
    return answer


# ------------------------------------------------------------------ configuration


def test_defaults_follow_fals_documented_api():
    provider = build_provider("flux", CONF)
    assert isinstance(provider, FalProvider)
    assert provider.http.base_url == DEFAULT_BASE_URL == "https://queue.fal.run"
    assert provider.http.auth_scheme == "Key" and provider.http.auth_header == "Authorization"
    assert provider.http._auth_headers("https://queue.fal.run/x") == \
        {"Authorization": "Key fal-key"}
    assert provider.http._auth_headers("https://v3.fal.media/files/x.png") == {}
    assert provider.job_types == {"text-to-image"}
    assert provider.inputs == DEFAULT_INPUTS


def test_region_and_the_router_settings_are_accepted_and_ignored():
    provider = fal(region="us", max_concurrency=4, enabled=True, allow_private_network="true",
                   timeout_s=5, job_types=["text-to-image", "image-to-image"])
    assert provider.job_types == {"text-to-image", "image-to-image"}
    assert provider.http.timeout_s == 5


@pytest.mark.parametrize("conf, key", [
    ({"model": None}, "model"),
    ({"model": "flux"}, "model"),
    ({"model": "fal-ai/../x y"}, "model"),
    ({"base_url": "ftp://queue.fal.run"}, "base_url"),
    ({"base_url": " "}, "base_url"),
    ({"job_types": ["text-to-music"]}, "job_types"),
    ({"inputs": ["prompt"]}, "inputs"),
    ({"inputs": {"prompt": "prompt", "user": "user_id"}}, "inputs.user"),
    ({"inputs": {"prompt": "prompt", "seed": "bad name"}}, "inputs.seed"),
    ({"inputs": {"seed": "seed"}}, "inputs.prompt"),
    ({"inputs": {"prompt": "prompt"}, "job_types": ["image-to-image"]}, "inputs.image"),
    ({"task_timeout_s": 0}, "task_timeout_s"),
    ({"poll_interval_s": -1}, "poll_interval_s"),
    ({"timeout_s": "soon"}, "timeout_s"),
    ({"max_poll_errors": "many"}, "max_poll_errors"),
    ({"output_expiration_s": -1}, "output_expiration_s"),
])
def test_a_bad_config_stops_the_service_naming_the_key(conf, key):
    with pytest.raises(ProviderConfigError) as refused:
        build_provider("flux", {**CONF, **conf})
    assert "providers.flux" in str(refused.value) and key in str(refused.value)


# ------------------------------------------------------------------ what is sent


def test_the_default_mapping_sends_fals_common_input_names():
    body, = fal().payloads(request(negative_prompt="fog", n=3, seed=9, width=640, height=480))
    assert body == {"prompt": "a red fox", "negative_prompt": "fog", "seed": 9, "num_images": 3,
                    "image_size": {"width": 640, "height": 480}}


def test_absent_values_are_not_sent():
    assert fal().payloads(request()) == [{"prompt": "a red fox", "num_images": 1}]


def test_only_mapped_fields_are_sent():
    provider = fal(inputs={"prompt": "text", "width": "w", "height": "h"})
    body, = provider.payloads(request(negative_prompt="fog", seed=1, width=8, height=9))
    assert body == {"text": "a red fox", "w": 8, "h": 9}


def test_without_an_n_input_each_image_is_its_own_request_with_the_next_seed():
    provider = fal(inputs={"prompt": "prompt", "seed": "seed"})
    assert provider.payloads(request(n=3, seed=41)) == [
        {"prompt": "a red fox", "seed": 41}, {"prompt": "a red fox", "seed": 42},
        {"prompt": "a red fox", "seed": 43}]
    assert provider.payloads(request(n=2)) == [{"prompt": "a red fox"}] * 2


def test_dotted_and_list_input_names():
    provider = fal(inputs={"prompt": "input.prompt", "width": "input.size.w",
                           "height": "input.size.h", "image": "image_urls[]"},
                   job_types=["image-to-image"])
    body, = provider.payloads(request(job_type="image-to-image", width=3, height=4,
                                      source_image=b"\x89PNG", source_content_type="image/png"))
    assert body == {"input": {"prompt": "a red fox", "size": {"w": 3, "h": 4}},
                    "image_urls": ["data:image/png;base64," + base64.b64encode(b"\x89PNG").decode()]}


def test_the_source_image_goes_as_a_data_uri_with_strength_and_duration():
    provider = fal(model="fal-ai/kling-video/v2/image-to-video", job_types=["image-to-video"],
                   inputs={"prompt": "prompt", "image": "image_url", "duration_s": "duration",
                           "strength": "strength"})
    body, = provider.payloads(ProviderRequest("image-to-video", "waves", source_image=b"abc",
                                              source_content_type="image/jpeg", duration_s=5,
                                              strength=0.4))
    assert body == {"prompt": "waves", "image_url": "data:image/jpeg;base64,YWJj",
                    "duration": 5, "strength": 0.4}


def test_outputs_expire_on_fals_cdn_unless_turned_off():
    assert fal().headers() == {"X-Fal-Object-Lifecycle-Preference":
                               '{"expiration_duration_seconds": 3600}'}
    assert fal(output_expiration_s=600).headers()["X-Fal-Object-Lifecycle-Preference"] == \
        '{"expiration_duration_seconds": 600}'
    assert fal(output_expiration_s=0).headers() == {}


# ------------------------------------------------------------------ URLs


@pytest.mark.parametrize("model, app", [
    ("fal-ai/flux/dev", "fal-ai/flux"),
    ("fal-ai/fast-sdxl", "fal-ai/fast-sdxl"),
    ("fal-ai/flux-pro/v1.1-ultra/redux", "fal-ai/flux-pro"),
    ("workflows/someone/my-flow/run", "workflows/someone/my-flow"),
])
def test_status_urls_name_the_app_without_the_endpoint_path(model, app):
    queued = fal(model=model)._queued({"request_id": "024c-9"})
    assert queued.status_url == f"https://queue.fal.run/{app}/requests/024c-9/status"
    assert queued.response_url == f"https://queue.fal.run/{app}/requests/024c-9"
    assert queued.cancel_url == f"https://queue.fal.run/{app}/requests/024c-9/cancel"


def test_the_returned_urls_are_used_on_the_queue_origin_only():
    provider = fal()
    mine = provider._queued({"request_id": "r1",
                             "status_url": "https://queue.fal.run/fal-ai/flux/requests/r1/status?x",
                             "response_url": "https://evil.example/fal-ai/flux/requests/r1",
                             "cancel_url": "http://queue.fal.run/fal-ai/flux/requests/r1/cancel"})
    assert mine.status_url == "https://queue.fal.run/fal-ai/flux/requests/r1/status?x"
    assert mine.response_url == "https://queue.fal.run/fal-ai/flux/requests/r1"
    assert mine.cancel_url == "https://queue.fal.run/fal-ai/flux/requests/r1/cancel"


@pytest.mark.parametrize("answer", [{}, {"request_id": 7}, {"request_id": "../../x"},
                                    {"request_id": ""}])
def test_a_submit_answer_without_a_usable_request_id_is_malformed(answer):
    with pytest.raises(TransientProviderError) as caught:
        fal()._queued(answer)
    assert caught.value.code == "invalid_provider_output"


# ------------------------------------------------------------------ answers


def test_fals_error_type_comes_from_the_body_or_the_header():
    refused = {"detail": [{"loc": ["body"], "msg": "x", "type": "image_too_large"},
                          {"loc": ["body", "prompt"], "msg": "y",
                           "type": "content_policy_violation"}]}
    assert _fal_error_type(response(422, refused)) == "content_policy_violation"
    assert _fal_error_type(response(504, {"detail": "Request timed out",
                                          "error_type": "request_timeout"})) == "request_timeout"
    assert _fal_error_type(response(503, b"<html>", {"X-Fal-Error-Type": "runner_disconnected"})) \
        == "runner_disconnected"
    assert _fal_error_type(response(400, {"detail": "plain words, no type"})) is None


@pytest.mark.parametrize("status, body, error, code", [
    (422, {"detail": [{"loc": ["body", "prompt"], "msg": "The content was flagged.",
                       "type": "content_policy_violation"}]}, PermanentProviderError,
     CONTENT_REFUSED),
    (422, {"detail": [{"loc": ["body", "prompt"], "msg": "a very long message " * 40,
                       "input": "x" * 500, "type": "content_policy_violation"}]},
     PermanentProviderError, CONTENT_REFUSED),
    (422, {"detail": [{"loc": ["body", "image_size"], "msg": "too big",
                       "type": "image_too_large"}]}, PermanentProviderError,
     "provider_rejected_request"),
    (401, {"detail": "No user found for Key ID and Secret"}, PermanentProviderError,
     "provider_auth_failed"),
    (429, {"detail": "Too many requests"}, TransientProviderError, "provider_rate_limited"),
    (504, {"detail": "Request timed out", "error_type": "request_timeout"},
     TransientProviderError, "provider_server_error"),
])
def test_errors_are_classified_from_fals_error_shapes(status, body, error, code):
    with pytest.raises(error) as caught:
        FalHttp("flux", "https://queue.fal.run")._raise(response(status, body))
    assert caught.value.code == code
    assert "answered" in caught.value.message
    assert "flagged" not in caught.value.message and "x" * 20 not in caught.value.message


def test_the_outputs_of_a_result():
    provider = fal()
    result = {"images": [{"url": "https://v3.fal.media/files/a.png"},
                         {"url": "https://v3.fal.media/files/b.png"}], "seed": 1}
    assert provider._outputs(result, 2) == ["https://v3.fal.media/files/a.png",
                                            "https://v3.fal.media/files/b.png"]
    assert provider._outputs({"video": {"url": "https://v3.fal.media/v.mp4"}}, 1) == \
        ["https://v3.fal.media/v.mp4"]
    assert provider._outputs({"image": {"url": "u"}}, 1) == ["u"]
    with pytest.raises(TransientProviderError) as caught:
        provider._outputs(result, 3)
    assert caught.value.code == "invalid_provider_output"
    with pytest.raises(TransientProviderError):
        provider._outputs({"images": [{"uri": "x"}]}, 1)


def test_a_result_without_outputs_after_a_status_with_an_error_fails_as_that_error():
    empty = {"detail": "Internal error"}
    with pytest.raises(PermanentProviderError) as refused:
        fal()._outputs(empty, 1, {"status": "COMPLETED", "error": "flagged",
                                  "error_type": "content_policy_violation"})
    assert refused.value.code == CONTENT_REFUSED
    with pytest.raises(TransientProviderError) as failed:
        fal()._outputs(empty, 1, {"status": "COMPLETED", "error": "boom",
                                  "error_type": "runner_disconnected"})
    assert (failed.value.code, failed.value.message) == \
        ("provider_task_failed", "flux request failed (runner_disconnected)")


def test_a_result_fals_safety_checker_flagged_is_a_content_refusal():
    with pytest.raises(PermanentProviderError) as caught:
        fal()._outputs({"images": [{"url": "u"}, {"url": "v"}],
                        "has_nsfw_concepts": [False, True]}, 2)
    assert caught.value.code == CONTENT_REFUSED
    assert fal()._outputs({"images": [{"url": "u"}], "has_nsfw_concepts": [False]}, 1) == ["u"]


def test_data_uri_outputs_are_decoded_and_checked():
    provider = fal()
    png = png_bytes(8, 6)
    data, content_type = provider._bytes("data:image/png;base64," + base64.b64encode(png).decode())
    assert (data, content_type) == (png, "image/png")
    assert provider._output(data, content_type).width == 8
    for bad in ("data:image/png;base64,@@@", "data:text/plain,hello"):
        with pytest.raises(TransientProviderError) as caught:
            provider._bytes(bad)
        assert caught.value.code == "invalid_provider_output"


# ------------------------------------------------------------------ the queue, without a network


class Script:
    """Stands in for FalHttp.fetch: answers (or raises) what it is given, in
    order, and records the calls; a clock that advances only when slept."""

    def __init__(self, *answers):
        self.answers, self.calls, self.now, self.slept = list(answers), [], 0.0, []

    def fetch(self, method, url, payload=None, headers=None):
        self.calls.append((method, url))
        answer = self.answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    def sleep(self, seconds):
        self.slept.append(seconds)
        self.now += seconds


def scripted(script: Script, **conf) -> FalProvider:
    provider = FalProvider.from_config("flux", {**CONF, "poll_interval_s": 2, **conf},
                                       sleep=script.sleep, clock=lambda: script.now)
    provider.http.fetch = script.fetch
    return provider


def test_a_poll_answered_429_waits_as_long_as_retry_after_says():
    script = Script({"request_id": "r1"},
                    TransientProviderError("provider_rate_limited", retry_after=7),
                    {"status": "IN_PROGRESS"}, {"status": "COMPLETED"},
                    {"images": [{"url": "data:image/png;base64,"
                                 + base64.b64encode(png_bytes(4, 4)).decode()}]})
    stages = []
    result = scripted(script).generate(request(), lambda f, stage: stages.append(stage))
    assert len(result.outputs) == 1
    assert script.slept == [7, 2]
    assert stages == ["submitting", "submitted", "in_progress", "completed", "downloading",
                      "downloaded"]
    assert [method for method, _ in script.calls] == ["POST", "GET", "GET", "GET", "GET"]


def test_the_deadline_cancels_a_request_still_queued():
    script = Script({"request_id": "r1"}, *[{"status": "IN_QUEUE", "queue_position": 3}] * 5,
                    {"status": "CANCELLATION_REQUESTED"})
    with pytest.raises(TransientProviderError) as caught:
        scripted(script, task_timeout_s=9).generate(request())
    assert caught.value.code == "provider_timeout"
    assert script.slept == [2, 2, 2, 2] and script.now == 8
    assert script.calls[-1] == ("PUT", "https://queue.fal.run/fal-ai/flux/requests/r1/cancel")


@pytest.mark.parametrize("status, stage, fraction", [
    ({"status": "IN_QUEUE", "queue_position": 0}, "queue_position_0", 0.3),
    ({"status": "IN_QUEUE", "queue_position": 5}, "queue_position_5", 0.05),
    ({"status": "IN_QUEUE"}, "in_queue", 0.0),
    ({"status": "IN_QUEUE", "queue_position": "7"}, "in_queue", 0.0),
    ({"status": "IN_PROGRESS", "logs": []}, "in_progress", 0.5),
])
def test_progress_from_a_status(status, stage, fraction):
    seen = []
    FalProvider._progress(status, lambda f, s: seen.append((f, s)))
    assert seen == [(pytest.approx(fraction), stage)]
