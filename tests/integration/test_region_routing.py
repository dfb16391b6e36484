"""Region-aware routing across real services: privacy, generation, billing,
auth and storage, each started by its Procfile command on one RabbitMQ vhost
and their own PostgreSQL databases, with two OpenAI-compatible fakes on
loopback (tests/fakes/providers.py) as the vendors.

The providers file puts ``east`` in region ``cn`` and ``west`` in ``us``;
text-to-image routes east first, then west; image-to-video has only ``video``
(``cn``). A user refuses ``cn`` through ``privacy.update_consents`` (what
``PUT /v1/privacy/consents`` calls); the ``privacy.consent_changed`` event
brings it to generation, whose routes then skip ``cn``: text-to-image runs on
west alone, and image-to-video is refused at submit with 409
``no_provider_for_region`` before any credit is held.
"""

from __future__ import annotations

import uuid
from types import SimpleNamespace

import pytest
from nameko.standalone.rpc import ClusterRpcProxy
from sqlalchemy import select

from services.common.db import make_engine
from services.common.errors import DomainError
from services.generation.models import RefusedRegions
from tests.conftest import base_env, free_port, providers_file, wait_for
from tests.fakes.providers import FakeOpenAIImages
from tests.integration.probe_service import wait_consuming
from tests.integration.test_generation_service import finished, new_user

pytestmark = pytest.mark.integration

KEY = "sk-region-test"


@pytest.fixture(scope="module")
def stack(make_vhost, make_database, start_process, s3_endpoint, tmp_path_factory):
    amqp_uri, _ = make_vhost("regions")
    names = ("auth", "billing", "storage", "privacy", "generation")
    ports = {name: free_port() for name in names}
    auth_db, generation_db = make_database("reg_auth"), make_database("reg_generation")
    with FakeOpenAIImages(api_key=KEY) as east, FakeOpenAIImages(api_key=KEY) as west:
        env = base_env(
            AMQP_URI=amqp_uri, OUTBOX_RELAY_INTERVAL_SECONDS=1,
            AUTH_DATABASE_URL=auth_db, AUTH_METRICS_PORT=ports["auth"],
            BILLING_DATABASE_URL=make_database("reg_billing"),
            BILLING_METRICS_PORT=ports["billing"],
            STORAGE_DATABASE_URL=make_database("reg_storage"),
            STORAGE_METRICS_PORT=ports["storage"], STORAGE_BACKEND="s3",
            S3_ENDPOINT=s3_endpoint.url, S3_ACCESS_KEY=s3_endpoint.access_key,
            S3_SECRET_KEY=s3_endpoint.secret_key, S3_BUCKET=s3_endpoint.bucket_name("regions"),
            S3_REGION=s3_endpoint.region,
            PRIVACY_DATABASE_URL=make_database("reg_privacy"),
            PRIVACY_METRICS_PORT=ports["privacy"],
            MAIL_SECRETS_KEY="integration-test-mail-secrets-key",
            GENERATION_DATABASE_URL=generation_db,
            GENERATION_METRICS_PORT=ports["generation"],
            GENERATION_PROVIDERS_FILE=providers_file(
                tmp_path_factory.mktemp("providers"),
                {"east": {"type": "openai_images", "base_url": east.url, "api_key": KEY,
                          "region": "cn", "timeout_s": 5},
                 "west": {"type": "openai_images", "base_url": west.url, "api_key": KEY,
                          "region": "us", "timeout_s": 5},
                 "video": {"type": "local", "region": "cn"}},
                {"text-to-image": ["east", "west"], "image-to-video": ["video"]}),
        )
        processes = {name: start_process(name, env) for name in names}
        for name, port in ports.items():
            processes[name].wait_ready(f"http://127.0.0.1:{port}/readyz")
        wait_consuming(amqp_uri, "evt-privacy-consent_changed--generation.privacy_consent_changed",
                       processes["generation"])
        wait_consuming(amqp_uri, "evt-billing-credits_reserved--generation.credits_reserved",
                       processes["generation"])
        wait_consuming(amqp_uri, "evt-generation-job_requested--billing.job_requested",
                       processes["billing"])
        engine, generation = make_engine(auth_db), make_engine(generation_db)
        with ClusterRpcProxy({"AMQP_URI": amqp_uri}, timeout=60) as rpc:
            for service in names:
                wait_for(lambda s=service: getattr(rpc, s).ping(), 30, 0.2, f"{service} RPC")
            yield SimpleNamespace(rpc=rpc, auth_db=engine, generation_db=generation,
                                  east=east, west=west)
        engine.dispose()
        generation.dispose()


def refuse(stack, user: str, regions: list[str]) -> None:
    """What PUT /v1/privacy/consents does; returns once generation has the event."""
    consents = stack.rpc.privacy.update_consents(user, {"refused_regions": regions}, "api")
    assert consents["refused_regions"] == sorted(set(regions))

    def applied() -> bool:
        with stack.generation_db.connect() as conn:
            row = conn.execute(select(RefusedRegions.regions).where(
                RefusedRegions.user_id == uuid.UUID(user))).first()
        return row is not None and row.regions == sorted(set(regions))

    wait_for(applied, 30, 0.1, "generation to apply the consent event")


def test_a_refused_region_is_skipped_and_the_allowed_vendor_runs_the_job(stack):
    user = new_user(stack)
    job = stack.rpc.generation.submit(user, {"type": "text-to-image", "prompt": "a fox",
                                             "size": "512x512"})
    assert finished(stack, user, job["id"])["provider"] == "east"  # nothing refused: the primary
    east_calls = len(stack.east.requests)

    refuse(stack, user, ["cn"])
    assert stack.rpc.privacy.get_consents(user)["refused_regions"] == ["cn"]
    job = stack.rpc.generation.submit(user, {"type": "text-to-image", "prompt": "a fox",
                                             "size": "512x512"})
    done = finished(stack, user, job["id"])
    assert (done["status"], done["provider"]) == ("succeeded", "west")
    assert len(stack.east.requests) == east_calls  # not one request went to the refused region
    assert stack.west.requests_to("/v1/images/generations", "POST")
    # the disclosure log agrees: this job's data went to west (us) only
    log = stack.rpc.generation.list_disclosures(user)["items"]
    assert {(d["provider"], d["region"]) for d in log if d["job_id"] == job["id"]} == {
        ("west", "us")}

    refuse(stack, user, [])  # allowed again: the route as configured
    job = stack.rpc.generation.submit(user, {"type": "text-to-image", "prompt": "a fox",
                                             "size": "512x512"})
    assert finished(stack, user, job["id"])["provider"] == "east"


def test_no_vendor_left_is_409_before_any_credit_is_held(stack):
    user = new_user(stack)
    refuse(stack, user, ["us", "cn"])
    for request in ({"type": "text-to-image", "prompt": "a fox"},
                    {"type": "image-to-video", "prompt": "waves",
                     "source_image_id": str(uuid.uuid4())}):
        with pytest.raises(DomainError) as info:
            stack.rpc.generation.submit(user, request, idempotency_key=str(uuid.uuid4()))
        assert (info.value.code, info.value.status) == ("no_provider_for_region", 409)
    assert stack.rpc.generation.list_jobs(user)["items"] == []
    balance = stack.rpc.billing.get_balance(user)
    assert (balance["available"], balance["held"]) == (50, 0)
    # a user who refuses nothing is not affected by another's refusal
    other = new_user(stack)
    assert stack.rpc.generation.submit(other, {"type": "text-to-image", "prompt": "a fox"},
                                       dry_run=True)["price"] >= 1
