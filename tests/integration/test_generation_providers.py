"""The HTTP adapters, prompt assist and webhook delivery against fake servers
over real loopback HTTP (tests/fakes/providers.py): what is sent, how each
failure is classified, failover through the router, and that nothing
identifying an account ever reaches a provider."""

from __future__ import annotations

import base64
import dataclasses
import io
import json
import time

import pytest
import standardwebhooks
from PIL import Image

from services.generation.prompt_assist import PromptAssistant, expand_with_assist
from services.generation.providers.async_task import AsyncTaskProvider
from services.generation.providers.base import (
    PermanentProviderError,
    ProviderRequest,
    Shot,
    TransientProviderError,
)
from services.generation.providers.openai_images import OpenAIImagesProvider
from services.generation.providers.router import build_router
from services.generation.templates.engine import TemplateEngine
from services.generation.webhooks import UrlGuard, deliver, sign
from tests.fakes.providers import (
    DripReceiver,
    FakeAsyncTasks,
    FakeChatCompletions,
    FakeOpenAIImages,
    FakeWebhookReceiver,
    png_bytes,
)

pytestmark = pytest.mark.integration

KEY = "sk-provider-key"
# What the service knows about the job's owner; none of it may reach a provider.
JOB = {
    "job_id": "0190a5c3-0000-7000-8000-00000000abcd",
    "user_id": "0190a5c3-1111-7000-8000-00000000dcba",
    "email": "owner.sentinel@example.org",
    "api_key": "drk_live_sentinelsentinel",
    "webhook_url": "https://hooks.sentinel.example/x",
    "job_type": "text-to-image",
    "prompt": "a paper boat on a puddle",
    "negative_prompt": "blurry",
    "n": 2,
    "width": 64,
    "height": 48,
    "seed": 11,
}
IDENTITY = [JOB[k] for k in ("job_id", "user_id", "email", "api_key", "webhook_url")]
ALLOWED_HEADERS = {"host", "user-agent", "accept-encoding", "accept", "connection",
                   "content-length", "content-type", "authorization"}


def provider_request(job: dict, **changes) -> ProviderRequest:
    """How a job becomes a provider request: only the request's own fields."""
    fields = {f.name for f in dataclasses.fields(ProviderRequest)}
    return ProviderRequest(**{k: v for k, v in {**job, **changes}.items() if k in fields})


def assert_nothing_identifying(fake) -> None:
    assert fake.requests, "the fake received nothing"
    for recorded in fake.requests:
        assert {h.lower() for h in recorded.headers} <= ALLOWED_HEADERS, recorded.headers
        auth = recorded.header("Authorization")
        assert auth in (None, f"Bearer {KEY}")
        raw = json.dumps(recorded.headers) + recorded.path + recorded.body.decode("latin-1")
        for value in IDENTITY:
            assert value not in raw


def progress_log():
    events = []
    return events, lambda fraction, stage: events.append((fraction, stage))


@pytest.fixture
def images():
    with FakeOpenAIImages(api_key=KEY, hang_s=3) as fake:
        yield fake


@pytest.fixture
def tasks():
    with FakeAsyncTasks(api_key=KEY, hang_s=3) as fake:
        yield fake


def openai(fake, **kw) -> OpenAIImagesProvider:
    return OpenAIImagesProvider("openai", fake.url, api_key=KEY, model="img-1",
                                timeout_s=kw.pop("timeout_s", 2),
                                allow_private_network=kw.pop("allow_private_network", True), **kw)


def video(fake, **kw) -> AsyncTaskProvider:
    return AsyncTaskProvider("video", fake.url, api_key=KEY, model="vid-1", timeout_s=2,
                             poll_interval_s=kw.pop("poll_interval_s", 0.01),
                             task_timeout_s=kw.pop("task_timeout_s", 5),
                             allow_private_network=True, **kw)


# ------------------------------------------------------------------ openai_images


def test_openai_images_with_base64_results(images):
    result = openai(images).generate(provider_request(JOB))
    assert [(o.content_type, o.width, o.height) for o in result.outputs] == \
        [("image/png", 64, 48)] * 2
    sent = images.requests_to("/v1/images/generations")[0]
    assert sent.header("Authorization") == f"Bearer {KEY}"
    assert sent.json() == {"model": "img-1", "prompt": "a paper boat on a puddle", "n": 2,
                           "size": "64x48", "response_format": "b64_json"}
    assert_nothing_identifying(images)


def test_openai_images_with_url_results_downloads_them(images):
    events, progress = progress_log()
    result = openai(images, response_format="url").generate(provider_request(JOB), progress)
    assert len(result.outputs) == 2
    Image.open(io.BytesIO(result.outputs[0].data)).verify()
    downloads = images.requests_to("/files/", "GET")
    assert len(downloads) == 2
    assert all(d.header("Authorization") == f"Bearer {KEY}" for d in downloads)  # same origin
    assert [stage for _, stage in events] == ["submitting", "downloading", "downloading",
                                              "downloaded"]
    assert [f for f, _ in events] == sorted(f for f, _ in events)
    assert_nothing_identifying(images)


def test_extended_params_send_the_seed_and_negative_prompt(images):
    openai(images, extended_params=True).generate(provider_request(JOB))
    body = images.requests[-1].json()
    assert (body["seed"], body["negative_prompt"]) == (11, "blurry")


@pytest.mark.parametrize("behaviour, error, code", [
    (500, TransientProviderError, "provider_server_error"),
    (503, TransientProviderError, "provider_server_error"),
    (429, TransientProviderError, "provider_rate_limited"),
    (408, TransientProviderError, "provider_timeout"),
    (400, PermanentProviderError, "provider_rejected_request"),
    (404, PermanentProviderError, "provider_rejected_request"),
    ("refuse", PermanentProviderError, "content_refused"),
    (401, PermanentProviderError, "provider_auth_failed"),
    ("drop", TransientProviderError, "provider_connection_failed"),
    ("garbage", TransientProviderError, "invalid_provider_output"),
    ("redirect", TransientProviderError, "invalid_provider_output"),  # never followed
])
def test_openai_images_failures_are_classified(images, behaviour, error, code):
    images.fail_next(behaviour)
    with pytest.raises(error) as caught:
        openai(images).generate(provider_request(JOB))
    assert caught.value.code == code
    if behaviour == 429:
        assert caught.value.retry_after == 0


def test_a_provider_that_hangs_times_out(images):
    images.fail_next("hang")
    started = time.monotonic()
    with pytest.raises(TransientProviderError) as caught:
        openai(images, timeout_s=0.3).generate(provider_request(JOB))
    assert caught.value.code == "provider_timeout"
    assert time.monotonic() - started < 2


def test_fewer_images_than_asked_is_a_malformed_answer(images):
    images.max_images = 1
    with pytest.raises(TransientProviderError) as caught:
        openai(images).generate(provider_request(JOB))  # n=2
    assert caught.value.code == "invalid_provider_output"


def test_a_wrong_api_key_is_an_auth_failure(images):
    provider = OpenAIImagesProvider("openai", images.url, api_key="sk-wrong", timeout_s=2,
                                    allow_private_network=True)
    with pytest.raises(PermanentProviderError) as caught:
        provider.generate(provider_request(JOB))
    assert caught.value.code == "provider_auth_failed"


@pytest.mark.parametrize("address", ["169.254.169.254", "100.100.100.200", "0.0.0.0"])
def test_a_result_url_on_a_metadata_address_is_refused_even_on_a_private_network(images,
                                                                                 address):
    images.result_base = f"http://{address}:9"  # a cloud metadata service
    with pytest.raises(TransientProviderError) as caught:
        openai(images, response_format="url").generate(provider_request(JOB))
    assert caught.value.code == "invalid_provider_output" and "result URL" in caught.value.message
    assert images.requests_to("/files/") == []


def test_without_allow_private_network_a_loopback_provider_is_refused(images, tasks):
    """The operator's base_url is not trusted implicitly: without the flag every
    address the provider's API or result URLs resolve to must be public."""
    with pytest.raises(TransientProviderError) as caught:
        openai(images, allow_private_network=False).generate(provider_request(JOB))
    assert caught.value.code == "invalid_provider_output"
    assert images.requests == []  # nothing left the process
    config = router_config(images.url, tasks.url)
    del config["providers"]["openai"]["allow_private_network"]
    config["routes"] = {"text-to-image": ["openai"]}
    with pytest.raises(TransientProviderError) as caught:
        build_router(config).run(provider_request(JOB))
    assert caught.value.code == "provider_unavailable" and images.requests == []
    config["providers"]["openai"]["allow_private_network"] = "true"
    assert build_router(config).run(provider_request(JOB)).provider == "openai"


def test_a_connection_refused_is_transient():
    with FakeOpenAIImages() as fake:
        url = fake.url
    with pytest.raises(TransientProviderError) as caught:
        OpenAIImagesProvider("openai", url, timeout_s=1,
                             allow_private_network=True).generate(provider_request(JOB))
    assert caught.value.code == "provider_connection_failed"


# ------------------------------------------------------------------ async_task


def video_request(**changes) -> ProviderRequest:
    return provider_request(JOB, job_type="image-to-video", n=1, source_image=png_bytes(32, 32),
                            source_content_type="image/png", duration_s=None,
                            shots=(Shot("a boat drifts", "pan_left", 2.0),
                                   Shot("close-up", "zoom_in", 1.5)), **changes)


def test_async_task_submits_polls_and_downloads_the_video(tasks):
    tasks.polls_to_finish = 3
    events, progress = progress_log()
    result = video(tasks).generate(video_request(), progress)
    output = result.outputs[0]
    assert (output.content_type, output.width, output.height) == ("video/mp4", 64, 64)
    assert output.duration_s == pytest.approx(1.0)
    body = tasks.requests_to("/v1/tasks", "POST")[0].json()
    assert set(body) == {"type", "model", "prompt", "negative_prompt", "seed", "width",
                         "height", "n", "image", "shots"}
    assert base64.b64decode(body["image"]["data"]) == png_bytes(32, 32)
    assert body["shots"] == [{"prompt": "a boat drifts", "camera": "pan_left", "duration_s": 2.0},
                             {"prompt": "close-up", "camera": "zoom_in", "duration_s": 1.5}]
    polls = [r for r in tasks.requests if r.method == "GET" and r.path.startswith("/v1/tasks/")]
    assert len(polls) == 3
    assert [stage for _, stage in events] == ["submitting", "queued", "running", "downloading",
                                              "downloaded"]
    assert [f for f, _ in events] == sorted(f for f, _ in events)
    assert_nothing_identifying(tasks)


def test_a_failed_task_is_transient_unless_the_provider_says_otherwise(tasks):
    tasks.outcome = "failed"
    with pytest.raises(TransientProviderError) as caught:
        video(tasks).generate(video_request())
    assert caught.value.code == "provider_task_failed"
    tasks.failure = {"code": "content_policy", "message": "no", "retryable": False}
    with pytest.raises(PermanentProviderError) as caught:
        video(tasks).generate(video_request())
    assert caught.value.code == "content_refused"
    tasks.failure = {"code": "bad_size", "retryable": False}
    with pytest.raises(PermanentProviderError) as caught:
        video(tasks).generate(video_request())
    assert caught.value.code == "provider_rejected_request"


def test_a_task_that_never_finishes_times_out_and_is_cancelled(tasks):
    tasks.outcome = "never"
    with pytest.raises(TransientProviderError) as caught:
        video(tasks, poll_interval_s=0.05, task_timeout_s=0.3).generate(video_request())
    assert caught.value.code == "provider_timeout"
    assert len(tasks.requests_to("/v1/tasks/", "DELETE")) == 1
    assert all(task["cancelled"] for task in tasks.tasks.values())


def test_a_few_failed_polls_are_tolerated_but_not_many(tasks):
    tasks.fail_polls(500, 502)
    assert video(tasks).generate(video_request()).outputs
    tasks.fail_polls(500, 500, 500, 500)
    with pytest.raises(TransientProviderError) as caught:
        video(tasks).generate(video_request())
    assert caught.value.code == "provider_server_error"


@pytest.mark.parametrize("setup, code", [
    (lambda f: f.fail_next("garbage"), "invalid_provider_output"),        # no task id
    (lambda f: setattr(f, "result", b"<html>oops</html>"), "invalid_provider_output"),
    (lambda f: setattr(f, "result_url", "http://169.254.169.254/latest/meta-data"),
     "invalid_provider_output"),
    (lambda f: f.fail_next(503), "provider_server_error"),
])
def test_async_task_malformed_answers_are_transient(tasks, setup, code):
    setup(tasks)
    with pytest.raises(TransientProviderError) as caught:
        video(tasks).generate(video_request())
    assert caught.value.code == code


def test_async_task_refuses_job_types_it_was_not_configured_for(tasks):
    with pytest.raises(PermanentProviderError) as caught:
        video(tasks).generate(provider_request(JOB))
    assert caught.value.code == "unsupported_job_type"
    assert tasks.requests == []


# ------------------------------------------------------------------ the router over HTTP


def router_config(images_url: str, tasks_url: str, **extra) -> dict:
    """The providers file's structure (docs/providers.md); the fakes are on loopback."""
    return {
        "providers": {
            "openai": {"type": "openai_images", "base_url": images_url, "api_key": KEY,
                       "timeout_s": 0.5, "allow_private_network": True},
            "video": {"type": "async_task", "base_url": tasks_url, "api_key": KEY,
                      "poll_interval_s": 0.01, "task_timeout_s": 5,
                      "allow_private_network": True},
            "local": {"type": "local", "video_size": 64, "video_fps": 4},
        },
        "routes": {"text-to-image": ["openai", "local"], "image-to-video": ["video", "local"]},
        "retry": {"attempts": 2, "base_delay_s": 0.01, "max_delay_s": 0.05},
        "breaker": {"failures": 2, "cooldown_s": 60},
        **extra,
    }


def test_a_transient_failure_is_retried_on_the_same_provider(images, tasks):
    images.fail_next(500)
    routed = build_router(router_config(images.url, tasks.url)).run(provider_request(JOB))
    assert routed.provider == "openai"
    assert [a.code for a in routed.attempts] == ["provider_server_error", None]


@pytest.mark.parametrize("behaviour", [500, "hang"])
def test_a_failing_or_hanging_provider_fails_over_to_the_next(images, tasks, behaviour):
    images.mode = behaviour
    router = build_router(router_config(images.url, tasks.url))
    routed = router.run(provider_request(JOB))
    assert routed.provider == "local"
    assert [(a.provider, a.code) for a in routed.attempts][-1] == ("local", None)
    assert routed.result.outputs[0].width == 64
    assert router.breaker_states()["openai"] == "open"
    images.requests.clear()
    assert router.run(provider_request(JOB)).provider == "local"
    assert images.requests == []  # the open breaker skips it


def test_video_fails_over_from_the_task_api_to_the_local_renderer(images, tasks):
    tasks.outcome = "failed"
    routed = build_router(router_config(images.url, tasks.url)).run(video_request())
    assert routed.provider == "local"
    assert routed.result.outputs[0].content_type == "video/mp4"
    assert routed.result.outputs[0].duration_s == pytest.approx(3.5)


def test_a_content_refusal_does_not_fail_over(images, tasks):
    """Provider A refuses on content policy, B would succeed: B is never asked."""
    images.fail_next("refuse")
    with FakeOpenAIImages(api_key=KEY) as backup:
        config = router_config(images.url, tasks.url)
        config["providers"]["backup"] = {**config["providers"]["openai"], "base_url": backup.url}
        config["routes"] = {"text-to-image": ["openai", "backup", "local"]}
        router = build_router(config)
        with pytest.raises(PermanentProviderError) as caught:
            router.run(provider_request(JOB))
        assert caught.value.code == "content_refused"
        assert [(a.provider, a.code) for a in caught.value.attempts] == [
            ("openai", "content_refused")]
        assert len(images.requests) == 1 and backup.requests == []
        # an outage of A still fails over to B
        images.fail_next(503, 503)
        assert router.run(provider_request(JOB)).provider == "backup"
        assert len(backup.requests) == 1


def test_when_every_provider_fails_the_job_gets_provider_unavailable(images, tasks):
    images.mode = 503
    config = router_config(images.url, tasks.url)
    config["routes"] = {"text-to-image": ["openai"]}
    with pytest.raises(TransientProviderError) as caught:
        build_router(config).run(provider_request(JOB))
    assert caught.value.code == "provider_unavailable"
    assert len(images.requests) == 2


# ------------------------------------------------------------------ prompt assist


BRIEF = {"product_name": "Aurora lamp", "shot_count": 2}


def good_answer(body: dict) -> str:
    return json.dumps({"prompt": "a glowing lamp film", "negative_prompt": "blur",
                       "shots": [{"prompt": "lamp wakes up", "camera": "zoom_out"},
                                 {"prompt": "lamp hero", "camera": "static"}]})


def test_prompt_assist_over_http():
    engine = TemplateEngine()
    with FakeChatCompletions(api_key="sk-chat", content=good_answer) as chat:
        assistant = PromptAssistant(chat.url, api_key="sk-chat", model="small", timeout_s=2)
        result = expand_with_assist(engine, "product-showcase", BRIEF, assistant)
        sent = chat.requests[0]
    assert result.source == "assist" and result.prompt == "a glowing lamp film"
    assert [s.camera for s in result.shots] == ["zoom_out", "static"]
    assert sent.header("Authorization") == "Bearer sk-chat"
    body = sent.json()
    assert body["model"] == "small"
    assert json.loads(body["messages"][1]["content"])["brief"]["product_name"] == "Aurora lamp"
    for value in IDENTITY:
        assert value not in sent.body.decode()


@pytest.mark.parametrize("behaviour", ["hang", 500, 429, "garbage", "drop"])
def test_prompt_assist_falls_back_when_the_model_fails(behaviour):
    engine = TemplateEngine()
    with FakeChatCompletions(content=good_answer) as chat:
        chat.fail_next(behaviour)
        assistant = PromptAssistant(chat.url, timeout_s=0.3)
        started = time.monotonic()
        result = expand_with_assist(engine, "product-showcase", BRIEF, assistant)
    assert result == engine.expand("product-showcase", BRIEF)
    assert time.monotonic() - started < 2


# ------------------------------------------------------------------ webhooks


SECRET = "whsec_" + base64.b64encode(b"integration-test-webhook-key-32b").decode()
PAYLOAD = json.dumps({"job_id": "j1", "status": "succeeded"}).encode()


@pytest.fixture
def receiver():
    with FakeWebhookReceiver(hang_s=3) as fake:
        yield fake


LOOPBACK_ALLOWED = UrlGuard(allow=["127.0.0.1/32"])


def test_a_webhook_arrives_signed_and_verifiable(receiver):
    outcome = deliver(receiver.url + "/hooks/darkroom", PAYLOAD, SECRET, guard=LOOPBACK_ALLOWED,
                      delivery_id="d-1")
    assert (outcome.delivered, outcome.retry, outcome.status) == (True, False, 204)
    got = receiver.requests[0]
    assert got.path == "/hooks/darkroom" and got.body == PAYLOAD
    assert got.header("Content-Type") == "application/json"
    assert got.header("webhook-id") == "d-1"
    assert standardwebhooks.Webhook(SECRET).verify(got.body, got.headers) == json.loads(PAYLOAD)
    other = "whsec_" + base64.b64encode(b"someone else's 32-byte secret...").decode()
    with pytest.raises(standardwebhooks.WebhookVerificationError):
        standardwebhooks.Webhook(other).verify(got.body, got.headers)


def test_a_webhook_to_loopback_is_refused_without_an_allow_list(receiver):
    outcome = deliver(receiver.url + "/x", PAYLOAD, SECRET, guard=UrlGuard())
    assert (outcome.delivered, outcome.retry, outcome.error) == \
        (False, False, "address_not_allowed")
    assert receiver.requests == []


def test_dns_rebinding_is_caught_when_the_connection_is_made(receiver):
    # the check sees a public address, the connection then reaches loopback
    port = receiver.url.rsplit(":", 1)[1]
    guard = UrlGuard(resolver=lambda host, port: ["93.184.216.34"])
    outcome = deliver(f"http://localhost:{port}/x", PAYLOAD, SECRET, guard=guard)
    assert (outcome.delivered, outcome.error) == (False, "address_not_allowed")
    assert receiver.requests == []


@pytest.mark.parametrize("behaviour, retry, error", [
    (500, True, "receiver_error"),
    (429, True, "receiver_error"),
    (400, False, "receiver_refused"),
    (410, False, "receiver_refused"),
    ("redirect", False, "redirect_not_followed"),
    ("drop", True, "connection_failed"),
])
def test_a_failed_delivery_says_whether_to_retry(receiver, behaviour, retry, error):
    receiver.fail_next(behaviour)
    outcome = deliver(receiver.url + "/x", PAYLOAD, SECRET, guard=LOOPBACK_ALLOWED)
    assert (outcome.delivered, outcome.retry, outcome.error) == (False, retry, error)
    assert len(receiver.requests) == 1  # a redirect is not followed


def test_a_receiver_that_hangs_times_out_and_is_retried(receiver):
    receiver.fail_next("hang")
    started = time.monotonic()
    outcome = deliver(receiver.url + "/x", PAYLOAD, SECRET, guard=LOOPBACK_ALLOWED,
                      timeout_s=0.3)
    assert (outcome.delivered, outcome.retry, outcome.error) == (False, True, "timeout")
    assert time.monotonic() - started < 2


def test_the_signature_uses_the_delivery_time(receiver):
    deliver(receiver.url + "/x", PAYLOAD, SECRET, guard=LOOPBACK_ALLOWED, now=1700000000,
            delivery_id="d-2")
    got = receiver.requests[0]
    headers = {name: got.header(name) for name in ("webhook-id", "webhook-timestamp",
                                                   "webhook-signature")}
    assert headers == sign(SECRET, "d-2", PAYLOAD, 1700000000)
    with pytest.raises(standardwebhooks.WebhookVerificationError):  # far too old now
        standardwebhooks.Webhook(SECRET).verify(PAYLOAD, headers)


def test_an_answer_dripped_past_the_deadline_is_cut_and_retried():
    with DripReceiver(every_s=0.2, status_line=False) as drip:
        started = time.monotonic()
        outcome = deliver(drip.url + "/x", PAYLOAD, SECRET, guard=LOOPBACK_ALLOWED,
                          timeout_s=1.0)
        elapsed = time.monotonic() - started
    assert (outcome.delivered, outcome.retry, outcome.error) == (False, True, "timeout")
    # the headers came at once; the body, one byte every 0.2 s, is cut at the deadline
    # (outside nameko's green runtime the cut comes at the first read after it)
    assert 0.9 < elapsed < 1.6, elapsed
