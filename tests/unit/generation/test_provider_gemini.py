"""The ``gemini`` adapter without a network: config checks, the call each model
family makes, exactly what each request becomes, and how answers are read."""

from __future__ import annotations

import base64

import pytest

from services.generation.providers.base import (
    CONTENT_REFUSED,
    PermanentProviderError,
    ProviderRequest,
    TransientProviderError,
)
from services.generation.providers.gemini import BASE_URL, GeminiProvider, retry_delay
from services.generation.providers.router import ProviderConfigError, build_provider
from tests.fakes.providers import png_bytes

CONF = {"type": "gemini", "api_key": "AIza-test", "model": "gemini-2.5-flash-image"}
SOURCE = png_bytes(8, 8)
SOURCE_B64 = base64.b64encode(SOURCE).decode()


def provider(**conf) -> GeminiProvider:
    return GeminiProvider.from_config("gm", {**CONF, **conf})


def test_the_registry_builds_it_with_the_documented_defaults():
    built = build_provider("gm", {**CONF, "region": "us", "max_concurrency": 2, "enabled": True,
                                  "allow_private_network": False})
    assert isinstance(built, GeminiProvider)
    assert built.http.base_url == BASE_URL == "https://generativelanguage.googleapis.com/v1beta"
    assert (built.http.auth_header, built.http.auth_scheme) == ("x-goog-api-key", None)
    assert built.http._auth_headers(BASE_URL + "/models") == {"x-goog-api-key": "AIza-test"}
    assert built.http._auth_headers("https://storage.example/x") == {}


@pytest.mark.parametrize("model, path, job_types", [
    ("gemini-2.5-flash-image", "/models/gemini-2.5-flash-image:generateContent",
     {"text-to-image", "image-to-image"}),
    ("models/gemini-3-pro-image-preview", "/models/gemini-3-pro-image-preview:generateContent",
     {"text-to-image", "image-to-image"}),
    ("imagen-4.0-generate-001", "/models/imagen-4.0-generate-001:predict", {"text-to-image"}),
    ("veo-3.1-generate-preview", "/models/veo-3.1-generate-preview:predictLongRunning",
     {"image-to-video"}),
])
def test_the_model_family_picks_the_call(model, path, job_types):
    built = provider(model=model)
    assert (built.path, built.job_types) == (path, job_types)


@pytest.mark.parametrize("change, key", [
    ({"api_key": None}, "api_key"),
    ({"model": ""}, "model"),
    ({"model": "../files/x"}, "model"),
    ({"method": "embedContent"}, "method"),
    ({"job_types": ["image-to-video"]}, "job_types"),
    ({"model": "veo-3.1-generate-preview", "job_types": ["text-to-image"]}, "job_types"),
    ({"image_size": "8K"}, "image_size"),
    ({"resolution": "4k"}, "resolution"),
    ({"poll_interval_s": "soon"}, "providers.gm"),
])
def test_a_bad_config_is_refused_naming_the_key(change, key):
    with pytest.raises(ProviderConfigError) as caught:
        build_provider("gm", {**CONF, **change})
    assert key in str(caught.value) and "providers.gm" in str(caught.value)


def test_generate_content_sends_prompt_source_and_parameters_only():
    request = ProviderRequest("image-to-image", "make it blue", negative_prompt="fog", n=2,
                              width=1000, height=760, seed=3, strength=0.5,
                              source_image=SOURCE, source_content_type="image/png")
    assert provider(image_size="2K").payload(request) == {
        "contents": [{"role": "user", "parts": [
            {"text": "make it blue"}, {"inlineData": {"mimeType": "image/png", "data": SOURCE_B64}}]}],
        "generationConfig": {"responseModalities": ["TEXT", "IMAGE"], "seed": 3,
                             "imageConfig": {"aspectRatio": "4:3", "imageSize": "2K"}}}
    plain = provider(send_seed=False).payload(ProviderRequest("text-to-image", "a fox", seed=3))
    assert plain == {"contents": [{"role": "user", "parts": [{"text": "a fox"}]}],
                     "generationConfig": {"responseModalities": ["TEXT", "IMAGE"]}}


def test_imagen_sends_sample_count_and_no_seed_or_negative_prompt():
    request = ProviderRequest("text-to-image", "a fox", negative_prompt="fog", n=3, seed=5,
                              width=512, height=900)
    assert provider(model="imagen-4.0-generate-001", person_generation="dont_allow",
                    image_size="1K").payload(request) == {
        "instances": [{"prompt": "a fox"}],
        "parameters": {"sampleCount": 3, "aspectRatio": "9:16", "sampleImageSize": "1K",
                       "personGeneration": "dont_allow", "includeRaiReason": True}}


def test_veo_sends_the_image_and_video_parameters():
    request = ProviderRequest("image-to-video", "waves roll in", negative_prompt="people",
                              seed=9, width=640, height=360, duration_s=6.2,
                              source_image=SOURCE, source_content_type="image/png",
                              shots=({"prompt": "a", "camera": "zoom_in"},))
    assert provider(model="veo-3.1-generate-preview", resolution="720p").payload(request) == {
        "instances": [{"prompt": "waves roll in",
                       "image": {"bytesBase64Encoded": SOURCE_B64, "mimeType": "image/png"}}],
        "parameters": {"aspectRatio": "16:9", "durationSeconds": 6, "negativePrompt": "people",
                       "resolution": "720p"}}


def test_veo_can_be_told_not_to_send_the_negative_prompt():
    request = ProviderRequest("image-to-video", "waves", negative_prompt="people",
                              source_image=SOURCE, source_content_type="image/png")
    body = provider(model="veo-3.1-lite-generate-preview", send_negative_prompt="false")\
        .payload(request)
    assert body["parameters"] == {}


def test_an_image_part_is_read_and_thoughts_are_skipped():
    thought, final = png_bytes(4, 4), png_bytes(6, 6)
    answer = {"candidates": [{"content": {"parts": [
        {"text": "thinking"},
        {"inlineData": {"mimeType": "image/png", "data": base64.b64encode(thought).decode()},
         "thought": True},
        {"inlineData": {"mimeType": "image/png", "data": base64.b64encode(final).decode()}}]},
        "finishReason": "STOP"}]}
    assert provider().content_image(answer) == final


@pytest.mark.parametrize("answer, error, code", [
    ({"promptFeedback": {"blockReason": "SAFETY"}}, PermanentProviderError, CONTENT_REFUSED),
    ({"promptFeedback": {"blockReason": "OTHER"}, "candidates": []}, PermanentProviderError,
     CONTENT_REFUSED),
    ({"candidates": [{"finishReason": "IMAGE_SAFETY"}]}, PermanentProviderError, CONTENT_REFUSED),
    ({"candidates": [{"finishReason": "PROHIBITED_CONTENT", "content": {"parts": []}}]},
     PermanentProviderError, CONTENT_REFUSED),
    ({"candidates": [{"finishReason": "NO_IMAGE", "content": {"parts": [{"text": "hm"}]}}]},
     TransientProviderError, "invalid_provider_output"),
    ({"candidates": []}, TransientProviderError, "invalid_provider_output"),
    ({"candidates": [{"content": {"parts": [{"inlineData": {"data": "%%"}}]}}]},
     TransientProviderError, "invalid_provider_output"),
])
def test_generate_content_answers_without_an_image_are_classified(answer, error, code):
    with pytest.raises(error) as caught:
        provider().content_image(answer)
    assert caught.value.code == code


def test_imagen_predictions_and_filtering():
    imagen = provider(model="imagen-4.0-generate-001")
    image = base64.b64encode(png_bytes(4, 4)).decode()
    assert len(imagen.predicted_images({"predictions": [{"bytesBase64Encoded": image}] * 3}, 2)) == 2
    for answer in ({}, {"predictions": [{"raiFilteredReason": "x"}]},
                   {"predictions": [{"bytesBase64Encoded": image}, {"raiFilteredReason": "x"}]}):
        with pytest.raises(PermanentProviderError) as caught:
            imagen.predicted_images(answer, 2)
        assert caught.value.code == CONTENT_REFUSED
    with pytest.raises(TransientProviderError):
        imagen.predicted_images({"predictions": [{"bytesBase64Encoded": image}]}, 2)


@pytest.mark.parametrize("error, kind, code", [
    ({"code": 13, "message": "internal"}, TransientProviderError, "provider_task_failed"),
    ({"code": 8, "message": "quota"}, TransientProviderError, "provider_task_failed"),
    ({"code": 3, "message": "bad duration"}, PermanentProviderError, "provider_rejected_request"),
    ({"code": 3, "message": "blocked by the safety filter"}, PermanentProviderError,
     CONTENT_REFUSED),
    ({"code": 3, "message": "This prompt contains words that violate the usage guidelines"},
     PermanentProviderError, CONTENT_REFUSED),
])
def test_a_failed_operation_is_classified_by_its_code(error, kind, code):
    with pytest.raises(kind) as caught:
        provider(model="veo-3.0-generate-001").finished({"done": True, "error": error})
    assert caught.value.code == code
    assert error["message"] not in caught.value.message


def test_the_retry_hint_is_read_from_retry_info():
    info = {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "37s"}
    assert retry_delay({"details": [{"@type": "x.ErrorInfo"}, info]}) == 37.0
    assert retry_delay({"details": [{**info, "retryDelay": "soon"}]}) is None
    assert retry_delay({}) is None
