"""The ``openrouter`` adapter against a fake of OpenRouter's chat completions
API over real loopback HTTP (tests/fakes/openrouter.py): the documented
request shape, images read from data URIs, every error class, the moderation
refusal, 429 with Retry-After, a hang, and that nothing identifying an
account is sent."""

from __future__ import annotations

import base64
import time

import pytest

from services.generation.providers.base import (
    CONTENT_REFUSED,
    PermanentProviderError,
    TransientProviderError,
)
from services.generation.providers.router import build_provider, build_router
from tests.fakes.openrouter import PATH, FakeOpenRouter
from tests.fakes.providers import png_bytes
from tests.integration.test_generation_providers import (
    IDENTITY,
    JOB,
    KEY,
    assert_nothing_identifying,
    progress_log,
    provider_request,
)

pytestmark = pytest.mark.integration

MODEL = "google/gemini-2.5-flash-image"


@pytest.fixture
def fake():
    with FakeOpenRouter(api_key=KEY, hang_s=3) as server:
        yield server


def conf(fake, **changes) -> dict:
    return {"type": "openrouter", "base_url": f"{fake.url}/api/v1", "api_key": KEY,
            "model": MODEL, "region": "us", "timeout_s": 2, "allow_private_network": True,
            **changes}


def openrouter(fake, **changes):
    return build_provider("openrouter", conf(fake, **changes))


def test_text_to_image_sends_one_documented_request_per_image(fake):
    events, progress = progress_log()
    result = openrouter(fake).generate(provider_request(JOB), progress)  # n=2, 64x48
    assert [(o.content_type, o.width, o.height) for o in result.outputs] == \
        [("image/png", 64, 48)] * 2
    sent = fake.requests_to(PATH, "POST")
    assert len(sent) == 2
    assert all(r.header("Authorization") == f"Bearer {KEY}" for r in sent)
    assert sent[0].json() == {
        "model": MODEL, "modalities": ["image", "text"],
        "messages": [{"role": "user", "content": "a paper boat on a puddle"}],
        "image_config": {"aspect_ratio": "4:3"}, "seed": 11}
    assert sent[1].json() == {**sent[0].json(), "seed": 12}  # a different image each
    assert [stage for _, stage in events] == ["submitting", "downloading", "downloading",
                                              "downloaded"]
    assert_nothing_identifying(fake)


def test_image_to_image_sends_the_source_image_as_a_data_uri(fake):
    source = png_bytes(16, 16)
    request = provider_request(JOB, job_type="image-to-image", n=1, width=None, height=None,
                               source_image=source, source_content_type="image/png", strength=0.3)
    result = openrouter(fake, modalities=["image"], image_size="1K").generate(request)
    assert (result.outputs[0].width, result.outputs[0].height) == (64, 64)
    body = fake.requests_to(PATH)[0].json()
    assert body["modalities"] == ["image"] and body["image_config"] == {"image_size": "1K"}
    text, image = body["messages"][0]["content"]
    assert text == {"type": "text", "text": "a paper boat on a puddle"}
    header, _, data = image["image_url"]["url"].partition(",")
    assert header == "data:image/png;base64" and base64.b64decode(data) == source
    assert_nothing_identifying(fake)


@pytest.mark.parametrize("behaviour, error, code", [
    (500, TransientProviderError, "provider_server_error"),
    (502, TransientProviderError, "provider_server_error"),
    (503, TransientProviderError, "provider_server_error"),
    (429, TransientProviderError, "provider_rate_limited"),
    (408, TransientProviderError, "provider_timeout"),
    (400, PermanentProviderError, "provider_rejected_request"),
    (402, PermanentProviderError, "provider_rejected_request"),
    (401, PermanentProviderError, "provider_auth_failed"),
    ((403, {"error": {"code": 403, "message": "Your input was flagged",
                      "metadata": {"reasons": ["hate"]}}}), PermanentProviderError,
     CONTENT_REFUSED),
    ("drop", TransientProviderError, "provider_connection_failed"),
    ("garbage", TransientProviderError, "invalid_provider_output"),
    ("redirect", TransientProviderError, "invalid_provider_output"),
])
def test_failures_are_classified(fake, behaviour, error, code):
    fake.fail_next(behaviour)
    with pytest.raises(error) as caught:
        openrouter(fake).generate(provider_request(JOB, n=1))
    assert caught.value.code == code
    assert "flagged" not in caught.value.message
    if behaviour == 429:
        assert caught.value.retry_after == 0


def test_the_moderation_refusal_is_content_refused(fake):
    fake.outcome = "refused"
    with pytest.raises(PermanentProviderError) as caught:
        openrouter(fake).generate(provider_request(JOB))
    assert caught.value.code == CONTENT_REFUSED and caught.value.status == 403
    assert len(fake.requests_to(PATH)) == 1


@pytest.mark.parametrize("outcome, error, code", [
    ("content_filter", PermanentProviderError, CONTENT_REFUSED),
    ("no_image", TransientProviderError, "invalid_provider_output"),
    ("error_in_body", TransientProviderError, "provider_server_error"),
])
def test_answers_of_200_without_an_image(fake, outcome, error, code):
    fake.outcome = outcome
    with pytest.raises(error) as caught:
        openrouter(fake).generate(provider_request(JOB, n=1))
    assert caught.value.code == code


def test_a_body_the_api_would_reject_is_a_permanent_error(fake):
    provider = openrouter(fake)
    provider.modalities = ["image", "audio"]
    with pytest.raises(PermanentProviderError) as caught:
        provider.generate(provider_request(JOB, n=1))
    assert caught.value.code == "provider_rejected_request"


def test_a_hang_times_out(fake):
    fake.fail_next("hang")
    started = time.monotonic()
    with pytest.raises(TransientProviderError) as caught:
        openrouter(fake, timeout_s=0.3).generate(provider_request(JOB, n=1))
    assert caught.value.code == "provider_timeout"
    assert time.monotonic() - started < 2


def test_a_wrong_key_is_an_auth_failure(fake):
    with pytest.raises(PermanentProviderError) as caught:
        openrouter(fake, api_key="sk-or-wrong").generate(provider_request(JOB, n=1))
    assert caught.value.code == "provider_auth_failed"


def test_the_router_fails_over_on_an_outage_and_retries_after_429(fake):
    router = build_router({"providers": {"openrouter": conf(fake)},
                           "routes": {"text-to-image": ["openrouter"]},
                           "retry": {"attempts": 3, "base_delay_s": 0, "max_delay_s": 0}},
                          sleep=lambda s: None)
    fake.fail_next(429, 503)
    routed = router.run(provider_request(JOB, n=1))
    assert routed.provider == "openrouter" and len(routed.result.outputs) == 1
    assert [a.code for a in routed.attempts] == ["provider_rate_limited",
                                                 "provider_server_error", None]


def test_only_whitelisted_data_is_sent(fake):
    """Prompt, parameters and the source image; never an account identifier."""
    source = png_bytes(16, 16)
    provider = openrouter(fake)
    provider.generate(provider_request(JOB))
    provider.generate(provider_request(JOB, job_type="image-to-image", n=1, source_image=source,
                                       source_content_type="image/png"))
    assert_nothing_identifying(fake)
    for recorded in fake.requests:
        assert recorded.path == PATH
        body = recorded.json()
        assert set(body) <= {"model", "modalities", "messages", "image_config", "seed"}
        raw = recorded.body.decode()
        assert "blurry" not in raw  # no negative prompt field on this API
        assert not any(value in raw for value in IDENTITY)
