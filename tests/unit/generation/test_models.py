"""Models (issue 20): ``GET /v1/models`` through ``generation.list_models``,
``POST /v1/generations`` with ``model`` (one provider, no failover,
``unknown_model`` before any credit is held), and billing's per-model prices
(``BILLING.PRICES.<type>.models``), the dry run quoting the right one."""

from __future__ import annotations

import threading
import uuid
from types import SimpleNamespace
from unittest.mock import MagicMock

import pytest
from nameko.testing.services import worker_factory

from services.billing import pricing
from services.billing.service import BillingService
from services.billing.settings import DEFAULT_PRICES, BillingSettings
from services.common.contracts import billing as bc
from services.common.contracts import generation as c
from services.common.contracts import load_rpc
from services.common.errors import DomainError
from services.generation import runner
from services.generation.models import Job
from services.generation.prompts import Prompts
from services.generation.providers.base import TransientProviderError
from services.generation.providers.router import BreakerPolicy, RetryPolicy, Router
from services.generation.quotes import QuoteCache, default_pricing
from services.generation.quotes import pricing as job_pricing
from services.generation.service import GenerationService
from services.generation.settings import GenerationSettings
from tests.unit.events import Events
from tests.unit.generation.test_router import REQUEST, Clock, Scripted

TEXT = {"type": "text-to-image", "prompt": "a fox"}
# seedream's text-to-image images cost twice the type's price (2 credits per area)
OVERRIDES = {"text-to-image": {"seedream": {"credits_per_area": 2, "minimum": 2}},
             "image-to-video": {"wan": {"credits_per_second": 8}}}


def prices_with_overrides() -> dict:
    return {t: {**rule, **({"models": OVERRIDES[t]} if t in OVERRIDES else {})}
            for t, rule in DEFAULT_PRICES.items()}


def billing_settings() -> BillingSettings:
    return BillingSettings.from_config({"BILLING": {"PRICES": prices_with_overrides()}})


# ---------------------------------------------------------------- billing's price list


def quote(settings: BillingSettings, **payload) -> dict:
    return pricing.quote(settings.prices, load_rpc(bc.Quote, payload))


def test_a_model_override_prices_its_jobs_and_other_models_pay_the_type_price():
    settings = billing_settings()
    assert quote(settings, type="text-to-image")["price"] == 4
    seedream = quote(settings, type="text-to-image", model="seedream")
    assert seedream["price"] == 8
    assert seedream["breakdown"]["credits_per_unit"] == 2
    assert seedream["breakdown"]["model"] == "seedream"
    assert quote(settings, type="text-to-image", model="qwen")["price"] == 4
    # the minimum is overridden too: one 512x512 image costs 2 on seedream
    assert quote(settings, type="text-to-image", size="512x512", model="seedream")["price"] == 2
    assert quote(settings, type="image-to-video", model="wan")["price"] == 32
    assert quote(settings, type="image-to-video", model="seedream")["price"] == 20


def test_the_published_price_list_is_unchanged_by_overrides():
    listed = pricing.prices(billing_settings())["job_types"]
    assert all("models" not in rule for rule in listed)
    assert pricing.prices(billing_settings()) == pricing.prices(BillingSettings())


@pytest.mark.parametrize("override, message", [
    ({"unit": "second"}, "not unit"),
    ({"default_size": "512x512"}, "not default_size"),
    ({"credits_per_area": None}, "credits_per_area"),
])
def test_an_override_may_change_amounts_only(override, message):
    raw = prices_with_overrides()
    raw["text-to-image"]["models"] = {"seedream": override}
    with pytest.raises(ValueError, match=message):
        BillingSettings.from_config({"BILLING": {"PRICES": raw}})


def test_generation_asks_billing_for_the_model_it_names():
    loaded = load_rpc(c.SubmitJob, {**TEXT, "model": "seedream"})
    assert job_pricing(loaded, {})["model"] == "seedream"
    assert "model" not in job_pricing(load_rpc(c.SubmitJob, TEXT), {})
    assert default_pricing("image-to-video", "wan") == {"type": "image-to-video",
                                                        "duration_s": 4, "model": "wan"}


# ---------------------------------------------------------------- the router


def two_routes(*providers, clock=None):
    clock = clock or Clock()
    names = [p.name for p in providers]
    return Router({p.name: p for p in providers},
                  {"text-to-image": names, "image-to-video": names[-1:]},
                  RetryPolicy(2, 0.5, 3.0), BreakerPolicy(5, 60.0), clock=clock,
                  sleep=clock.sleep, regions={"seedream": "cn"})


def test_models_are_the_providers_in_a_route_with_their_job_types():
    idle = Scripted("idle")
    r = Router({"seedream": Scripted("seedream"), "wan": Scripted("wan"), "idle": idle},
               {"text-to-image": ["seedream", "wan"], "image-to-video": ["wan"]})
    assert r.models() == {"seedream": ("text-to-image",),
                          "wan": ("text-to-image", "image-to-video")}


def test_a_named_model_runs_alone_without_failover():
    seedream = Scripted("seedream", TransientProviderError("provider_timeout"),
                        TransientProviderError("provider_timeout"))
    wan = Scripted("wan")
    r = two_routes(seedream, wan)
    with pytest.raises(TransientProviderError) as caught:
        r.run(REQUEST, model="seedream")
    assert caught.value.code == "provider_unavailable"
    assert (seedream.calls, wan.calls) == (2, 0)  # its retries, then no other vendor
    routed = r.run(REQUEST, model="wan")
    assert routed.provider == "wan"


def test_a_model_outside_the_route_is_unknown_at_run_time():
    r = two_routes(Scripted("seedream"), Scripted("wan"))
    video = REQUEST.__class__("image-to-video", "waves")
    with pytest.raises(Exception) as caught:
        r.run(video, model="seedream")
    assert caught.value.code == "unknown_model"


# ---------------------------------------------------------------- the service


@pytest.fixture
def events():
    return Events("generation")


@pytest.fixture
def billing():
    return worker_factory(BillingService, settings=billing_settings())


@pytest.fixture
def service(db, billing, events):
    r = two_routes(Scripted("seedream"), Scripted("wan"))
    storage = MagicMock(name="storage")
    storage.get_source.return_value = {"url": "http://storage.invalid/source",
                                       "content_type": "image/png"}
    return worker_factory(
        GenerationService, db=db, dispatch=events, settings=GenerationSettings(lease_seconds=60),
        prompts=Prompts.from_config({}), quotes=QuoteCache(0), router=r,
        billing=SimpleNamespace(quote=billing.quote), storage=storage,
        run_slots=threading.BoundedSemaphore(1))


def test_list_models_gives_job_types_region_and_each_types_price(service):
    answer = service.list_models()
    assert c.ModelList().validate(answer) == {}
    by_name = {m["name"]: m for m in answer["items"]}
    assert set(by_name) == {"seedream", "wan"}
    assert by_name["seedream"]["region"] == "cn" and by_name["wan"]["region"] is None
    assert by_name["seedream"]["job_types"] == ["text-to-image"]
    assert [(p["job_type"], p["price"]) for p in by_name["seedream"]["prices"]] == [
        ("text-to-image", 8)]
    assert [(p["job_type"], p["price"]) for p in by_name["wan"]["prices"]] == [
        ("text-to-image", 4), ("image-to-video", 32)]


def test_a_dry_run_quotes_the_models_price(service):
    user = str(uuid.uuid4())
    assert service.submit(user, TEXT, dry_run=True)["price"] == 4
    assert service.submit(user, {**TEXT, "model": "seedream"}, dry_run=True)["price"] == 8
    assert service.submit(user, {**TEXT, "model": "wan"}, dry_run=True)["price"] == 4


@pytest.mark.parametrize("model", ["nobody", "idle"])
def test_an_unknown_model_is_400_before_anything_is_held(service, events, db, model):
    with pytest.raises(DomainError) as caught:
        service.submit(str(uuid.uuid4()), {**TEXT, "model": model})
    assert (caught.value.code, caught.value.status) == ("unknown_model", 400)
    assert events.of("job_requested") == [] and db.query(Job).count() == 0


def test_a_model_that_cannot_run_the_job_type_is_unknown(service, events):
    video = {"type": "image-to-video", "prompt": "waves", "source_image_id": str(uuid.uuid4()),
             "model": "seedream"}
    with pytest.raises(DomainError) as caught:
        service.submit(str(uuid.uuid4()), video, dry_run=True)
    assert caught.value.code == "unknown_model"


def test_the_job_records_its_model_holds_its_price_and_runs_on_it(service, events,
                                                                   monkeypatch):
    seen = []

    def run(spec, router, storage, progress, timeout, outages):
        seen.append(spec.params.get("model"))
        return "seedream", [str(uuid.uuid4())]

    monkeypatch.setattr(runner, "run", run)
    user = str(uuid.uuid4())
    job = service.submit(user, {**TEXT, "model": "seedream"})
    assert (job["model"], job["price"]) == ("seedream", 8)
    [requested] = events.of("job_requested")
    assert requested["price"] == 8  # what billing holds
    plain = service.submit(user, TEXT)
    assert plain["model"] is None and "model" not in plain["params"]
    assert service.get_job(user, job["id"])["model"] == "seedream"


def test_the_runner_passes_the_model_to_the_router():
    calls = []

    class Recording:
        def run(self, request, progress=None, on_attempt=None, model=None,
                refused_regions=frozenset()):
            calls.append(model)
            raise TransientProviderError("provider_timeout")

    spec = runner.JobSpec(str(uuid.uuid4()), str(uuid.uuid4()), "text-to-image", "a fox", None,
                          {"n": 1, "size": "512x512", "model": "seedream"}, ())
    with pytest.raises(runner.JobFailure):
        runner.run(spec, Recording(), MagicMock(), lambda f, s: None, 5)
    assert calls == ["seedream"]
