"""The openai_images adapter without a network: its config, and exactly what
it would send for a generation and for an edit (image-to-image)."""

from __future__ import annotations

import pytest

from services.generation.providers.base import ProviderRequest
from services.generation.providers.openai_images import gpt_image_model
from services.generation.providers.router import ProviderConfigError, build_provider
from tests.fakes.providers import png_bytes

CONF = {"type": "openai_images", "base_url": "https://api.openai.com", "api_key": "sk-x",
        "region": "us"}


def openai(**changes):
    return build_provider("openai", {**CONF, **changes})


def edit(**kw) -> ProviderRequest:
    return ProviderRequest(**{"job_type": "image-to-image", "prompt": "in red",
                              "source_image": png_bytes(8, 8), "source_content_type": "image/webp",
                              "width": 32, "height": 32, "seed": 4, "strength": 0.3, **kw})


def test_both_image_job_types_by_default_and_the_operator_may_narrow_them():
    assert openai().job_types == frozenset({"text-to-image", "image-to-image"})
    assert openai(job_types=["image-to-image"]).job_types == frozenset({"image-to-image"})


@pytest.mark.parametrize("changes, message", [
    ({"job_types": ["image-to-video"]}, "job_types: 'image-to-video' is not one of"),
    ({"response_format": "png"}, "response_format must be b64_json or url"),
    ({"model": "gpt-image-1", "response_format": "url"},
     "response_format: gpt-image-1 answers b64_json only"),
    ({"timeout_s": "soon"}, "timeout_s must be a number"),
    ({"max_download_bytes": 0}, "max_download_bytes must be at least 1"),
])
def test_a_setting_that_cannot_work_stops_the_service_naming_the_provider(changes, message):
    with pytest.raises(ProviderConfigError, match=rf"^providers\.openai: {message}"):
        openai(**changes)


@pytest.mark.parametrize("model, gpt", [("gpt-image-1", True), ("gpt-image-1.5", True),
                                        ("dall-e-2", False), ("dall-e-3", False), (None, False)])
def test_which_models_are_gpt_image_models(model, gpt):
    assert gpt_image_model(model) is gpt


def test_an_edits_form_is_the_parameters_as_text_and_the_image_as_a_typed_file():
    data, files = openai(model="dall-e-2").edit_form(edit())
    assert data == {"prompt": "in red", "n": "1", "size": "32x32", "response_format": "b64_json",
                    "model": "dall-e-2"}
    assert files == {"image": ("image.webp", png_bytes(8, 8), "image/webp")}
    data, _ = openai(model="gpt-image-1").edit_form(edit())
    assert "response_format" not in data
    data, _ = openai(extended_params=True).edit_form(edit(negative_prompt="fog"))
    assert (data["seed"], data["strength"], data["negative_prompt"]) == ("4", "0.3", "fog")


def test_strength_is_sent_with_edits_only():
    text = ProviderRequest(job_type="text-to-image", prompt="p", strength=0.3)
    assert "strength" not in openai(extended_params=True).payload(text)


def test_an_untyped_source_goes_as_png():
    _, files = openai().edit_form(edit(source_content_type=None))
    assert files["image"][0::2] == ("image.png", "image/png")
