"""The generation service's shell, the nameko way: ``worker_factory`` with a
real (SQLite, migrated) session, the real settings, prompts and job rules,
and billing's real ``quote`` and ``list_prices`` RPCs on billing's real
configuration (deploy/config/billing.yaml). Only the provider run, storage
and the broker are stand-ins.
"""

from __future__ import annotations

import os
import threading
import uuid
from datetime import timedelta
from types import SimpleNamespace
from unittest.mock import MagicMock

import pytest
from nameko.testing.services import worker_factory

from services.billing.service import BillingService
from services.billing.settings import BillingSettings
from services.common import contracts
from services.common.config import CONFIG_DIR, load_config
from services.common.contracts.generation import DEFAULT_VIDEO_DURATION_S, JobState
from services.common.errors import DomainError
from services.common.ids import utcnow
from services.generation import runner
from services.generation.models import Job
from services.generation.prompts import Prompts
from services.generation.quotes import QuoteCache
from services.generation.service import GenerationService
from services.generation.settings import GenerationSettings
from tests.unit.events import Events


@pytest.fixture
def billing(monkeypatch):
    """Billing's RPCs as they answer with the shipped configuration."""
    for name in [n for n in os.environ if n.startswith("BILLING_PRICE")]:
        monkeypatch.delenv(name)
    settings = BillingSettings.from_config(load_config(CONFIG_DIR / "billing.yaml"))
    return worker_factory(BillingService, settings=settings)


@pytest.fixture
def events():
    return Events("generation")


@pytest.fixture
def service(db, billing, events):
    storage = MagicMock(name="storage")
    storage.get_source.return_value = {"url": "http://storage.invalid/source",
                                       "content_type": "image/png"}
    return worker_factory(
        GenerationService, db=db, dispatch=events, settings=GenerationSettings(lease_seconds=60),
        prompts=Prompts.from_config({}), quotes=QuoteCache(0),
        billing=SimpleNamespace(quote=billing.quote), storage=storage,
        run_slots=threading.BoundedSemaphore(1))


def published_price(billing, job_type: str) -> dict:
    return next(item for item in billing.list_prices()["job_types"] if item["type"] == job_type)


VIDEO = {"type": "image-to-video", "prompt": "waves", "source_image_id": str(uuid.uuid4())}


# ---------------------------------------------------------------- prices


def test_a_video_without_a_duration_is_quoted_the_published_default_price(service, billing):
    """The dry run (POST /v1/generations?dry_run=true) of a video that names no
    duration costs what the price list says such a video costs."""
    published = published_price(billing, "image-to-video")
    assert published["default_duration_s"] == DEFAULT_VIDEO_DURATION_S
    expected = max(published["minimum"],
                   published["credits_per_second"] * published["default_duration_s"])
    quote = service.submit(str(uuid.uuid4()), VIDEO, dry_run=True)
    assert quote["price"] == expected
    assert quote["breakdown"]["duration_s"] == published["default_duration_s"]


def test_a_video_without_a_duration_is_made_as_long_as_it_was_priced(service, billing, db):
    job = service.submit(str(uuid.uuid4()), VIDEO)
    assert job["params"]["duration_s"] == DEFAULT_VIDEO_DURATION_S
    assert job["price"] == service.submit(str(uuid.uuid4()), VIDEO, dry_run=True)["price"]


def test_a_named_duration_is_priced_and_kept(service, billing):
    published = published_price(billing, "image-to-video")
    quote = service.submit(str(uuid.uuid4()), {**VIDEO, "duration_s": 9}, dry_run=True)
    assert quote["price"] == max(published["minimum"], 9 * published["credits_per_second"])


def test_an_image_without_a_size_is_quoted_at_the_published_default_size(service, billing):
    published = published_price(billing, "text-to-image")
    quote = service.submit(str(uuid.uuid4()), {"type": "text-to-image", "prompt": "a fox"},
                           dry_run=True)
    assert quote["breakdown"]["size"] == published["default_size"]


# ---------------------------------------------------------------- the API


def test_submit_creates_a_queued_job_and_asks_billing_to_hold_its_price(service, events, db):
    user = str(uuid.uuid4())
    job = service.submit(user, {"type": "text-to-image", "prompt": "a fox", "size": "512x512"})
    assert (job["status"], job["price"], job["queue_position"]) == ("queued", 1, 1)
    [requested] = events.of("job_requested")
    assert (requested["job_id"], requested["price"]) == (job["id"], 1)
    assert db.get(Job, uuid.UUID(job["id"])).status == JobState.QUEUED


def test_a_malformed_user_id_is_the_callers_bug_not_a_missing_user(service):
    with pytest.raises(DomainError) as caught:
        service.submit("not-a-uuid", {"type": "text-to-image", "prompt": "a fox"})
    assert (caught.value.code, caught.value.status) == ("invalid_request", 400)


def test_a_malformed_job_id_is_not_found(service):
    with pytest.raises(DomainError) as caught:
        service.get_job(str(uuid.uuid4()), "not-a-uuid")
    assert (caught.value.code, caught.value.status) == ("not_found", 404)


def test_cancel_releases_the_job(service, events):
    user = str(uuid.uuid4())
    job = service.submit(user, {"type": "text-to-image", "prompt": "a fox"})
    cancelled = service.cancel_job(user, job["id"])
    assert cancelled["status"] == "cancelled"
    assert [e["job_id"] for e in events.of("job_cancelled")] == [job["id"]]


# ---------------------------------------------------------------- the saga


def billing_event(name: str, data: dict) -> dict:
    return contracts.load_event(f"billing.{name}", contracts.make_event(f"billing.{name}", data))


def reserve(service, job: dict, **extra) -> dict:
    event = billing_event("credits_reserved", {
        "job_id": job["id"], "user_id": str(uuid.uuid4()), "attempt": 1,
        "hold_id": str(uuid.uuid4()), "amount": job["price"], "plan": "free", "priority": 0,
        **extra})
    service.credits_reserved(event)
    return event


def test_reserved_credits_run_the_job_to_success(service, events, db, monkeypatch):
    outputs = [str(uuid.uuid4())]
    ran = []

    def run(spec, router, storage, progress, timeout, outages, on_attempt):
        ran.append(spec.id)
        progress(0.5, "rendering")
        return "local", outputs

    monkeypatch.setattr(runner, "run", run)
    user = str(uuid.uuid4())
    job = service.submit(user, {"type": "text-to-image", "prompt": "a fox"})
    event = reserve(service, job)
    done = service.get_job(user, job["id"])
    assert ran == [job["id"]]
    assert (done["status"], done["outputs"], done["provider"]) == ("succeeded", outputs, "local")
    assert [e["job_id"] for e in events.of("job_succeeded")] == [job["id"]]
    service.credits_reserved(event)  # a second delivery changes nothing
    assert ran == [job["id"]] and len(events.of("job_succeeded")) == 1


def test_a_job_failure_fails_the_job_and_releases_its_hold(service, events, db, monkeypatch):
    def run(*args):
        raise runner.JobFailure("provider_unavailable", "every provider failed")

    monkeypatch.setattr(runner, "run", run)
    job = service.submit(str(uuid.uuid4()), {"type": "text-to-image", "prompt": "a fox"})
    reserve(service, job)
    row = db.get(Job, uuid.UUID(job["id"]), populate_existing=True)
    assert (row.status, row.error_code, row.lease_token) == ("failed", "provider_unavailable",
                                                             None)
    [failed] = events.of("job_failed")
    assert (failed["job_id"], failed["reason"]) == (job["id"], "provider_unavailable")


def test_a_reservation_whose_run_met_an_outage_runs_on_redelivery(service, monkeypatch):
    """The delivery that claimed the event committed, then failed as the run
    began (the database went away): the same event delivered again runs the
    job, although it was claimed."""
    ran = []
    monkeypatch.setattr(runner, "run", lambda spec, *args: (ran.append(spec.id), ("local", []))[1])
    job = service.submit(str(uuid.uuid4()), {"type": "text-to-image", "prompt": "a fox"})
    event = billing_event("credits_reserved", {
        "job_id": job["id"], "user_id": str(uuid.uuid4()), "attempt": 1,
        "hold_id": str(uuid.uuid4()), "amount": job["price"], "plan": "free", "priority": 0})
    real_run_next = service._run_next
    with monkeypatch.context() as patched:
        patched.setattr(service, "_run_next", MagicMock(side_effect=OSError("database gone")))
        with pytest.raises(OSError):
            service.credits_reserved(event)
    assert ran == []
    assert service._run_next == real_run_next
    service.credits_reserved(event)  # the retry of the same message
    assert ran == [job["id"]]


def test_insufficient_credits_reject_the_job(service, db):
    job = service.submit(str(uuid.uuid4()), {"type": "text-to-image", "prompt": "a fox"})
    service.credits_insufficient(billing_event("credits_insufficient", {
        "job_id": job["id"], "user_id": str(uuid.uuid4()), "attempt": 1, "required": 4,
        "available": 1}))
    row = db.get(Job, uuid.UUID(job["id"]), populate_existing=True)
    assert (row.status, row.error_code) == ("rejected", "insufficient_credits")


def test_recover_requeues_a_job_whose_worker_stopped(service, events, db, monkeypatch):
    monkeypatch.setattr(service, "_run_next", lambda: None)  # leave it reserved
    job = service.submit(str(uuid.uuid4()), {"type": "text-to-image", "prompt": "a fox"})
    reserve(service, job)
    row = db.get(Job, uuid.UUID(job["id"]), populate_existing=True)
    row.status, row.lease_token = JobState.RUNNING, "another worker"
    row.lease_expires_at = utcnow() - timedelta(seconds=1)
    db.commit()
    service.recover()
    row = db.get(Job, uuid.UUID(job["id"]), populate_existing=True)
    assert (row.status, row.stage, row.lease_token) == ("reserved", "requeued", None)
    assert [e["job_id"] for e in events.of("job_requeued")] == [job["id"]]


# ---------------------------------------------------------------- output URLs


def signed(object_id: str) -> dict:
    return {"id": object_id, "url": f"http://files.invalid/{object_id}?sig=x",
            "url_expires_at": "2030-01-01T00:05:00+00:00"}


def succeeded_jobs(service, monkeypatch, user: str, outputs: list[list[str]]) -> list[dict]:
    made = iter(outputs)
    monkeypatch.setattr(runner, "run", lambda *args: ("local", next(made)))
    jobs = []
    for _ in outputs:
        job = service.submit(user, {"type": "text-to-image", "prompt": "a fox"})
        reserve(service, job)
        jobs.append(job)
    return jobs


def test_a_succeeded_job_carries_its_outputs_signed_urls(service, monkeypatch):
    user, kept, gone = str(uuid.uuid4()), str(uuid.uuid4()), str(uuid.uuid4())
    [job] = succeeded_jobs(service, monkeypatch, user, [[kept, gone]])
    sign = service.storage.sign_outputs.call_async
    sign.return_value.result.return_value = {"items": [signed(kept)]}  # `gone` was deleted
    done = service.get_job(user, job["id"])
    assert done["output_urls"] == [signed(kept)]
    [((asked_for, payload), _)] = sign.call_args_list
    assert (asked_for, payload) == (user, {"object_ids": [kept, gone]})  # storage checks the owner
    queued = service.submit(user, {"type": "text-to-image", "prompt": "a hare"})
    assert queued["output_urls"] == [] and sign.call_count == 1  # nothing to sign


def test_a_page_of_jobs_is_signed_with_one_storage_call(service, monkeypatch):
    user = str(uuid.uuid4())
    outputs = [[str(uuid.uuid4())], [str(uuid.uuid4()), str(uuid.uuid4())]]
    succeeded_jobs(service, monkeypatch, user, outputs)
    monkeypatch.setattr(service, "_run_next", lambda: None)
    service.submit(user, {"type": "text-to-image", "prompt": "still queued"})
    sign = service.storage.sign_outputs.call_async
    sign.reset_mock()
    sign.return_value.result.return_value = {"items": [signed(o) for o in sum(outputs, [])]}
    page = service.list_jobs(user, {})
    assert sign.call_count == 1
    assert sorted(sign.call_args.args[1]["object_ids"]) == sorted(sum(outputs, []))
    by_status = {}
    for job in page["items"]:
        by_status.setdefault(job["status"], []).append(
            [u["id"] for u in job["output_urls"]] == job["outputs"])
    assert by_status == {"succeeded": [True, True], "queued": [True]}  # queued: [] == []


def test_output_urls_are_left_out_when_storage_does_not_answer(service, monkeypatch):
    from services.common.bounded_rpc import RpcTimeout

    user = str(uuid.uuid4())
    [job] = succeeded_jobs(service, monkeypatch, user, [[str(uuid.uuid4())]])
    service.storage.sign_outputs.call_async.return_value.result.side_effect = RpcTimeout(
        "storage", "sign_outputs", 5)
    done = service.get_job(user, job["id"])
    assert done["status"] == "succeeded" and "output_urls" not in done
