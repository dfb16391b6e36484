"""The ``openrouter`` adapter without a network: config checks, exactly what
a request becomes, and how an answer (image, error in the body, refusal) is read."""

from __future__ import annotations

import base64

import pytest

from services.generation.providers.base import (
    CONTENT_REFUSED,
    PermanentProviderError,
    ProviderRequest,
    TransientProviderError,
)
from services.generation.providers.openrouter import BASE_URL, OpenRouterProvider
from services.generation.providers.router import ProviderConfigError, build_provider
from tests.fakes.providers import png_bytes

CONF = {"type": "openrouter", "api_key": "sk-or-test", "model": "google/gemini-2.5-flash-image"}


def provider(**conf) -> OpenRouterProvider:
    return OpenRouterProvider.from_config("or", {**CONF, **conf})


def test_the_registry_builds_it_with_the_documented_defaults():
    built = build_provider("or", {**CONF, "region": "us", "max_concurrency": 4, "enabled": True,
                                  "allow_private_network": False})
    assert isinstance(built, OpenRouterProvider)
    assert built.http.base_url == BASE_URL == "https://openrouter.ai/api/v1"
    assert built.job_types == {"text-to-image", "image-to-image"}
    assert (built.http.auth_header, built.http.auth_scheme) == ("Authorization", "Bearer")


@pytest.mark.parametrize("change, key", [
    ({"api_key": ""}, "api_key"),
    ({"model": None}, "model"),
    ({"job_types": ["image-to-video"]}, "job_types"),
    ({"modalities": ["text"]}, "modalities"),
    ({"image_size": "8K"}, "image_size"),
    ({"base_url": "ftp://openrouter.ai"}, "base_url"),
])
def test_a_bad_config_is_refused_naming_the_key(change, key):
    with pytest.raises(ProviderConfigError) as caught:
        build_provider("or", {**CONF, **change})
    assert key in str(caught.value) and "providers.or" in str(caught.value)


def test_text_to_image_sends_the_prompt_and_parameters_only():
    request = ProviderRequest("text-to-image", "a lighthouse", negative_prompt="fog", n=2,
                              width=1920, height=1080, seed=7)
    assert provider(image_size="2K").payload(request) == {
        "model": "google/gemini-2.5-flash-image", "modalities": ["image", "text"],
        "messages": [{"role": "user", "content": "a lighthouse"}],
        "image_config": {"aspect_ratio": "16:9", "image_size": "2K"}, "seed": 7}


def test_image_to_image_sends_the_source_as_a_data_uri_part():
    source = png_bytes(8, 8)
    request = ProviderRequest("image-to-image", "make it blue", source_image=source,
                              source_content_type="image/png", strength=0.4)
    body = provider(modalities=["image"], send_seed=False).payload(request)
    assert body == {"model": "google/gemini-2.5-flash-image", "modalities": ["image"],
                    "messages": [{"role": "user", "content": [
                        {"type": "text", "text": "make it blue"},
                        {"type": "image_url", "image_url": {
                            "url": "data:image/png;base64," + base64.b64encode(source).decode()}}]}]}


def test_the_first_image_of_a_completion_is_read():
    image = png_bytes(4, 4)
    answer = {"choices": [{"message": {"images": [{"type": "image_url", "image_url": {
        "url": "data:image/png;base64," + base64.b64encode(image).decode()}}]}}]}
    assert provider().image_bytes(answer) == image


@pytest.mark.parametrize("answer, error, code", [
    ({"error": {"code": 429, "message": "slow down"}}, TransientProviderError,
     "provider_rate_limited"),
    ({"error": {"code": 502, "message": "down"}}, TransientProviderError, "provider_server_error"),
    ({"error": {"code": 403, "message": "flagged"}}, PermanentProviderError, CONTENT_REFUSED),
    ({"error": {"code": 402, "message": "credits"}}, PermanentProviderError,
     "provider_rejected_request"),
    ({"choices": [{"error": {"code": 408, "message": "late"}}]}, TransientProviderError,
     "provider_timeout"),
    ({"choices": [{"finish_reason": "content_filter", "message": {"content": ""}}]},
     PermanentProviderError, CONTENT_REFUSED),
    ({"choices": [{"finish_reason": "stop", "native_finish_reason": "IMAGE_SAFETY",
                   "message": {}}]}, PermanentProviderError, CONTENT_REFUSED),
    ({"choices": [{"finish_reason": "stop", "message": {"content": "no"}}]},
     TransientProviderError, "invalid_provider_output"),
    ({"choices": []}, TransientProviderError, "invalid_provider_output"),
    ({"choices": [{"message": {"images": [{"image_url": {"url": "data:image/png,xx"}}]}}]},
     TransientProviderError, "invalid_provider_output"),
])
def test_answers_without_an_image_are_classified(answer, error, code):
    with pytest.raises(error) as caught:
        provider().image_bytes(answer)
    assert caught.value.code == code
    assert "flagged" not in caught.value.message  # the vendor's text is not passed on
