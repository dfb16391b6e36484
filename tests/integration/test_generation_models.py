"""Models across real services (issue 20): billing with a per-model price
(``BILLING.PRICES.text-to-image.models``), generation with a providers file
whose text-to-image route is ``openai`` (a fake OpenAI images API on
loopback) then ``local``. A dry run with and without ``model`` gives the two
prices; a job that names a model runs on it alone, and the hold is the
model's price."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.common.errors import DomainError
from tests.conftest import base_env, free_port, procfile_commands, providers_file
from tests.fakes.providers import FakeOpenAIImages
from tests.integration.test_generation_service import (
    finished,
    new_user,
    ready,
    settled,
    storage_env,
)

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
KEY = "sk-models-key"
TEXT = {"type": "text-to-image", "prompt": "a lantern in the fog", "size": "512x512"}
TYPE_LINE = "      minimum: ${BILLING_PRICE_TEXT_TO_IMAGE_MINIMUM:1}\n"


def billing_config(directory: Path) -> Path:
    """The shipped billing config, with ``openai`` images at 3 credits per area (min 3)."""
    text = (ROOT / "deploy/config/billing.yaml").read_text()
    assert text.count(TYPE_LINE) == 1
    text = text.replace(TYPE_LINE, TYPE_LINE + "      models:\n"
                        "        openai: {credits_per_area: 3, minimum: 3}\n")
    path = directory / "billing.yaml"
    path.write_text(text)
    return path


@pytest.fixture(scope="module")
def images():
    with FakeOpenAIImages(api_key=KEY, hang_s=3) as fake:
        yield fake


@pytest.fixture(scope="module")
def stack(make_vhost, make_database, start_process, s3_endpoint, images, tmp_path_factory):
    amqp_uri, _ = make_vhost("models")
    common = dict(AMQP_URI=amqp_uri, OUTBOX_RELAY_INTERVAL_SECONDS=1)
    ports = {name: free_port() for name in ("auth", "billing", "storage", "generation")}
    auth_db = make_database("models_auth")
    work = tmp_path_factory.mktemp("models")
    auth = start_process("auth", base_env(
        **common, AUTH_DATABASE_URL=auth_db, AUTH_METRICS_PORT=ports["auth"]))
    billing = start_process("billing-models", base_env(
        **common, BILLING_DATABASE_URL=make_database("models_billing"),
        BILLING_METRICS_PORT=ports["billing"]),
        command=procfile_commands()["billing"].replace("deploy/config/billing.yaml",
                                                       str(billing_config(work))))
    storage = start_process("storage", storage_env(
        common, make_database("models_storage"), ports["storage"], s3_endpoint, "models"))
    generation = start_process("generation", base_env(
        **common, GENERATION_DATABASE_URL=make_database("models_generation"),
        GENERATION_METRICS_PORT=ports["generation"],
        GENERATION_QUOTE_CACHE_SECONDS=0,
        GENERATION_PROVIDERS_FILE=providers_file(
            work,
            {"openai": {"type": "openai_images", "base_url": images.url, "api_key": KEY,
                        "model": "img-1", "timeout_s": 2, "region": "us",
                        "job_types": ["text-to-image"]},
             "local": {"type": "local", "region": "on-premises"},
             "spare": {"type": "local"}},
            {"text-to-image": ["openai", "local"], "image-to-image": ["local"],
             "image-to-video": ["local"]},
            retry={"attempts": 2, "base_delay_s": 0.05, "max_delay_s": 1})))
    procs = {"auth": auth, "billing": billing, "storage": storage, "generation": generation}
    with ready(amqp_uri, procs, ports, auth_db) as ready_stack:
        yield ready_stack


def test_models_lists_the_routed_providers_with_prices_and_regions(stack):
    models = {m["name"]: m for m in stack.rpc.generation.list_models()["items"]}
    assert set(models) == {"openai", "local"}  # "spare" is in no route
    assert models["openai"]["job_types"] == ["text-to-image"]
    assert models["openai"]["region"] == "us"
    assert [(p["job_type"], p["price"]) for p in models["openai"]["prices"]] == [
        ("text-to-image", 12)]  # 1024x1024: 4 areas at 3
    assert models["local"]["region"] == "on-premises"
    assert {p["job_type"]: p["price"] for p in models["local"]["prices"]} == {
        "text-to-image": 4, "image-to-image": 4, "image-to-video": 20}


def test_a_dry_run_with_and_without_a_model_gives_the_two_prices(stack):
    user = new_user(stack)
    plain = stack.rpc.generation.submit(user, TEXT, dry_run=True)
    named = stack.rpc.generation.submit(user, {**TEXT, "model": "openai"}, dry_run=True)
    assert (plain["price"], named["price"]) == (1, 3)
    assert named["breakdown"]["model"] == "openai"


def test_an_unknown_model_is_refused_before_any_hold(stack):
    user = new_user(stack)
    for model in ("nobody", "spare"):
        with pytest.raises(DomainError) as caught:
            stack.rpc.generation.submit(user, {**TEXT, "model": model})
        assert caught.value.code == "unknown_model"
    assert stack.rpc.billing.get_balance(user)["held"] == 0
    assert stack.rpc.generation.list_jobs(user)["items"] == []


def test_a_job_naming_a_model_runs_on_it_alone_and_pays_its_price(stack, images):
    user = new_user(stack)
    # local, though openai is first in the route
    before = len(images.requests)
    job = stack.rpc.generation.submit(user, {**TEXT, "model": "local", "seed": 3})
    assert (job["model"], job["price"]) == ("local", 1)
    done = finished(stack, user, job["id"])
    assert (done["status"], done["provider"], done["model"]) == ("succeeded", "local", "local")
    assert len(images.requests) == before  # openai never asked
    # openai, at its own price, on the vendor's API
    job = stack.rpc.generation.submit(user, {**TEXT, "model": "openai"})
    assert job["price"] == 3
    done = finished(stack, user, job["id"])
    assert (done["status"], done["provider"]) == ("succeeded", "openai"), done
    assert settled(stack, user)["available"] == 50 - 1 - 3


def test_a_named_model_that_fails_does_not_fail_over(stack, images):
    user = new_user(stack)
    images.mode = 500
    try:
        job = stack.rpc.generation.submit(user, {**TEXT, "model": "openai"})
        done = finished(stack, user, job["id"])
    finally:
        images.mode = "ok"
    assert done["status"] == "failed", done
    assert done["error"]["code"] == "provider_unavailable"
    assert done["provider"] is None  # local was not tried
    assert settled(stack, user)["available"] == 50  # the hold is released
