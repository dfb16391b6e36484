"""The end-to-end stack: every Procfile process, started once per session.

Billing talks to a fake Stripe (tests/fakes/stripe.py) on a local port; the
tests sign webhooks with ``Stack.stripe_webhook_secret``. PayPal is enabled
too, against the fake PayPal (tests/fakes/paypal.py, the ``fake_paypal``
fixture), which makes and verifies its webhook deliveries. Generation's model
providers are fakes on loopback too (tests/fakes/providers.py): an
OpenAI-compatible images API first and the local renderer second for
text-to-image, an async task API first for image-to-video; tests script their
failures. Generation runs one job at a time here, so a job can be held in
the queue behind another.

Behind those, every other adapter type has an entry of its own, each on its
vendor's fake (the ``vendors`` fixture, ``stack.vendors``), appended to the
routes so the routes' heads stay as above (tests/e2e/test_vendors.py names
them as ``model``, or refuses the regions in front of them)."""

from __future__ import annotations

import contextlib

import pytest

from tests.conftest import REPO, base_env, free_port, providers_file
from tests.e2e.stack import Stack
from tests.fakes.ark import FakeArk
from tests.fakes.comfyui import IMG2IMG, FakeComfyUI
from tests.fakes.dashscope import FakeDashScope
from tests.fakes.fal import FakeFal
from tests.fakes.gemini import FakeGemini
from tests.fakes.openrouter import FakeOpenRouter
from tests.fakes.paypal import FakePayPal
from tests.fakes.providers import FakeAsyncTasks, FakeOpenAIImages
from tests.fakes.replicate import FakeReplicate
from tests.fakes.stripe import FakeStripe

STRIPE_WEBHOOK_SECRET = "whsec_e2e_test"
PROVIDER_KEY = "sk-e2e-provider"
SERVICES = ("auth", "notifications", "storage", "billing", "generation", "privacy")


@pytest.fixture(scope="session")
def fake_images():
    with FakeOpenAIImages(api_key=PROVIDER_KEY, hang_s=4) as provider:
        yield provider


@pytest.fixture(scope="session")
def fake_video():
    with FakeAsyncTasks(api_key=PROVIDER_KEY, polls_to_finish=2) as provider:
        yield provider


@pytest.fixture(scope="session")
def vendors():
    """The other adapter types' vendors, one fake each: ``{"ark": FakeArk, ...}``."""
    fakes = {"ark": FakeArk(api_key=PROVIDER_KEY, hang_s=3, min_pixels=512 * 512),
             "dashscope": FakeDashScope(api_key=PROVIDER_KEY, hang_s=3),
             "openrouter": FakeOpenRouter(api_key=PROVIDER_KEY, hang_s=3),
             "gemini": FakeGemini(api_key=PROVIDER_KEY, hang_s=3),
             "replicate": FakeReplicate(api_key=PROVIDER_KEY, hang_s=3),
             "fal": FakeFal(api_key=PROVIDER_KEY, hang_s=3, queue_polls=1, output="video"),
             "comfyui": FakeComfyUI(hang_s=3)}
    with contextlib.ExitStack() as started:
        for fake in fakes.values():
            started.enter_context(fake)
        yield fakes


def vendor_providers(fakes: dict) -> dict:
    """The providers file's entries of ``vendors``: one per adapter type
    (two for DashScope: qwen-image and Wan), short timeouts and polls."""
    key, fast = "${E2E_PROVIDER_KEY}", {"timeout_s": 2, "poll_interval_s": 0.05,
                                         "task_timeout_s": 20}
    return {
        "seedream": {"type": "volcengine_ark", "base_url": f"{fakes['ark'].url}/api/v3",
                     "api_key": key, "model": "doubao-seedream-4-5-251128", "region": "cn",
                     "job_types": ["text-to-image", "image-to-image"],
                     "min_pixels": 512 * 512, **fast},
        "qwen": {"type": "dashscope", "base_url": fakes["dashscope"].base_url, "api_key": key,
                 "model": "qwen-image", "region": "cn", "job_types": ["text-to-image"],
                 "request_timeout_s": 2, "poll_interval_s": 0.05, "timeout_s": 20},
        "wan": {"type": "dashscope", "base_url": fakes["dashscope"].base_url, "api_key": key,
                "model": "wan2.5-i2v-preview", "region": "cn", "job_types": ["image-to-video"],
                "resolution": "480P", "durations": [5, 10], "request_timeout_s": 2,
                "poll_interval_s": 0.05, "timeout_s": 20},
        "openrouter": {"type": "openrouter", "base_url": f"{fakes['openrouter'].url}/api/v1",
                       "api_key": key, "model": "google/gemini-2.5-flash-image", "region": "us",
                       "job_types": ["text-to-image"], "timeout_s": 2},
        "veo": {"type": "gemini", "base_url": f"{fakes['gemini'].url}/v1beta", "api_key": key,
                "model": "veo-3.1-generate-preview", "region": "us",
                "job_types": ["image-to-video"], **fast},
        "flux": {"type": "replicate", "base_url": fakes["replicate"].base_url, "api_key": key,
                 "model": "black-forest-labs/flux-schnell", "region": "us",
                 "job_types": ["text-to-image"],
                 "inputs": {"prompt": "prompt", "seed": "seed", "n": "num_outputs",
                            "width": "width", "height": "height"}, **fast},
        "kling": {"type": "fal", "base_url": fakes["fal"].url, "api_key": key,
                  "model": "fal-ai/kling-video/v2/master/image-to-video", "region": "us",
                  "job_types": ["image-to-video"],
                  "inputs": {"prompt": "prompt", "image": "image_url", "duration_s": "duration"},
                  **fast},
        "studio": {"type": "comfyui", "hosts": [fakes["comfyui"].url],
                   "allow_private_network": True, "region": "on-premises",
                   "base_dir": str(REPO / "deploy" / "providers"),
                   "job_types": ["image-to-image"], "workflows": {"image-to-image": IMG2IMG},
                   **fast},
    }


@pytest.fixture(scope="session")
def fake_stripe():
    with FakeStripe() as stripe:
        yield stripe


@pytest.fixture(scope="session")
def fake_paypal():
    with FakePayPal() as paypal:
        yield paypal


@pytest.fixture(scope="session")
def stack(amqp_uri, make_database, start_process, tmp_path_factory, fake_stripe, fake_paypal,
          fake_images, fake_video, vendors):
    mail_dir = tmp_path_factory.mktemp("mail")
    objects_dir = tmp_path_factory.mktemp("objects")
    port = free_port()
    env = base_env(
        AMQP_URI=amqp_uri,
        AUTH_DATABASE_URL=make_database("auth"),
        NOTIFICATIONS_DATABASE_URL=make_database("notifications"),
        STORAGE_DATABASE_URL=make_database("storage"),
        STORAGE_METRICS_PORT=free_port(),
        STORAGE_BACKEND="fs",
        STORAGE_FS_ROOT=objects_dir,
        STORAGE_URL_SECRET="e2e-url-secret",
        STORAGE_UPLOAD_MAX_BYTES=2_000_000,
        AUTH_METRICS_PORT=free_port(),
        NOTIFICATIONS_METRICS_PORT=free_port(),
        MAIL_URL=f"file://{mail_dir}",
        # a random port, and the one base of every URL handed out (signed file URLs,
        # mail links, checkout return URLs): nothing else names the address
        GATEWAY_PORT=port,
        PUBLIC_BASE_URL=f"http://127.0.0.1:{port}",
        GATEWAY_AUTH_CACHE_SECONDS=2,
        RATELIMIT_AUTH="10000 per minute",
        RATELIMIT_DEFAULT="10000 per minute",
        AUTH_LOGIN_MAX_FAILURES_PER_ACCOUNT=5,
        AUTH_RESEND_MIN_INTERVAL_SECONDS=0,
        BILLING_DATABASE_URL=make_database("billing"),
        BILLING_METRICS_PORT=free_port(),
        STRIPE_API_BASE=fake_stripe.api_base,
        STRIPE_SECRET_KEY=fake_stripe.secret_key,
        STRIPE_WEBHOOK_SECRET=STRIPE_WEBHOOK_SECRET,
        BILLING_PAYMENT_PROVIDERS="stripe,paypal",
        BILLING_PAYPAL_BASE_URL=fake_paypal.url,
        BILLING_PAYPAL_CLIENT_ID=fake_paypal.client_id,
        BILLING_PAYPAL_CLIENT_SECRET=fake_paypal.client_secret,
        BILLING_PAYPAL_WEBHOOK_ID=fake_paypal.webhook_id,
        GENERATION_DATABASE_URL=make_database("generation"),
        GENERATION_METRICS_PORT=free_port(),
        GENERATION_MAX_RUNNING_JOBS=1, GENERATION_LEASE_SECONDS=3,
        # the vendors: a providers file whose keys come from the environment, as in production
        E2E_PROVIDER_KEY=PROVIDER_KEY,
        GENERATION_PROVIDERS_FILE=providers_file(
            tmp_path_factory.mktemp("providers"),
            {"openai": {"type": "openai_images", "base_url": fake_images.url,
                        "api_key": "${E2E_PROVIDER_KEY}", "timeout_s": 1, "region": "us"},
             "video": {"type": "async_task", "base_url": fake_video.url,
                       "api_key": "${E2E_PROVIDER_KEY}", "poll_interval_s": 0.1,
                       "timeout_s": 2, "task_timeout_s": 20, "region": "eu"},
             "local": {"type": "local", "region": "on-premises"},
             **vendor_providers(vendors)},
            {"text-to-image": ["openai", "local", "seedream", "qwen", "openrouter", "flux"],
             "image-to-image": ["local", "seedream", "studio"],
             "image-to-video": ["video", "wan", "veo", "kling"]},
            retry={"attempts": 2, "base_delay_s": 0.05, "max_delay_s": 30},
            breaker={"failures": 1000, "cooldown_s": 60}),
        GENERATION_WEBHOOK_ALLOW="127.0.0.1",
        PRIVACY_DATABASE_URL=make_database("privacy"),
        PRIVACY_METRICS_PORT=free_port(),
        # an erasure's grace period: 8 seconds here (72 hours by default)
        PRIVACY_ERASURE_GRACE_HOURS=8 / 3600,
        # longer than GATEWAY_AUTH_CACHE_SECONDS, as in production; short, for speed
        PRIVACY_ERASURE_SETTLE_SECONDS=3,
    )
    processes = {}
    for name in SERVICES:  # started together, waited for together: the stack starts fast
        processes[name] = start_process(name, env)
    for name in SERVICES:
        processes[name].wait_ready(f"http://127.0.0.1:{env[name.upper() + '_METRICS_PORT']}/readyz")
    processes["gateway"] = start_process("gateway", env)
    processes["gateway"].wait_ready(f"http://127.0.0.1:{port}/readyz")
    return Stack(f"http://127.0.0.1:{port}", mail_dir, processes, objects_dir,
                 stripe=fake_stripe, stripe_webhook_secret=STRIPE_WEBHOOK_SECRET, env=env,
                 images=fake_images, video=fake_video, vendors=vendors)


