"""The disclosure log across real services: jobs submitted over RPC (as the
gateway submits them) run through a vendor's fake API over loopback
(tests/fakes/providers.py FakeOpenAIImages, configured by a providers file),
and every request that left for a vendor is a row of the caller's log:
listed by ``generation.list_disclosures`` (what GET /v1/privacy/disclosures
calls), newest first, exported, erased.

Routes: text-to-image tries ``vendor`` (region us), then ``backup`` (region
eu), one try each.
"""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from types import SimpleNamespace

import pytest
from nameko.standalone.rpc import ClusterRpcProxy
from sqlalchemy.orm import Session

from services.auth.models import User
from services.common.db import make_engine
from services.generation import privacy as privacy_data
from services.generation.settings import GenerationSettings
from tests.conftest import base_env, free_port, providers_file, wait_for
from tests.fakes.providers import FakeOpenAIImages
from tests.integration.probe_service import wait_consuming

pytestmark = pytest.mark.integration

KEY = "sk-vendor-key"


@pytest.fixture(scope="module")
def vendors():
    with FakeOpenAIImages(api_key=KEY) as vendor, FakeOpenAIImages(api_key=KEY) as backup:
        yield SimpleNamespace(vendor=vendor, backup=backup)


@pytest.fixture(scope="module")
def stack(make_vhost, make_database, start_process, s3_endpoint, vendors, tmp_path_factory):
    amqp_uri, _ = make_vhost("disclosures")
    common = dict(AMQP_URI=amqp_uri, OUTBOX_RELAY_INTERVAL_SECONDS=1)
    ports = {name: free_port() for name in ("auth", "billing", "storage", "generation")}
    auth_db, generation_db = make_database("disc_auth"), make_database("disc_generation")
    procs = {
        "auth": start_process("auth", base_env(
            **common, AUTH_DATABASE_URL=auth_db, AUTH_METRICS_PORT=ports["auth"])),
        "billing": start_process("billing", base_env(
            **common, BILLING_DATABASE_URL=make_database("disc_billing"),
            BILLING_METRICS_PORT=ports["billing"])),
        "storage": start_process("storage", base_env(
            **common, STORAGE_DATABASE_URL=make_database("disc_storage"),
            STORAGE_METRICS_PORT=ports["storage"], STORAGE_BACKEND="s3",
            S3_ENDPOINT=s3_endpoint.url, S3_ACCESS_KEY=s3_endpoint.access_key,
            S3_SECRET_KEY=s3_endpoint.secret_key,
            S3_BUCKET=s3_endpoint.bucket_name("disclosures"), S3_REGION=s3_endpoint.region)),
        "generation": start_process("generation", base_env(
            **common, GENERATION_DATABASE_URL=generation_db,
            GENERATION_METRICS_PORT=ports["generation"],
            GENERATION_PROVIDERS_FILE=providers_file(
                tmp_path_factory.mktemp("providers"),
                {"vendor": {"type": "openai_images", "base_url": vendors.vendor.url,
                            "api_key": KEY, "model": "img-1", "region": "us", "timeout_s": 5},
                 "backup": {"type": "openai_images", "base_url": vendors.backup.url,
                            "api_key": KEY, "model": "img-1", "region": "eu", "timeout_s": 5},
                 "local": {"type": "local"}},
                {"text-to-image": ["vendor", "backup"], "image-to-image": ["local"]},
                retry={"attempts": 1, "base_delay_s": 0.05, "max_delay_s": 1},
                breaker={"failures": 100, "cooldown_s": 1})))}
    for name, proc in procs.items():
        proc.wait_ready(f"http://127.0.0.1:{ports[name]}/readyz")
    wait_consuming(amqp_uri, "evt-billing-credits_reserved--generation.credits_reserved",
                   procs["generation"])
    wait_consuming(amqp_uri, "evt-generation-job_requested--billing.job_requested",
                   procs["billing"])
    with ClusterRpcProxy({"AMQP_URI": amqp_uri}, timeout=60) as rpc:
        for service in ("auth", "billing", "storage", "generation"):
            wait_for(lambda s=service: getattr(rpc, s).ping(), 30, 0.2, f"{service} RPC")
        engines = SimpleNamespace(auth=make_engine(auth_db), generation=make_engine(generation_db))
        yield SimpleNamespace(rpc=rpc, db=engines)
        engines.auth.dispose()
        engines.generation.dispose()


def new_user(stack) -> str:
    user, now = uuid.uuid4(), datetime.now(UTC)
    with stack.db.auth.begin() as conn:
        conn.execute(User.__table__.insert().values(
            id=user, email=f"d-{user.hex[:12]}@example.com", email_verified=True,
            password_hash="!", plan="free", created_at=now, updated_at=now))
    wait_for(lambda: stack.rpc.billing.get_balance(str(user))["available"] == 50, 30, 0.1,
             "the signup grant")
    return str(user)


def finished(stack, user: str, job_id: str) -> dict:
    return wait_for(
        lambda: (job := stack.rpc.generation.get_job(user, job_id))["status"]
        in ("succeeded", "failed", "rejected", "cancelled") and job,
        60, 0.1, f"job {job_id} to finish")


def run_job(stack, user: str, **extra) -> dict:
    job = stack.rpc.generation.submit(user, {"type": "text-to-image", "prompt": "a paper boat",
                                             "size": "512x512", **extra})
    return finished(stack, user, job["id"])


def log_of(stack, user: str, **query) -> list[dict]:
    return stack.rpc.generation.list_disclosures(user, query or None)["items"]


def test_a_job_through_a_vendor_writes_one_record(stack, vendors):
    user = new_user(stack)
    before = len(vendors.vendor.requests)
    done = run_job(stack, user, negative_prompt="fog", seed=5)
    assert (done["status"], done["provider"]) == ("succeeded", "vendor"), done
    [record] = log_of(stack, user)
    assert {k: record[k] for k in ("job_id", "attempt", "provider", "region", "categories",
                                   "outcome", "error_code")} == {
        "job_id": done["id"], "attempt": 1, "provider": "vendor", "region": "us",
        "categories": ["prompt", "negative_prompt", "parameters"], "outcome": "succeeded",
        "error_code": None}
    assert record["created_at"] >= done["started_at"]
    # what the record says left is what the vendor got, and nothing of the account
    sent = vendors.vendor.requests[before:]
    assert len(sent) == 1
    raw = json.dumps(sent[0].headers) + sent[0].path + sent[0].body.decode()
    assert "a paper boat" in raw
    assert user not in raw and done["id"] not in raw


def test_failover_writes_a_record_per_vendor_newest_first(stack, vendors):
    user = new_user(stack)
    vendors.vendor.fail_next(500)
    done = run_job(stack, user)
    assert (done["status"], done["provider"]) == ("succeeded", "backup"), done
    records = log_of(stack, user)
    assert [(r["provider"], r["region"], r["outcome"], r["error_code"]) for r in records] == [
        ("backup", "eu", "succeeded", None), ("vendor", "us", "failed", "provider_server_error")]
    assert {r["job_id"] for r in records} == {done["id"]}
    assert records[0]["created_at"] >= records[1]["created_at"]


def test_a_refusal_is_recorded_and_no_other_vendor_is_asked(stack, vendors):
    user = new_user(stack)
    asked = len(vendors.backup.requests)
    vendors.vendor.fail_next("refuse")
    done = run_job(stack, user)
    assert (done["status"], done["error"]["code"]) == ("failed", "content_refused"), done
    assert [(r["provider"], r["outcome"], r["error_code"]) for r in log_of(stack, user)] == [
        ("vendor", "refused", "content_refused")]
    assert len(vendors.backup.requests) == asked


def test_the_list_is_the_callers_own_a_page_at_a_time(stack):
    user, other = new_user(stack), new_user(stack)
    first, second = run_job(stack, user), run_job(stack, user)
    assert log_of(stack, other) == []
    page = stack.rpc.generation.list_disclosures(user, {"limit": 1})
    assert [r["job_id"] for r in page["items"]] == [second["id"]]
    rest = stack.rpc.generation.list_disclosures(user, {"limit": 1,
                                                        "cursor": page["next_cursor"]})
    assert [r["job_id"] for r in rest["items"]] == [first["id"]]


def test_export_contains_them_and_erasure_removes_them(stack):
    user = new_user(stack)
    done = run_job(stack, user)
    settings = GenerationSettings.from_config({})
    with Session(stack.db.generation) as db:
        exported = privacy_data.export(db, settings, user)
        assert [(d["job_id"], d["provider"]) for d in exported["disclosures"]] == [
            (done["id"], "vendor")]
        erased = privacy_data.erase(db, settings, user, datetime.now(UTC))
        db.commit()
    assert erased.tables["disclosures"] == 1
    assert log_of(stack, user) == []
