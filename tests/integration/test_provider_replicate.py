"""The replicate adapter against a fake of Replicate's predictions API over
real loopback HTTP (tests/fakes/replicate.py): request shapes, sync and polled
predictions, outputs, the vendor's errors, refusals, 429, timeouts, a
prediction that never finishes, and that nothing identifying an account is
sent."""

from __future__ import annotations

import base64
import json
import time

import pytest

from services.generation.providers.base import (
    CONTENT_REFUSED,
    PermanentProviderError,
    ProviderRequest,
    TransientProviderError,
)
from services.generation.providers.router import RetryPolicy, Router, build_provider
from tests.fakes.providers import png_bytes
from tests.fakes.replicate import FakeReplicate

pytestmark = pytest.mark.integration

KEY = "r8_fake_provider_token"
MODEL_PATH = "/v1/models/black-forest-labs/flux-schnell/predictions"
# What the service knows about the job and its owner; none of it may reach Replicate.
ACCOUNT = {
    "job_id": "0190a5c3-0000-7000-8000-00000000abcd",
    "user_id": "0190a5c3-1111-7000-8000-00000000dcba",
    "email": "owner.sentinel@example.org",
    "api_key": "drk_live_sentinelsentinel",
    "ip": "203.0.113.77",
    "webhook_url": "https://hooks.sentinel.example/x",
}
ALLOWED_HEADERS = {"host", "user-agent", "accept-encoding", "accept", "connection",
                   "content-length", "content-type", "authorization", "prefer"}


@pytest.fixture
def fake():
    with FakeReplicate(api_key=KEY, hang_s=3) as server:
        yield server


def conf(fake, **changes) -> dict:
    return {"type": "replicate", "base_url": fake.base_url, "api_key": KEY,
            "model": "black-forest-labs/flux-schnell", "region": "us",
            "job_types": ["text-to-image"], "allow_private_network": True,
            "inputs": {"prompt": "prompt", "seed": "seed", "n": "num_outputs",
                       "width": "width", "height": "height"},
            "timeout_s": 2, "poll_interval_s": 0.01, "task_timeout_s": 5, **changes}


def replicate(fake, **changes):
    return build_provider("flux", conf(fake, **changes))


def request(**kw) -> ProviderRequest:
    return ProviderRequest(**{"job_type": "text-to-image", "prompt": "a teapot on a hill", **kw})


def sizes(result):
    return [(o.content_type, o.width, o.height) for o in result.outputs]


# ------------------------------------------------------------------ success


def test_a_prediction_finished_within_prefer_wait_needs_no_poll(fake):
    events = []
    result = replicate(fake).generate(request(n=2, width=64, height=48, seed=7),
                                      lambda f, s: events.append((f, s)))
    assert sizes(result) == [("image/png", 64, 48)] * 2
    created = fake.requests_to(MODEL_PATH, "POST")
    assert len(created) == 1
    sent = created[0]
    assert sent.header("Authorization") == f"Bearer {KEY}"
    assert sent.header("Prefer") == "wait=1"  # 80% of the 2 s read timeout
    assert sent.header("Content-Type") == "application/json"
    assert sent.json() == {"input": {"prompt": "a teapot on a hill", "seed": 7,
                                     "num_outputs": 2, "width": 64, "height": 48}}
    assert not fake.requests_to("/v1/predictions/", "GET")
    assert len(fake.requests_to("/delivery/", "GET")) == 2
    assert events[0] == (0.0, "submitting") and events[-1] == (1.0, "downloaded")


def test_an_unfinished_prediction_is_polled_until_it_succeeds(fake):
    fake.sync, fake.polls_to_finish = False, 3
    events = []
    result = replicate(fake).generate(request(), lambda f, s: events.append((f, s)))
    assert sizes(result) == [("image/png", 64, 64)]
    (pid,) = fake.predictions
    polls = fake.requests_to(f"/v1/predictions/{pid}", "GET")
    assert len(polls) == 3
    assert all(p.header("Authorization") == f"Bearer {KEY}" for p in polls)
    assert all(p.header("Prefer") is None and not p.body for p in polls)
    assert "processing" in [stage for _, stage in events]


def test_a_model_version_is_created_through_the_predictions_endpoint(fake):
    provider = replicate(fake, model=None, version="5599ed30703defd1d160a25a63321b4dec97101d98b4")
    provider.generate(request())
    (sent,) = fake.requests_to("/v1/predictions", "POST")
    assert sent.path == "/v1/predictions"
    assert sent.json() == {"version": "5599ed30703defd1d160a25a63321b4dec97101d98b4",
                           "input": {"prompt": "a teapot on a hill", "num_outputs": 1}}


def test_a_deployment_is_run_through_the_deployments_endpoint(fake):
    replicate(fake, model=None, deployment="acme/flux-house").generate(request())
    (sent,) = fake.requests_to("/v1/deployments/", "POST")
    assert sent.path == "/v1/deployments/acme/flux-house/predictions"
    assert sent.json() == {"input": {"prompt": "a teapot on a hill", "num_outputs": 1}}


def test_without_an_n_mapping_n_predictions_run_with_distinct_seeds(fake):
    fake.count_input = "batch"  # the model makes one image per prediction
    provider = replicate(fake, inputs={"prompt": "prompt", "seed": "seed"})
    result = provider.generate(request(n=3, seed=40))
    assert len(result.outputs) == 3
    seeds = [r.json()["input"]["seed"] for r in fake.requests_to(MODEL_PATH, "POST")]
    assert seeds == [40, 41, 42]


def test_a_single_url_output_and_data_uri_outputs_are_taken(fake):
    fake.output_list = False
    assert sizes(replicate(fake).generate(request())) == [("image/png", 64, 64)]
    fake.output_list, fake.output_kind = True, "data"
    assert sizes(replicate(fake).generate(request(n=2))) == [("image/png", 64, 64)] * 2


def test_image_to_image_sends_the_source_as_a_data_uri(fake):
    source = png_bytes(16, 16, (1, 2, 3))
    provider = replicate(fake, job_types=["image-to-image"],
                         inputs={"prompt": "prompt", "image": "image", "strength": "prompt_strength"})
    provider.generate(ProviderRequest("image-to-image", "make it blue", strength=0.6,
                                      source_image=source, source_content_type="image/png"))
    (sent,) = fake.requests_to(MODEL_PATH, "POST")
    assert sent.json()["input"] == {
        "prompt": "make it blue", "prompt_strength": 0.6,
        "image": "data:image/png;base64," + base64.b64encode(source).decode()}


def test_image_to_video_outputs_are_checked_as_videos(fake):
    fake.output_kind = "video"
    provider = replicate(fake, model="wan-video/wan-2.2-i2v-fast", job_types=["image-to-video"],
                         inputs={"prompt": "prompt", "image": "image"})
    result = provider.generate(ProviderRequest("image-to-video", "the sea moves",
                                               source_image=png_bytes(16, 16)))
    assert [(o.content_type, o.width, o.height) for o in result.outputs] == \
        [("video/mp4", 64, 64)]
    assert result.outputs[0].duration_s > 0


def test_the_key_never_goes_to_the_cdn_the_outputs_are_on(fake):
    with FakeReplicate() as cdn:
        cdn.files = fake.files
        fake.result_base = cdn.url
        replicate(fake).generate(request(n=2))
        downloads = cdn.requests_to("/delivery/", "GET")
    assert len(downloads) == 2
    assert all(d.header("Authorization") is None for d in downloads)


# ------------------------------------------------------------------ errors


@pytest.mark.parametrize("status, kind, code", [
    (401, PermanentProviderError, "provider_auth_failed"),
    (402, PermanentProviderError, "provider_rejected_request"),
    (404, PermanentProviderError, "provider_rejected_request"),
    (422, PermanentProviderError, "provider_rejected_request"),
    (500, TransientProviderError, "provider_server_error"),
    (503, TransientProviderError, "provider_server_error"),
])
def test_replicates_status_codes_are_classified(fake, status, kind, code):
    fake.fail_next(status)
    with pytest.raises(kind) as caught:
        replicate(fake).generate(request())
    assert caught.value.code == code and caught.value.status == status


def test_a_wrong_token_is_a_permanent_auth_failure(fake):
    with pytest.raises(PermanentProviderError) as caught:
        replicate(fake, api_key="r8_wrong").generate(request())
    assert caught.value.code == "provider_auth_failed"


def test_a_validation_problem_from_the_model_is_permanent(fake):
    fake.fail_next((422, {"title": "Input validation failed", "status": 422,
                          "detail": "input.num_outputs: Must be less than or equal to 4"}))
    with pytest.raises(PermanentProviderError) as caught:
        replicate(fake).generate(request())
    assert caught.value.code == "provider_rejected_request"
    assert "num_outputs" not in caught.value.message


def test_429_is_transient_and_carries_retry_after(fake):
    fake.fail_next(429)
    with pytest.raises(TransientProviderError) as caught:
        replicate(fake).generate(request())
    assert caught.value.code == "provider_rate_limited" and caught.value.retry_after == 2.0


@pytest.mark.parametrize("error", [
    "The input or output was flagged as sensitive. Please try again with different inputs. "
    "(E005)",
    "NSFW content detected. Try running it again, or try a different prompt.",
])
def test_a_content_refusal_is_permanent_provider_content_refused(fake, error):
    fake.outcome, fake.failure = "failed", error
    with pytest.raises(PermanentProviderError) as caught:
        replicate(fake).generate(request())
    assert caught.value.code == CONTENT_REFUSED
    fake.sync = False  # the same when the refusal shows while polling
    with pytest.raises(PermanentProviderError) as caught:
        replicate(fake).generate(request())
    assert caught.value.code == CONTENT_REFUSED


def test_a_failed_or_canceled_prediction_is_transient(fake):
    fake.outcome, fake.failure = "failed", "E1000: Unknown error"
    with pytest.raises(TransientProviderError) as caught:
        replicate(fake).generate(request())
    assert caught.value.code == "provider_task_failed" and "E1000" in caught.value.message
    fake.outcome = "canceled"
    with pytest.raises(TransientProviderError) as caught:
        replicate(fake).generate(request())
    assert caught.value.code == "provider_task_failed"


def test_an_out_of_memory_failure_is_not_retried(fake):
    fake.outcome, fake.failure = "failed", "E1001: Out of memory"
    with pytest.raises(PermanentProviderError) as caught:
        replicate(fake).generate(request())
    assert caught.value.code == "provider_rejected_request"


MALFORMED = {
    "a garbled create answer": (lambda fake: fake.fail_next("garbage"), 1),
    "fewer outputs than asked": (lambda fake: setattr(fake, "count_input", "batch"), 2),
    "an output that is not an image": (lambda fake: setattr(fake, "output_kind", "video"), 1),
}


@pytest.mark.parametrize("case", MALFORMED)
def test_a_malformed_answer_is_transient(fake, case):
    setup, n = MALFORMED[case]
    setup(fake)
    with pytest.raises(TransientProviderError) as caught:
        replicate(fake).generate(request(n=n))
    assert caught.value.code == "invalid_provider_output"


def test_a_create_call_that_hangs_times_out(fake):
    fake.fail_next("hang")
    started = time.monotonic()
    with pytest.raises(TransientProviderError) as caught:
        replicate(fake, timeout_s=0.5).generate(request())
    assert caught.value.code == "provider_timeout"
    assert time.monotonic() - started < 2.5


def test_a_dropped_connection_is_transient(fake):
    fake.fail_next("drop")
    with pytest.raises(TransientProviderError) as caught:
        replicate(fake).generate(request())
    assert caught.value.code == "provider_connection_failed"


def test_a_prediction_that_never_finishes_is_cancelled_and_times_out(fake):
    fake.outcome = "never"
    started = time.monotonic()
    with pytest.raises(TransientProviderError) as caught:
        replicate(fake, task_timeout_s=0.3).generate(request())
    assert caught.value.code == "provider_timeout"
    assert time.monotonic() - started < 2.5
    (pid,) = fake.predictions
    (cancel,) = fake.requests_to(f"/v1/predictions/{pid}/cancel", "POST")
    assert cancel.header("Authorization") == f"Bearer {KEY}"
    assert fake.predictions[pid]["status"] == "canceled"


def test_a_few_failed_polls_are_tolerated_then_the_prediction_is_cancelled(fake):
    fake.sync, fake.polls_to_finish = False, 2
    fake.fail_polls(503, 500)
    assert len(replicate(fake).generate(request()).outputs) == 1
    fake.fail_polls(503, 503, 503)
    with pytest.raises(TransientProviderError) as caught:
        replicate(fake, max_poll_errors=2).generate(request())
    assert caught.value.code == "provider_server_error"
    assert any(p["cancelled"] for p in fake.predictions.values())


def test_the_router_fails_over_to_the_next_vendor_on_a_429(fake):
    with FakeReplicate(api_key=KEY) as backup:
        router = Router({"primary": replicate(fake), "backup": replicate(backup)},
                        {"text-to-image": ["primary", "backup"]}, RetryPolicy(attempts=1),
                        sleep=lambda s: None)
        fake.fail_next(429)
        routed = router.run(request())
    assert routed.provider == "backup"
    assert [a.code for a in routed.attempts] == ["provider_rate_limited", None]


# ------------------------------------------------------------------ data minimisation


def test_nothing_identifying_the_account_reaches_replicate(fake):
    fake.sync = False
    provider = replicate(fake, job_types=["text-to-image", "image-to-image"],
                         inputs={"prompt": "prompt", "negative_prompt": "negative_prompt",
                                 "seed": "seed", "n": "num_outputs", "width": "width",
                                 "height": "height", "image": "image", "strength": "strength"})
    source = png_bytes(8, 8)
    job = {"job_type": "image-to-image", "prompt": "a paper boat", "negative_prompt": "blurry",
           "n": 2, "width": 64, "height": 48, "seed": 11, "strength": 0.5,
           "source_image": source, "source_content_type": "image/png", **ACCOUNT}
    fields = {"job_type", "prompt", "negative_prompt", "n", "width", "height", "seed",
              "strength", "source_image", "source_content_type"}
    provider.generate(ProviderRequest(**{k: v for k, v in job.items() if k in fields}))

    assert fake.requests
    for recorded in fake.requests:
        assert {h.lower() for h in recorded.headers} <= ALLOWED_HEADERS, recorded.headers
        assert recorded.header("Authorization") in (None, f"Bearer {KEY}")
        raw = json.dumps(recorded.headers) + recorded.path + recorded.body.decode("latin-1")
        for value in ACCOUNT.values():
            assert value not in raw
    (created,) = fake.requests_to(MODEL_PATH, "POST")
    # the whitelist: the mapped fields, nothing else
    assert created.json() == {"input": {
        "prompt": "a paper boat", "negative_prompt": "blurry", "seed": 11, "num_outputs": 2,
        "width": 64, "height": 48, "strength": 0.5,
        "image": "data:image/png;base64," + base64.b64encode(source).decode()}}
    others = [r for r in fake.requests if r is not created]
    assert others and all(not r.body for r in others)  # polls and downloads carry nothing
