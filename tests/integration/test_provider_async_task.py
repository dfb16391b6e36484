"""The generic async_task adapter configured for a vendor's own task API
(non-default paths and JSON pointers: deploy/providers/seed-001.yaml's
mapping) against a fake of that API over real loopback HTTP
(tests/fakes/providers.py, FakeVendorTasks): the request as mapped, polling,
success, failure, refusal, a task that never finishes, 429 with Retry-After,
another auth header, routing, and that nothing identifying an account is
sent. The default protocol is covered in test_generation_providers.py."""

from __future__ import annotations

import base64

import pytest

from services.generation.providers.base import (
    CONTENT_REFUSED,
    PermanentProviderError,
    ProviderRequest,
    Shot,
    TransientProviderError,
)
from services.generation.providers.config import load_providers_file
from services.generation.providers.router import build_provider, build_router
from tests.fakes.providers import FakeVendorTasks, assert_nothing_identifying, png_bytes
from tests.unit.generation.test_provider_examples import EXAMPLES, keys_of

pytestmark = pytest.mark.integration

KEY = "vt-fake-vendor-key"
SEED_001 = next(p for p in EXAMPLES if p.name == "seed-001.yaml")


@pytest.fixture
def fake():
    with FakeVendorTasks(api_key=KEY, hang_s=3) as server:
        yield server


def conf(fake, **changes) -> dict:
    """seed-001.yaml's video provider as shipped, pointed at the fake, faster."""
    shipped = load_providers_file(SEED_001, keys_of(SEED_001))["providers"]["video"]
    return {**shipped, "base_url": fake.url, "api_key": KEY, "allow_private_network": True,
            "timeout_s": 2, "poll_interval_s": 0.01, "task_timeout_s": 5, **changes}


def video(fake, **changes):
    return build_provider("video", conf(fake, **changes))


def request(**kw) -> ProviderRequest:
    return ProviderRequest(**{"job_type": "image-to-video", "prompt": "the bottle turns",
                              "negative_prompt": "blur", "seed": 9, "width": 64, "height": 64,
                              "source_image": png_bytes(32, 32), "source_content_type": "image/png",
                              "shots": (Shot("the bottle turns", "pan_left", 2.0),), **kw})


# ------------------------------------------------------------------ success


def test_a_task_is_submitted_where_the_mapping_says_polled_and_its_video_downloaded(fake):
    fake.polls_to_finish = 3
    events = []
    result = video(fake).generate(request(), lambda f, s: events.append((f, s)))
    (output,) = result.outputs
    assert (output.content_type, output.width, output.height) == ("video/mp4", 64, 64)
    (sent,) = fake.requests_to("/v2/videos", "POST")
    assert sent.path == "/v2/videos" and sent.header("Authorization") == f"Bearer {KEY}"
    body = sent.json()
    assert body == {
        "model": "i2v-standard",
        "input": {"prompt": "the bottle turns",
                  "image": "data:image/png;base64," + base64.b64encode(png_bytes(32, 32)).decode(),
                  "shots": [{"prompt": "the bottle turns", "camera": "pan_left",
                             "duration_s": 2.0}]},
        "parameters": {"watermark": False}}  # no seed, size or negative prompt: not mapped
    (task_id,) = fake.tasks
    polls = fake.requests_to(f"/v2/videos/{task_id}", "GET")
    assert len(polls) == 3 and all(p.header("Authorization") == f"Bearer {KEY}" for p in polls)
    assert fake.requests_to(f"/media/{task_id}", "GET")
    assert not fake.tasks[task_id]["cancelled"]
    stages = [stage for _, stage in events]
    assert stages == ["submitting", "pending", "running", "downloading", "downloaded"]
    assert [f for f, _ in events] == sorted(f for f, _ in events)
    assert events[1][0] == pytest.approx(0.9 * 0.25)  # 25 percent, read from /data/percent
    assert_nothing_identifying(fake)


def test_another_auth_header_without_a_scheme():
    with FakeVendorTasks(api_key=KEY, auth_header="X-Api-Key", auth_scheme=None) as fake:
        assert video(fake, auth_header="X-Api-Key", auth_scheme="").generate(request()).outputs
        (sent,) = fake.requests_to("/v2/videos", "POST")
        assert sent.header("X-Api-Key") == KEY and sent.header("Authorization") is None
        assert_nothing_identifying(fake, also_headers=["X-Api-Key"])
        with pytest.raises(PermanentProviderError) as caught:
            video(fake).generate(request())  # Authorization: Bearer: not what it takes
        assert caught.value.code == "provider_auth_failed"


def test_the_router_runs_the_example_with_the_local_renderer_behind_it(fake):
    structure = load_providers_file(SEED_001, keys_of(SEED_001))
    structure["providers"]["video"] = conf(fake)
    structure["retry"] = {"attempts": 1, "base_delay_s": 0.01, "max_delay_s": 0.01}
    router = build_router(structure)
    assert router.run(request()).provider == "video"
    fake.outcome = "FAILED"
    assert router.run(request()).provider == "local"  # a failed task fails over


# ------------------------------------------------------------------ how tasks end


@pytest.mark.parametrize("outcome, failure, error, code", [
    ("FAILED", {"code": "gpu_lost", "message": "worker went away"},
     TransientProviderError, "provider_task_failed"),
    ("FAILED", {"code": "content_policy_violation", "message": "no"},
     PermanentProviderError, CONTENT_REFUSED),                  # refused_codes
    ("BLOCKED", None, PermanentProviderError, CONTENT_REFUSED),   # a refused status
    ("CANCELLED", None, TransientProviderError, "provider_task_failed"),
    ("LOST", None, TransientProviderError, "invalid_provider_output"),  # undocumented state
])
def test_how_a_task_ends_is_classified(fake, outcome, failure, error, code):
    fake.outcome = outcome
    if failure:
        fake.failure = failure
    with pytest.raises(error) as caught:
        video(fake).generate(request())
    assert caught.value.code == code
    assert "the bottle turns" not in caught.value.message
    assert not fake.requests_to("/media/")


def test_a_task_that_never_finishes_times_out_and_is_cancelled_where_the_config_says(fake):
    fake.outcome = "never"
    with pytest.raises(TransientProviderError) as caught:
        video(fake, poll_interval_s=0.05, task_timeout_s=0.3).generate(request())
    assert caught.value.code == "provider_timeout"
    (task_id,) = fake.tasks
    (cancel,) = fake.requests_to(f"/v2/videos/{task_id}/cancel", "POST")
    assert cancel.header("Authorization") == f"Bearer {KEY}"
    assert fake.tasks[task_id]["cancelled"]


def test_without_a_cancel_call_a_timed_out_task_is_left_alone(fake):
    fake.outcome = "never"
    with pytest.raises(TransientProviderError):
        video(fake, cancel=None, poll_interval_s=0.05, task_timeout_s=0.2).generate(request())
    assert [r for r in fake.requests if r.path.endswith("/cancel")] == []


def test_a_429_on_submit_carries_its_retry_after_and_on_a_poll_is_tolerated(fake):
    fake.fail_next((429, {"error": {"code": "rate_limited", "message": "slow down"}},
                    {"Retry-After": "12"}))
    with pytest.raises(TransientProviderError) as caught:
        video(fake).generate(request())
    assert (caught.value.code, caught.value.retry_after) == ("provider_rate_limited", 12.0)
    fake.fail_polls(429, 503)
    assert video(fake).generate(request()).outputs
    fake.fail_polls(429, 429, 429, 429)
    with pytest.raises(TransientProviderError) as caught:
        video(fake).generate(request())
    assert caught.value.code == "provider_rate_limited"


@pytest.mark.parametrize("setup, code", [
    (lambda f: f.fail_next("garbage"), "invalid_provider_output"),   # no /data/task/id
    (lambda f: f.fail_next("hang"), "provider_timeout"),
    (lambda f: f.fail_next(400), "provider_rejected_request"),
])
def test_a_bad_submit_answer_is_classified(fake, setup, code):
    setup(fake)
    with pytest.raises((TransientProviderError, PermanentProviderError)) as caught:
        video(fake, timeout_s=0.5).generate(request())
    assert caught.value.code == code
