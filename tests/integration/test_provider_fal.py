"""The fal adapter against a fake of fal's queue API over real loopback HTTP
(tests/fakes/fal.py): request shapes, the queue (position as progress,
status, result, cancel), fal's errors and refusals, 429, timeouts, a request
that never finishes, and that nothing identifying an account is sent."""

from __future__ import annotations

import base64
import io
import json
import time

import pytest
from PIL import Image

from services.generation.providers.base import (
    CONTENT_REFUSED,
    PermanentProviderError,
    ProviderError,
    ProviderRequest,
    TransientProviderError,
)
from services.generation.providers.fal import FalProvider
from services.generation.providers.router import build_provider, build_router
from tests.fakes.fal import INVALID, REFUSED, FakeFal
from tests.fakes.providers import png_bytes
from tests.integration.test_generation_providers import JOB as OTHER_JOB
from tests.integration.test_generation_providers import progress_log, provider_request

pytestmark = pytest.mark.integration

KEY = "fal-key-0123:secret"
MODEL = "fal-ai/flux/dev"
# What the service knows about the job's owner (the same job as the other
# adapters' tests, with an owner of its own and the caller's IP); none of it
# may reach fal.
JOB = {**OTHER_JOB, "job_id": "0190a5c3-0000-7000-8000-00000000fa1a",
       "user_id": "0190a5c3-1111-7000-8000-0000000f0a1b",
       "email": "fal.owner.sentinel@example.org", "ip": "203.0.113.77"}
IDENTITY = [JOB[k] for k in ("job_id", "user_id", "email", "api_key", "webhook_url", "ip")]
ALLOWED_HEADERS = {"host", "user-agent", "accept-encoding", "accept", "connection",
                   "content-length", "content-type", "authorization",
                   "x-fal-object-lifecycle-preference"}


@pytest.fixture
def fake():
    with FakeFal(api_key=KEY, hang_s=3) as server:
        yield server


def conf(fake, **changes) -> dict:
    return {"type": "fal", "base_url": fake.url, "api_key": KEY, "model": MODEL,
            "region": "us", "allow_private_network": True, "timeout_s": 2,
            "poll_interval_s": 0.01, "task_timeout_s": 5, **changes}


def fal(fake, **changes) -> FalProvider:
    return build_provider("flux", conf(fake, **changes))


def images(result) -> list[tuple]:
    for output in result.outputs:
        Image.open(io.BytesIO(output.data)).verify()
    return [(o.content_type, o.width, o.height) for o in result.outputs]


# ------------------------------------------------------------------ success


def test_text_to_image_through_the_queue(fake):
    result = fal(fake).generate(provider_request(JOB))
    assert images(result) == [("image/png", 64, 48)] * 2
    submit, = fake.requests_to(f"/{MODEL}", "POST")
    assert submit.header("Authorization") == f"Key {KEY}"
    assert submit.header("Content-Type") == "application/json"
    assert json.loads(submit.header("X-Fal-Object-Lifecycle-Preference")) == \
        {"expiration_duration_seconds": 3600}
    assert submit.json() == {"prompt": "a paper boat on a puddle", "negative_prompt": "blurry",
                             "seed": 11, "num_images": 2,
                             "image_size": {"width": 64, "height": 48}}
    request_id, = fake.queue
    app = "/fal-ai/flux/requests/" + request_id
    polls = fake.requests_to(app + "/status", "GET")
    assert len(polls) == 4  # two in the queue, one in progress, then completed
    assert all(p.header("Authorization") == f"Key {KEY}" for p in polls)
    assert [r.path for r in fake.requests if r.path == app] == [app]  # the result, once
    assert len(fake.requests_to("/files/", "GET")) == 2
    assert fake.requests_to(app + "/cancel") == []


def test_the_queue_position_is_reported_as_progress(fake):
    fake.queue_polls = 3
    events, progress = progress_log()
    fal(fake).generate(provider_request(JOB, n=1), progress)
    stages = [stage for _, stage in events]
    assert stages == ["submitting", "submitted", "queue_position_2", "queue_position_1",
                      "queue_position_0", "in_progress", "completed", "downloading", "downloaded"]
    fractions = [f for f, _ in events]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0


def test_without_an_n_input_each_image_is_a_request_of_its_own(fake):
    provider = fal(fake, inputs={"prompt": "prompt", "seed": "seed", "size": "image_size"})
    result = provider.generate(provider_request(JOB))
    assert images(result) == [("image/png", 64, 48)] * 2
    assert fake.submitted() == [
        {"prompt": "a paper boat on a puddle", "seed": 11, "image_size": {"width": 64, "height": 48}},
        {"prompt": "a paper boat on a puddle", "seed": 12, "image_size": {"width": 64, "height": 48}}]


def test_image_to_image_sends_the_source_as_a_data_uri(fake):
    source = png_bytes(32, 32)
    provider = fal(fake, model="fal-ai/flux/dev/image-to-image",
                   job_types=["text-to-image", "image-to-image"],
                   inputs={"prompt": "prompt", "image": "image_url", "strength": "strength"})
    result = provider.generate(provider_request(JOB, job_type="image-to-image", n=1,
                                                source_image=source,
                                                source_content_type="image/png", strength=0.6))
    assert images(result) == [("image/png", 64, 64)]
    submit, = fake.requests_to("/fal-ai/flux/dev/image-to-image", "POST")
    body = submit.json()
    assert body == {"prompt": "a paper boat on a puddle", "strength": 0.6,
                    "image_url": "data:image/png;base64," + base64.b64encode(source).decode()}
    # status and result name the app only, not the endpoint path
    assert fake.requests_to("/fal-ai/flux/requests/", "GET")


def test_image_to_video(fake):
    fake.output = "video"
    provider = fal(fake, model="fal-ai/kling-video/v2/master/image-to-video",
                   job_types=["image-to-video"],
                   inputs={"prompt": "prompt", "image": "image_url", "duration_s": "duration"})
    result = provider.generate(ProviderRequest("image-to-video", "waves roll in",
                                               source_image=png_bytes(16, 16), duration_s=5))
    output, = result.outputs
    assert output.content_type == "video/mp4" and output.width == 64 and output.duration_s > 0
    assert fake.submitted()[0]["duration"] == 5


def test_without_returned_urls_the_adapter_builds_fals_documented_ones(fake):
    fake.return_urls = False
    assert images(fal(fake).generate(provider_request(JOB, n=1))) == [("image/png", 64, 48)]
    request_id, = fake.queue
    assert fake.requests_to(f"/fal-ai/flux/requests/{request_id}/status")


def test_returned_urls_on_another_origin_are_not_followed(fake):
    fake.url_base = "http://127.0.0.2:9"  # would get the key, and could point anywhere
    assert images(fal(fake).generate(provider_request(JOB, n=1))) == [("image/png", 64, 48)]
    request_id, = fake.queue
    assert fake.requests_to(f"/fal-ai/flux/requests/{request_id}/status")


def test_outputs_on_fals_cdn_are_fetched_without_the_key(fake):
    with FakeFal() as cdn:
        fake.cdn = cdn  # another origin, as v3.fal.media is
        assert images(fal(fake).generate(provider_request(JOB))) == [("image/png", 64, 48)] * 2
    downloads = cdn.requests_to("/files/", "GET")
    assert len(downloads) == 2
    assert all(d.header("Authorization") is None for d in downloads)
    assert fake.requests_to("/files/") == []


def test_through_the_router_from_a_providers_config(fake):
    router = build_router({"providers": {"flux": conf(fake)},
                           "routes": {"text-to-image": ["flux"]}})
    routed = router.run(provider_request(JOB, n=1))
    assert routed.provider == "flux" and len(routed.result.outputs) == 1


# ------------------------------------------------------------------ errors


# fal's answer to the submit → the code; the permanent ones say the request
# itself was refused (no retry on fal), the rest are worth retrying
SUBMIT_FAILURES = {
    "server error": (500, "provider_server_error"),
    "overloaded": (503, "provider_server_error"),
    "request timeout": (504, "provider_server_error"),
    "rate limited": (429, "provider_rate_limited"),
    "content policy": ((422, REFUSED), CONTENT_REFUSED),
    "invalid input": ((422, INVALID), "provider_rejected_request"),
    "bad request": ((400, {"detail": "Bad request"}), "provider_rejected_request"),
    "forbidden": ((403, {"detail": "Forbidden"}), "provider_auth_failed"),
    "dropped": ("drop", "provider_connection_failed"),
    "no request id": ("garbage", "invalid_provider_output"),
    "redirect, never followed": ("redirect", "invalid_provider_output"),
}
PERMANENT = {CONTENT_REFUSED, "provider_rejected_request", "provider_auth_failed"}


@pytest.mark.parametrize("case", SUBMIT_FAILURES)
def test_submit_failures_are_classified(fake, case):
    behaviour, code = SUBMIT_FAILURES[case]
    fake.fail_next(behaviour)
    with pytest.raises(ProviderError) as caught:
        fal(fake).generate(provider_request(JOB))
    assert (caught.value.code, caught.value.transient) == (code, code not in PERMANENT)
    assert caught.value.retry_after == (0 if behaviour == 429 else None)
    assert JOB["prompt"] not in caught.value.message
    assert fake.queue == {}


def test_a_wrong_key_is_an_auth_failure(fake):
    with pytest.raises(PermanentProviderError) as caught:
        fal(fake, api_key="wrong").generate(provider_request(JOB))
    assert caught.value.code == "provider_auth_failed"


def test_an_unknown_model_is_refused(fake):
    fake.model_ids = (MODEL,)
    with pytest.raises(PermanentProviderError) as caught:
        fal(fake, model="fal-ai/no-such-model").generate(provider_request(JOB))
    assert caught.value.code == "provider_rejected_request"


@pytest.mark.parametrize("outcome, error, code", [
    ("refused", PermanentProviderError, CONTENT_REFUSED),
    ("nsfw", PermanentProviderError, CONTENT_REFUSED),
    ("invalid", PermanentProviderError, "provider_rejected_request"),
    ("failed", TransientProviderError, "provider_server_error"),
])
def test_a_request_that_fails_in_the_queue_is_classified_by_its_result(fake, outcome, error,
                                                                        code):
    fake.outcome = outcome
    with pytest.raises(error) as caught:
        fal(fake).generate(provider_request(JOB))
    assert caught.value.code == code
    assert fake.cancelled() == []


@pytest.mark.parametrize("state, outcome, code", [
    ("FAILED", "failed", "provider_server_error"),  # the result tells why
    ("FAILED", "refused", CONTENT_REFUSED),
    ("CANCELED", "completed", "provider_task_failed"),
])
def test_a_request_reported_as_failed_or_cancelled_fails_the_attempt(fake, state, outcome,
                                                                     code):
    fake.outcome = outcome
    fake.fail_polls((200, {"status": state}))
    with pytest.raises((TransientProviderError, PermanentProviderError)) as caught:
        fal(fake).generate(provider_request(JOB))
    assert caught.value.code == code


def test_an_unknown_status_is_a_malformed_answer(fake):
    fake.fail_polls((200, {"status": "SLEEPING"}))
    with pytest.raises(TransientProviderError) as caught:
        fal(fake).generate(provider_request(JOB))
    assert caught.value.code == "invalid_provider_output"
    assert len(fake.cancelled()) == 1


def test_status_polls_that_fail_now_and_then_are_tolerated(fake):
    fake.fail_polls(500, 429, 503)
    assert len(fal(fake).generate(provider_request(JOB)).outputs) == 2


def test_status_polls_that_keep_failing_fail_the_attempt_and_cancel(fake):
    fake.fail_polls(500, 500, 500, 500)
    with pytest.raises(TransientProviderError) as caught:
        fal(fake).generate(provider_request(JOB))
    assert caught.value.code == "provider_server_error"
    assert len(fake.cancelled()) == 1


def test_a_submit_that_hangs_times_out(fake):
    fake.fail_next("hang")
    provider = fal(fake, timeout_s=0.3)
    started = time.monotonic()
    with pytest.raises(TransientProviderError, match="did not answer within 0.3s") as caught:
        provider.generate(provider_request(JOB, n=1))
    elapsed = time.monotonic() - started
    assert (caught.value.code, elapsed < 2) == ("provider_timeout", True)


def test_a_request_that_never_finishes_is_cancelled(fake):
    fake.outcome = "never"
    events, progress = progress_log()
    started = time.monotonic()
    with pytest.raises(TransientProviderError) as caught:
        fal(fake, task_timeout_s=0.3, poll_interval_s=0.02).generate(
            provider_request(JOB, n=1), progress)
    assert caught.value.code == "provider_timeout"
    assert time.monotonic() - started < 2
    request_id, = fake.queue
    cancel, = fake.requests_to(f"/fal-ai/flux/requests/{request_id}/cancel")
    assert cancel.method == "PUT" and cancel.header("Authorization") == f"Key {KEY}"
    assert fake.cancelled() == [request_id]
    assert events[-1][1] == "queue_position_0"


def test_every_pending_request_is_cancelled_when_the_job_stops(fake):
    fake.queue_polls = 50

    def progress(fraction, stage):
        if stage == "queue_position_45":
            raise KeyboardInterrupt  # e.g. the worker lost its lease

    with pytest.raises(KeyboardInterrupt):
        fal(fake, inputs={"prompt": "prompt"}).generate(provider_request(JOB), progress)
    assert sorted(fake.cancelled()) == sorted(fake.queue) and len(fake.queue) == 2


def test_fewer_outputs_than_asked_is_a_malformed_answer(fake):
    fake.max_images = 1
    with pytest.raises(TransientProviderError) as caught:
        fal(fake).generate(provider_request(JOB))
    assert caught.value.code == "invalid_provider_output"


def test_a_connection_refused_is_transient():
    with FakeFal() as server:
        url = server.url
    with pytest.raises(TransientProviderError) as caught:
        FalProvider.from_config("flux", {"base_url": url, "model": MODEL, "timeout_s": 1,
                                         "allow_private_network": True}).generate(
            provider_request(JOB))
    assert caught.value.code == "provider_connection_failed"


# ------------------------------------------------------------------ data minimisation


def test_nothing_identifying_the_account_reaches_fal(fake):
    provider = fal(fake, job_types=["text-to-image", "image-to-image"],
                   inputs={"prompt": "prompt", "negative_prompt": "negative_prompt",
                           "seed": "seed", "size": "image_size", "image": "image_url",
                           "strength": "strength"})
    source = png_bytes(16, 16)
    provider.generate(provider_request(JOB))
    provider.generate(provider_request(JOB, job_type="image-to-image", n=1, source_image=source,
                                       source_content_type="image/png", strength=0.5))
    assert fake.requests
    for recorded in fake.requests:
        assert {h.lower() for h in recorded.headers} <= ALLOWED_HEADERS, recorded.headers
        assert recorded.header("Authorization") in (None, f"Key {KEY}")
        raw = json.dumps(recorded.headers) + recorded.path + recorded.body.decode("latin-1")
        for value in IDENTITY:
            assert value not in raw
    # the bodies hold the whitelisted fields only, with the request's own values
    allowed = {"prompt": JOB["prompt"], "negative_prompt": "blurry",
               "image_size": {"width": 64, "height": 48}, "strength": 0.5,
               "image_url": "data:image/png;base64," + base64.b64encode(source).decode()}
    for body in fake.submitted():
        seed = body.pop("seed")
        assert seed in (11, 12)
        assert body == {k: allowed[k] for k in body}
    assert [r.method for r in fake.requests if r.body] == ["POST"] * 3
