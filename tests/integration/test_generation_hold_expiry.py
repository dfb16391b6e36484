"""Holds that expire before their job ends (issue 13 item 8), across real
billing, generation and storage processes started by their Procfile
commands, with billing's ``HOLD_TTL_SECONDS`` cut to a few seconds and one
run slot: a slow job runs past its hold's expiry while a second one waits
behind it. Billing releases both holds as ``expired``; generation fails both
``hold_expired``, the slow job's late result is not delivered (no output, no
charge), and a replay holds the price again and is charged once.
"""

from __future__ import annotations

import time
import uuid
from types import SimpleNamespace

import pytest
from nameko.standalone.rpc import ClusterRpcProxy

from tests.conftest import base_env, free_port, providers_file, wait_for
from tests.fakes.providers import FakeOpenAIImages
from tests.integration.probe_service import start_fake_auth, wait_consuming

pytestmark = pytest.mark.integration

HOLD_TTL_SECONDS = 4


class SlowImages(FakeOpenAIImages):
    """Answers the images endpoint after ``delay`` seconds (successfully)."""

    delay = 0.0

    def route(self, request):
        if self.scripted(request):
            time.sleep(self.delay)
        return super().route(request)


@pytest.fixture(scope="module")
def stack(make_vhost, make_database, start_process, s3_endpoint, tmp_path_factory):
    amqp_uri, _ = make_vhost("generation-hold-expiry")
    provider = SlowImages(api_key="sk-expiry").start()
    common = dict(AMQP_URI=amqp_uri, OUTBOX_RELAY_INTERVAL_SECONDS=1)
    start_fake_auth(start_process, tmp_path_factory.mktemp("fake-auth"), amqp_uri)  # verified users
    ports = {name: free_port() for name in ("billing", "storage", "generation")}
    billing = start_process("billing", base_env(
        **common, BILLING_DATABASE_URL=make_database("exp_billing"),
        BILLING_METRICS_PORT=ports["billing"], BILLING_HOLD_TTL_SECONDS=HOLD_TTL_SECONDS))
    storage = start_process("storage", base_env(
        **common, STORAGE_DATABASE_URL=make_database("exp_storage"),
        STORAGE_METRICS_PORT=ports["storage"], STORAGE_BACKEND="s3",
        S3_ENDPOINT=s3_endpoint.url, S3_ACCESS_KEY=s3_endpoint.access_key,
        S3_SECRET_KEY=s3_endpoint.secret_key, S3_BUCKET=s3_endpoint.bucket_name("expiry"),
        S3_REGION=s3_endpoint.region))
    generation = start_process("generation", base_env(
        **common, GENERATION_DATABASE_URL=make_database("exp_generation"),
        GENERATION_METRICS_PORT=ports["generation"], GENERATION_MAX_RUNNING_JOBS=1,
        GENERATION_PROVIDERS_FILE=providers_file(
            tmp_path_factory.mktemp("providers"),
            {"openai": {"type": "openai_images", "base_url": provider.url,
                        "api_key": "sk-expiry", "timeout_s": 60}},
            {"text-to-image": ["openai"]}, retry={"attempts": 1})))
    for name, proc in (("billing", billing), ("storage", storage), ("generation", generation)):
        proc.wait_ready(f"http://127.0.0.1:{ports[name]}/readyz")
    wait_consuming(amqp_uri, "evt-billing-credits_released--generation.credits_released",
                   generation)
    wait_consuming(amqp_uri, "evt-generation-job_requested--billing.job_requested", billing)
    with ClusterRpcProxy({"AMQP_URI": amqp_uri}, timeout=60) as rpc:
        for service in ("billing", "storage", "generation"):
            wait_for(lambda s=service: getattr(rpc, s).ping(), 30, 0.2, f"{service} RPC")
        yield SimpleNamespace(rpc=rpc, provider=provider)
    provider.stop()


def ended(stack, user, job_id, timeout=60) -> dict:
    return wait_for(
        lambda: (j := stack.rpc.generation.get_job(user, job_id))["status"]
        in ("succeeded", "failed", "rejected", "cancelled") and j,
        timeout, 0.1, f"job {job_id} to end")


def settled(stack, user) -> dict:
    return wait_for(lambda: (b := stack.rpc.billing.get_balance(user))["held"] == 0 and b,
                    30, 0.1, "holds settled")


def test_jobs_whose_hold_expires_fail_hold_expired_unpaid_and_undelivered_then_replay(stack):
    slow_user, waiting_user = str(uuid.uuid4()), str(uuid.uuid4())
    for user in (slow_user, waiting_user):
        assert stack.rpc.billing.get_balance(user)["available"] == 50
    stack.provider.delay = HOLD_TTL_SECONDS + 4
    request = {"type": "text-to-image", "prompt": "a slow fox", "size": "512x512"}
    slow = stack.rpc.generation.submit(slow_user, request)
    wait_for(lambda: stack.provider.requests_to("/v1/images/generations", "POST"), 30, 0.1,
             "the slow job's provider call")
    waiting = stack.rpc.generation.submit(waiting_user, {**request, "prompt": "a patient fox"})
    wait_for(lambda: stack.rpc.generation.get_job(waiting_user, waiting["id"])["status"]
             == "reserved", 30, 0.1, "the second job to wait for the run slot")
    assert stack.rpc.generation.get_job(slow_user, slow["id"])["status"] == "running"

    # past the hold's lifetime billing releases both holds as expired
    time.sleep(HOLD_TTL_SECONDS + 0.5)
    assert stack.rpc.billing.run_maintenance(["holds"]) == {"holds": 2}

    for user, job in ((waiting_user, waiting), (slow_user, slow)):
        done = ended(stack, user, job["id"])
        assert (done["status"], done["error"]["code"]) == ("failed", "hold_expired")
        assert done["outputs"] == []
    # the slow job's provider answers after its hold expired: nothing is delivered
    time.sleep(stack.provider.delay - HOLD_TTL_SECONDS)
    for user, job in ((waiting_user, waiting), (slow_user, slow)):
        assert stack.rpc.generation.get_job(user, job["id"])["status"] == "failed"
        assert stack.rpc.storage.list_objects(user, {"limit": 10})["items"] == []
        balance = settled(stack, user)
        assert (balance["available"], balance["used_this_period"]) == (50, 0)
    # the waiting job never ran
    assert len(stack.provider.requests_to("/v1/images/generations", "POST")) == 1
    assert stack.rpc.billing.verify_ledger()["problems"] == []

    # replayed (as darkroom-ops jobs replay does): held again, run, charged once
    stack.provider.delay = 0
    replayed = stack.rpc.generation.replay_job(waiting["id"])
    assert (replayed["status"], replayed["attempt"]) == ("queued", 2)
    done = ended(stack, waiting_user, waiting["id"])
    assert (done["status"], done["attempt"], len(done["outputs"])) == ("succeeded", 2, 1)
    balance = settled(stack, waiting_user)
    assert (balance["available"], balance["used_this_period"]) == \
        (50 - waiting["price"], waiting["price"])
    kinds = [e["kind"] for e in stack.rpc.billing.list_ledger(waiting_user, {"limit": 20})["items"]]
    assert (kinds.count("hold"), kinds.count("release"), kinds.count("capture")) == (2, 1, 1)
    assert stack.rpc.billing.verify_ledger()["problems"] == []
