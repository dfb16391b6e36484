"""A generation worker killed with SIGKILL in the middle of a job: restarted,
the job finishes exactly once and is charged once. Real generation, billing
and storage processes; the model provider is a fake OpenAI-compatible images
API on loopback whose first call hangs until the worker is dead.
"""

from __future__ import annotations

import uuid
from types import SimpleNamespace

import pytest
from nameko.standalone.rpc import ClusterRpcProxy

from tests.conftest import base_env, free_port, providers_file, wait_for
from tests.fakes.providers import FakeOpenAIImages
from tests.integration.probe_service import start_fake_auth, wait_consuming

pytestmark = pytest.mark.integration

LEASE_SECONDS = 3


@pytest.fixture(scope="module")
def stack(make_vhost, make_database, start_process, s3_endpoint, tmp_path_factory):
    amqp_uri, _ = make_vhost("generation-recovery")
    provider = FakeOpenAIImages(api_key="sk-recovery", hang_s=60).start()
    common = dict(AMQP_URI=amqp_uri, OUTBOX_RELAY_INTERVAL_SECONDS=1)
    start_fake_auth(start_process, tmp_path_factory.mktemp("fake-auth"), amqp_uri)  # verified users
    ports = {name: free_port() for name in ("billing", "storage", "generation")}
    billing = start_process("billing", base_env(
        **common, BILLING_DATABASE_URL=make_database("rec_billing"),
        BILLING_METRICS_PORT=ports["billing"]))
    storage = start_process("storage", base_env(
        **common, STORAGE_DATABASE_URL=make_database("rec_storage"),
        STORAGE_METRICS_PORT=ports["storage"], STORAGE_BACKEND="s3",
        S3_ENDPOINT=s3_endpoint.url, S3_ACCESS_KEY=s3_endpoint.access_key,
        S3_SECRET_KEY=s3_endpoint.secret_key, S3_BUCKET=s3_endpoint.bucket_name("recovery"),
        S3_REGION=s3_endpoint.region))
    generation_env = base_env(
        **common, GENERATION_DATABASE_URL=make_database("rec_generation"),
        GENERATION_METRICS_PORT=ports["generation"], GENERATION_LEASE_SECONDS=LEASE_SECONDS,
        GENERATION_PROVIDERS_FILE=providers_file(
            tmp_path_factory.mktemp("providers"),
            {"openai": {"type": "openai_images", "base_url": provider.url,
                        "api_key": "sk-recovery", "timeout_s": 120}},
            {"text-to-image": ["openai"]}, retry={"attempts": 1}))

    def start_generation():
        proc = start_process("generation", generation_env)
        proc.wait_ready(f"http://127.0.0.1:{ports['generation']}/readyz")
        wait_consuming(amqp_uri, "evt-billing-credits_reserved--generation.credits_reserved",
                       proc)
        return proc

    billing.wait_ready(f"http://127.0.0.1:{ports['billing']}/readyz")
    storage.wait_ready(f"http://127.0.0.1:{ports['storage']}/readyz")
    state = SimpleNamespace(provider=provider, start_generation=start_generation,
                            generation=start_generation())
    with ClusterRpcProxy({"AMQP_URI": amqp_uri}, timeout=60) as rpc:
        for service in ("billing", "storage", "generation"):
            wait_for(lambda s=service: getattr(rpc, s).ping(), 30, 0.2, f"{service} RPC")
        state.rpc = rpc
        yield state
    provider.stop()


def test_a_job_whose_worker_is_killed_finishes_once_after_a_restart(stack):
    user = str(uuid.uuid4())
    assert stack.rpc.billing.get_balance(user)["available"] == 50
    stack.provider.fail_next("hang")
    job = stack.rpc.generation.submit(user, {"type": "text-to-image", "prompt": "a glass of water",
                                             "size": "512x512"})
    wait_for(lambda: stack.provider.requests_to("/v1/images/generations", "POST"), 30, 0.1,
             "the provider call")
    assert stack.rpc.generation.get_job(user, job["id"])["status"] == "running"

    stack.generation.kill()  # SIGKILL, mid-call
    stack.generation = stack.start_generation()

    done = wait_for(
        lambda: (j := stack.rpc.generation.get_job(user, job["id"]))["status"] == "succeeded" and j,
        60, 0.2, "the job to finish after the restart")
    assert (done["attempt"], len(done["outputs"])) == (1, 1)
    assert stack.rpc.storage.get_object(user, done["outputs"][0])["job_id"] == job["id"]
    calls = stack.provider.requests_to("/v1/images/generations", "POST")
    assert len(calls) == 2  # the killed attempt and the run after the restart
    balance = wait_for(lambda: (b := stack.rpc.billing.get_balance(user))["held"] == 0 and b,
                       30, 0.2, "the hold to settle")
    assert (balance["available"], balance["used_this_period"]) == (50 - job["price"], job["price"])
    kinds = [e["kind"] for e in stack.rpc.billing.list_ledger(user, {"limit": 20})["items"]]
    assert (kinds.count("hold"), kinds.count("capture"), kinds.count("release")) == (1, 1, 0)
    # what the provider was sent: the prompt and parameters, nothing about the account
    for call in calls:
        sent = call.body.decode() + " ".join(f"{k}: {v}" for k, v in call.headers.items())
        assert user not in sent and job["id"] not in sent
        assert "a glass of water" in sent
