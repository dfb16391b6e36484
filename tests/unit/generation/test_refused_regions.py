"""Region-aware routing: generation's copy of the regions a user refuses
(newest event wins; an old event without them changes nothing), the router
skipping providers there, submit's 409 ``no_provider_for_region`` before any
credit is held, and the export and erasure of the copy."""

from __future__ import annotations

import threading
import uuid
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from unittest.mock import MagicMock

import pytest
from nameko.testing.services import worker_factory

from services.common.errors import DomainError
from services.generation import privacy as privacy_data
from services.generation.models import Job, RefusedRegions
from services.generation.prompts import Prompts
from services.generation.providers.base import PermanentProviderError, ProviderRequest
from services.generation.providers.router import BreakerPolicy, RetryPolicy, Router
from services.generation.quotes import QuoteCache
from services.generation.service import GenerationService
from services.generation.settings import GenerationSettings
from tests.unit.events import Events
from tests.unit.generation.test_router import Scripted

NOW = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)
SETTINGS = GenerationSettings()
REQUEST = ProviderRequest("text-to-image", "a lighthouse", seed=1)


def routed(regions: dict, route=("seedream", "qwen", "flux"), **routes) -> tuple[Router, dict]:
    providers = {name: Scripted(name) for name in {*route, *regions,
                                                    *(n for r in routes.values() for n in r)}}
    router = Router(providers, {"text-to-image": list(route), **routes},
                    RetryPolicy(1, base_delay_s=0, max_delay_s=0), BreakerPolicy(5, 60.0),
                    sleep=lambda s: None, regions=regions)
    return router, providers


# ---------------------------------------------------------------- the router


def test_the_route_skips_providers_in_refused_regions():
    router, _ = routed({"seedream": "cn", "qwen": "CN", "flux": "us"})
    assert router.route_for("text-to-image") == ("seedream", "qwen", "flux")
    assert router.route_for("text-to-image", {"cn"}) == ("flux",)  # case-insensitive
    assert router.route_for("text-to-image", {"us"}) == ("seedream", "qwen")
    assert router.route_for("text-to-image", {"cn", "us"}) == ()
    assert router.route_for("image-to-video", {"cn"}) == ()


def test_a_provider_without_a_region_is_never_skipped():
    router, _ = routed({"seedream": "cn"}, route=("seedream", "local"))
    assert router.route_for("text-to-image", {"cn", "us", "on-premises"}) == ("local",)


def test_a_run_goes_to_the_first_allowed_provider_only():
    router, providers = routed({"seedream": "cn", "qwen": "cn", "flux": "us"})
    result = router.run(REQUEST, refused_regions=frozenset({"cn"}))
    assert result.provider == "flux"
    assert [a.provider for a in result.attempts] == ["flux"]
    assert (providers["seedream"].calls, providers["qwen"].calls) == (0, 0)
    assert router.run(REQUEST).provider == "seedream"  # nothing refused: the route as is


def test_a_run_with_every_provider_refused_fails_permanently_without_a_call():
    router, providers = routed({"seedream": "cn", "qwen": "cn", "flux": "us"})
    with pytest.raises(PermanentProviderError) as info:
        router.run(REQUEST, refused_regions=frozenset({"cn", "us"}))
    assert info.value.code == "no_provider_for_region"
    assert sum(p.calls for p in providers.values()) == 0


# ---------------------------------------------------------------- the copy of the consent


def test_the_newest_event_wins_and_an_event_without_regions_changes_nothing(db):
    user = uuid.uuid4()
    assert privacy_data.refused_regions(db, user) == frozenset()
    assert privacy_data.apply_refused_regions(db, user, ["us", "cn", "cn"], NOW)
    db.commit()
    assert privacy_data.refused_regions(db, user) == {"cn", "us"}
    assert db.get(RefusedRegions, user).regions == ["cn", "us"]
    assert not privacy_data.apply_refused_regions(db, user, [], NOW - timedelta(seconds=1))
    assert not privacy_data.apply_refused_regions(db, user, None, NOW + timedelta(seconds=1))
    assert privacy_data.refused_regions(db, user) == {"cn", "us"}
    assert privacy_data.apply_refused_regions(db, user, [], NOW + timedelta(seconds=2))
    db.commit()
    assert privacy_data.refused_regions(db, user) == frozenset()


def test_submit_check_answers_409_only_when_no_provider_is_left(db):
    user = uuid.uuid4()
    router, _ = routed({"seedream": "cn", "qwen": "cn", "flux": "us"})
    privacy_data.check_route_allowed(db, router, user, "text-to-image")  # nothing refused
    privacy_data.apply_refused_regions(db, user, ["cn"], NOW)
    db.commit()
    privacy_data.check_route_allowed(db, router, user, "text-to-image")  # flux is left
    privacy_data.apply_refused_regions(db, user, ["cn", "us"], NOW + timedelta(seconds=1))
    db.commit()
    with pytest.raises(DomainError) as info:
        privacy_data.check_route_allowed(db, router, user, "text-to-image")
    assert (info.value.status, info.value.code) == (409, "no_provider_for_region")
    # a job type with no route at all is not this check's to refuse
    privacy_data.check_route_allowed(db, router, user, "image-to-video")


def test_the_export_holds_the_refused_regions_and_erasure_removes_them(db):
    user = uuid.uuid4()
    privacy_data.apply_refused_regions(db, user, ["cn"], NOW)
    db.commit()
    assert privacy_data.export(db, SETTINGS, user)["refused_regions"] == ["cn"]
    assert privacy_data.erase(db, SETTINGS, user, NOW).tables["refused_regions"] == 1
    db.commit()
    assert privacy_data.refused_regions(db, user) == frozenset()
    assert privacy_data.export(db, SETTINGS, user)["refused_regions"] == []


# ---------------------------------------------------------------- the service


@pytest.fixture
def events():
    return Events("generation")


@pytest.fixture
def service(db, events):
    router, _ = routed({"seedream": "cn", "qwen": "cn", "flux": "us"})
    auth = MagicMock(name="auth")
    auth.get_user.return_value = {"email_verified": True}
    quote = MagicMock(return_value={"price": 2, "currency": "credits"})
    return worker_factory(
        GenerationService, db=db, dispatch=events, settings=GenerationSettings(lease_seconds=60),
        prompts=Prompts.from_config({}), quotes=QuoteCache(0), router=router,
        billing=SimpleNamespace(quote=quote), storage=MagicMock(name="storage"),
        run_slots=threading.BoundedSemaphore(1))


def consent_event(user: str, regions, at=NOW) -> dict:
    event = {"event_id": str(uuid.uuid4()), "occurred_at": at, "version": 1, "user_id": user,
             "marketing_email": False, "analytics": False, "policy_version": None}
    if regions is not None:
        event["refused_regions"] = regions
    return event


def test_submit_refuses_with_409_before_any_credit_is_held(service, events, db):
    user = str(uuid.uuid4())
    service.privacy_consent_changed(consent_event(user, ["cn", "us"]))
    service.privacy_consent_changed(consent_event(user, None, NOW + timedelta(seconds=1)))
    for dry_run in (True, False):
        with pytest.raises(DomainError) as info:
            service.submit(user, {"type": "text-to-image", "prompt": "a fox"}, dry_run=dry_run)
        assert (info.value.status, info.value.code) == (409, "no_provider_for_region")
    assert db.query(Job).count() == 0
    assert events.of("job_requested") == [] and service.billing.quote.call_count == 0
    # allowing one region again lets the job in
    service.privacy_consent_changed(consent_event(user, ["cn"], NOW + timedelta(seconds=2)))
    job = service.submit(user, {"type": "text-to-image", "prompt": "a fox"})
    assert job["status"] == "queued" and len(events.of("job_requested")) == 1


def test_a_named_model_in_a_refused_region_is_refused_and_an_allowed_one_runs_alone(db):
    user = uuid.uuid4()
    router, providers = routed({"seedream": "cn", "qwen": "cn", "flux": "us"})
    privacy_data.apply_refused_regions(db, user, ["cn"], NOW)
    db.commit()
    privacy_data.check_route_allowed(db, router, user, "text-to-image", "flux")
    with pytest.raises(DomainError) as info:
        privacy_data.check_route_allowed(db, router, user, "text-to-image", "qwen")
    assert (info.value.status, info.value.code) == (409, "no_provider_for_region")
    assert "qwen" in info.value.message
    with pytest.raises(PermanentProviderError) as refused:
        router.run(REQUEST, model="seedream", refused_regions=frozenset({"cn"}))
    assert refused.value.code == "no_provider_for_region"
    result = router.run(REQUEST, model="flux", refused_regions=frozenset({"cn"}))
    assert [a.provider for a in result.attempts] == ["flux"]
    assert (providers["seedream"].calls, providers["qwen"].calls) == (0, 0)
    with pytest.raises(PermanentProviderError) as unknown:
        router.run(REQUEST, model="nope", refused_regions=frozenset({"cn"}))
    assert unknown.value.code == "unknown_model"
