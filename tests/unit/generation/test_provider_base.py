"""The provider request carries rendering parameters only, and checks them."""

from __future__ import annotations

import dataclasses

import pytest

from services.generation.providers.base import (
    PermanentProviderError,
    ProviderRequest,
    Shot,
    TransientProviderError,
)

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
