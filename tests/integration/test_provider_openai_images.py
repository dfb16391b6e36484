"""The openai_images adapter's image-to-image against a fake of OpenAI's
images API over real loopback HTTP (tests/fakes/providers.py,
FakeOpenAIImages): the multipart ``/v1/images/edits`` request as OpenAI
documents it, results, errors (content-policy refusals, 429 with
Retry-After, timeouts), routing, and that nothing identifying an account is
sent. Text-to-image is covered in test_generation_providers.py."""

from __future__ import annotations

import base64
import io
import time

import pytest
import requests
from PIL import Image

from services.generation.providers.base import (
    CONTENT_REFUSED,
    PermanentProviderError,
    ProviderRequest,
    TransientProviderError,
)
from services.generation.providers.router import build_provider, build_router
from tests.fakes.providers import (
    FakeOpenAIImages,
    assert_nothing_identifying,
    multipart_form,
    png_bytes,
)

pytestmark = pytest.mark.integration

KEY = "sk-openai-fake-key"


@pytest.fixture
def fake():
    with FakeOpenAIImages(api_key=KEY, hang_s=3) as server:
        yield server


def conf(fake, **changes) -> dict:
    return {"type": "openai_images", "base_url": fake.url, "api_key": KEY, "model": "dall-e-2",
            "region": "us", "timeout_s": 2, "allow_private_network": True, **changes}


def openai(fake, **changes):
    return build_provider("openai", conf(fake, **changes))


def edit(**kw) -> ProviderRequest:
    return ProviderRequest(**{"job_type": "image-to-image", "prompt": "the boat in red",
                              "source_image": png_bytes(40, 30), "source_content_type": "image/png",
                              "width": 64, "height": 48, **kw})


def sizes(result):
    return [(o.content_type, o.width, o.height) for o in result.outputs]


def texts(form) -> dict[str, str]:
    return {name: values[0][2].decode() for name, values in form.items()
            if name not in ("image", "image[]")}


# ------------------------------------------------------------------ success


def test_an_edit_is_a_multipart_post_with_the_image_file_and_the_parameters(fake):
    events = []
    result = openai(fake).generate(edit(n=2), lambda f, s: events.append((f, s)))
    assert sizes(result) == [("image/png", 64, 48)] * 2
    (sent,) = fake.requests_to("/v1/images/edits", "POST")
    assert sent.header("Authorization") == f"Bearer {KEY}"
    assert sent.header("Content-Type").startswith("multipart/form-data; boundary=")
    form = multipart_form(sent)
    assert form["image"] == [("image.png", "image/png", png_bytes(40, 30))]
    assert texts(form) == {"prompt": "the boat in red", "model": "dall-e-2", "n": "2",
                           "size": "64x48", "response_format": "b64_json"}
    assert "mask" not in form
    assert fake.requests_to("/v1/images/generations") == []
    assert events[0] == (0.0, "submitting") and events[-1] == (1.0, "downloaded")
    assert_nothing_identifying(fake)


def test_a_gpt_image_model_gets_no_response_format_and_answers_base64(fake):
    """gpt-image-1 always answers b64_json and refuses response_format (the
    fake answers 400 unknown_parameter, as OpenAI does)."""
    provider = openai(fake, model="gpt-image-1")
    assert sizes(provider.generate(edit())) == [("image/png", 64, 48)]
    assert sizes(provider.generate(edit(job_type="text-to-image", source_image=None))) == \
        [("image/png", 64, 48)]
    (sent,) = fake.requests_to("/v1/images/edits")
    assert "response_format" not in multipart_form(sent)
    assert "response_format" not in fake.requests_to("/v1/images/generations")[0].json()


def test_a_jpeg_source_goes_under_a_jpeg_name_and_url_results_are_downloaded(fake):
    buf = io.BytesIO()
    Image.new("RGB", (20, 20), (10, 200, 10)).save(buf, format="JPEG")
    provider = openai(fake, response_format="url")
    result = provider.generate(edit(source_image=buf.getvalue(), source_content_type="image/jpeg"))
    assert sizes(result) == [("image/png", 64, 48)]
    form = multipart_form(fake.requests_to("/v1/images/edits")[0])
    assert form["image"] == [("image.jpg", "image/jpeg", buf.getvalue())]
    assert texts(form)["response_format"] == "url"
    assert len(fake.requests_to("/files/", "GET")) == 1
    assert_nothing_identifying(fake)


def test_extended_params_send_strength_seed_and_negative_prompt_with_an_edit(fake):
    openai(fake, extended_params=True).generate(edit(seed=5, negative_prompt="fog", strength=0.4))
    sent = texts(multipart_form(fake.requests_to("/v1/images/edits")[0]))
    assert (sent["seed"], sent["negative_prompt"], sent["strength"]) == ("5", "fog", "0.4")


def test_image_to_image_is_routed_to_openai_by_default_and_can_be_left_out(fake):
    router = build_router({"providers": {"openai": conf(fake), "local": {"type": "local"}},
                           "routes": {"image-to-image": ["openai", "local"]}})
    assert router.run(edit()).provider == "openai"
    text_only = openai(fake, job_types=["text-to-image"])
    with pytest.raises(PermanentProviderError) as caught:
        text_only.generate(edit())
    assert caught.value.code == "unsupported_job_type"


# ------------------------------------------------------------------ errors


@pytest.mark.parametrize("behaviour, error, code", [
    ("refuse", PermanentProviderError, CONTENT_REFUSED),   # dall-e: content_policy_violation
    ((400, {"error": {"message": "Your request was rejected by the safety system.",
                      "type": "image_generation_user_error", "param": None,
                      "code": "moderation_blocked"}}),
     PermanentProviderError, CONTENT_REFUSED),              # GPT image models
    ((400, {"error": {"message": "Invalid image file.", "type": "invalid_request_error",
                      "param": "image", "code": "invalid_image"}}),
     PermanentProviderError, "provider_rejected_request"),
    (401, PermanentProviderError, "provider_auth_failed"),
    (500, TransientProviderError, "provider_server_error"),
    ("drop", TransientProviderError, "provider_connection_failed"),
    ("garbage", TransientProviderError, "invalid_provider_output"),
    ("redirect", TransientProviderError, "invalid_provider_output"),
])
def test_an_edits_failures_are_classified(fake, behaviour, error, code):
    fake.fail_next(behaviour)
    with pytest.raises(error) as caught:
        openai(fake).generate(edit())
    assert caught.value.code == code
    assert "the boat in red" not in caught.value.message  # the prompt is never echoed


def test_a_429_carries_its_retry_after(fake):
    fake.fail_next((429, {"error": {"message": "Rate limit reached", "type": "requests",
                                    "code": "rate_limit_exceeded"}}, {"Retry-After": "7"}))
    with pytest.raises(TransientProviderError) as caught:
        openai(fake).generate(edit())
    assert (caught.value.code, caught.value.retry_after) == ("provider_rate_limited", 7.0)


def test_an_edit_that_hangs_times_out(fake):
    fake.fail_next("hang")
    started = time.monotonic()
    with pytest.raises(TransientProviderError) as caught:
        openai(fake, timeout_s=0.3).generate(edit())
    assert caught.value.code == "provider_timeout"
    assert time.monotonic() - started < 2


def test_the_fake_refuses_an_edit_that_is_not_the_documented_form(fake):
    """The fake checks the form, so the tests above prove its shape."""
    url = f"{fake.url}/v1/images/edits"
    auth = {"Authorization": f"Bearer {KEY}"}
    as_json = requests.post(url, json={"prompt": "p", "image": "x"}, headers=auth, timeout=2)
    no_image = requests.post(url, data={"prompt": "p"}, files={"x": ("a", b"")}, headers=auth,
                             timeout=2)
    not_an_image = requests.post(url, data={"prompt": "p"},
                                 files={"image": ("image.png", b"nope", "image/png")},
                                 headers=auth, timeout=2)
    unknown = requests.post(url, data={"prompt": "p", "user_id": "u"},
                            files={"image": ("image.png", png_bytes(), "image/png")},
                            headers=auth, timeout=2)
    ok = requests.post(url, data={"prompt": "p", "size": "16x16"},
                       files=[("image[]", ("a.png", png_bytes(), "image/png")),
                              ("image[]", ("b.png", png_bytes(8, 8), "image/png"))],
                       headers=auth, timeout=2)
    assert [r.status_code for r in (as_json, no_image, not_an_image, unknown)] == [400] * 4
    assert unknown.json()["error"]["code"] == "unknown_parameter"
    assert ok.status_code == 200 and len(ok.json()["data"]) == 1
    assert base64.b64decode(ok.json()["data"][0]["b64_json"]) == png_bytes(16, 16, (0, 120, 200))
