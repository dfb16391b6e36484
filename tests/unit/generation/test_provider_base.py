"""The provider request carries rendering parameters only, and checks them."""

from __future__ import annotations

import dataclasses

import pytest

from services.generation.providers.base import (
    PermanentProviderError,
    ProviderRequest,
    Shot,
    TransientProviderError,
    submitting,
)
from services.generation.providers.openai_images import OpenAIImagesProvider

IDENTITY_WORDS = ("user", "email", "account", "owner", "key", "id", "webhook", "token",
                  "session", "address")


def test_a_provider_request_has_no_field_that_could_identify_an_account():
    names = {f.name for f in dataclasses.fields(ProviderRequest)}
    assert names == {"job_type", "prompt", "negative_prompt", "n", "width", "height", "seed",
                     "strength", "source_image", "source_content_type", "duration_s", "shots"}
    for name in names:
        assert not any(word in name.split("_") for word in IDENTITY_WORDS), name


def test_shots_given_as_dicts_become_shot_objects():
    request = ProviderRequest("image-to-video", "p",
                              shots=[{"prompt": "a", "camera": "zoom_in", "duration_s": 2}])
    assert request.shots == (Shot("a", "zoom_in", 2),)


@pytest.mark.parametrize("kwargs", [
    {"job_type": "text-to-music"},
    {"n": 0},
    {"n": 5},
    {"width": 0},
    {"strength": 1.5},
    {"job_type": "image-to-image"},  # without a source image
    {"job_type": "image-to-video", "shots": [{"prompt": "a", "camera": "barrel_roll"}]},
    {"job_type": "image-to-video", "shots": [{"prompt": "a", "duration_s": 0}]},
])
def test_nonsense_requests_are_programming_errors(kwargs):
    args = {"job_type": "text-to-image", "prompt": "p", **kwargs}
    with pytest.raises(ValueError):
        ProviderRequest(**args)


def test_the_two_error_kinds_say_whether_a_retry_makes_sense():
    transient = TransientProviderError("provider_timeout", retry_after=2)
    permanent = PermanentProviderError("provider_rejected_request", "no", status=400)
    assert transient.transient and not permanent.transient
    assert transient.retry_after == 2 and permanent.status == 400
    assert transient.message == "provider timeout"
    assert str(permanent) == "provider_rejected_request: no"


def test_a_remote_provider_refuses_a_job_type_it_cannot_run_before_it_calls_anything():
    provider = OpenAIImagesProvider.from_config("images", {"base_url": "http://127.0.0.1:9"})
    progress = []
    video = ProviderRequest(job_type="image-to-video", prompt="p", source_image=b"x")
    with pytest.raises(PermanentProviderError) as refused:
        provider.generate(video, lambda fraction, stage: progress.append((fraction, stage)))
    assert refused.value.code == "unsupported_job_type"
    assert refused.value.message == "images cannot run image-to-video"
    assert progress == []
    submitting(provider, ProviderRequest(job_type="text-to-image", prompt="p"),
               lambda fraction, stage: progress.append((fraction, stage)))
    assert progress == [(0.0, "submitting")]
