"""Outages inside a running job, and what a job's error may say. Real
generation, billing and storage processes (started by their Procfile
commands, storage on the tests' S3 endpoint), a fake OpenAI-compatible
provider on loopback.

- The storage process is stopped while a job runs and started again within
  ``GENERATION_INFRA_RETRY_SECONDS``: the job waits it out (its storage RPCs
  time out after ``GENERATION_RPC_TIMEOUT_SECONDS`` and are retried) and
  succeeds, attempt 1, charged once, the provider called once.
- Storage stays down: the job fails with ``storage_unavailable`` within the
  bound instead of staying ``running``, and its hold is released.
- A provider whose error body echoes a signed URL, an API key and internal
  host names: none of it reaches the job's view, its webhook body or the logs.
"""

from __future__ import annotations

import time
import uuid
from types import SimpleNamespace

import pytest
from nameko.standalone.rpc import ClusterRpcProxy
from sqlalchemy import create_engine, text

from services.common.db import normalise_url
from tests.conftest import base_env, free_port, providers_file, wait_for
from tests.fakes.providers import FakeOpenAIImages, FakeWebhookReceiver
from tests.integration.probe_service import start_fake_auth, wait_consuming

pytestmark = pytest.mark.integration

INFRA_RETRY_SECONDS = 15
RPC_TIMEOUT_SECONDS = 2
API_KEY = "sk-outages-0123456789abcdef"
SIGNATURE = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
ECHO = (f"upstream fetch of http://minio:9000/darkroom/objects/u/o?X-Amz-Credential="
        f"AKIAIOSFODNN7EXAMPLE%2F20261203&X-Amz-Signature={SIGNATURE} failed; request had "
        f"Authorization: Bearer {API_KEY} from 10.0.3.7 via storage.internal:8000")
SECRETS = (SIGNATURE, "AKIAIOSFODNN7EXAMPLE", API_KEY, "minio", "10.0.3.7", "storage.internal")


@pytest.fixture(scope="module")
def stack(make_vhost, make_database, start_process, s3_endpoint, tmp_path_factory):
    amqp_uri, _ = make_vhost("generation-outages")
    provider = FakeOpenAIImages(api_key=API_KEY, hang_s=60).start()
    receiver = FakeWebhookReceiver().start()
    common = dict(AMQP_URI=amqp_uri, OUTBOX_RELAY_INTERVAL_SECONDS=1)
    start_fake_auth(start_process, tmp_path_factory.mktemp("fake-auth"), amqp_uri)  # verified users
    ports = {name: free_port() for name in ("billing", "storage", "generation")}
    generation_db = make_database("out_generation")
    billing = start_process("billing", base_env(
        **common, BILLING_DATABASE_URL=make_database("out_billing"),
        BILLING_METRICS_PORT=ports["billing"]))
    storage_env = base_env(
        **common, STORAGE_DATABASE_URL=make_database("out_storage"),
        STORAGE_METRICS_PORT=ports["storage"], STORAGE_BACKEND="s3",
        S3_ENDPOINT=s3_endpoint.url, S3_ACCESS_KEY=s3_endpoint.access_key,
        S3_SECRET_KEY=s3_endpoint.secret_key, S3_BUCKET=s3_endpoint.bucket_name("outages"),
        S3_REGION=s3_endpoint.region)
    generation = start_process("generation", base_env(
        **common, GENERATION_DATABASE_URL=generation_db,
        GENERATION_METRICS_PORT=ports["generation"],
        GENERATION_PROVIDERS_FILE=providers_file(
            tmp_path_factory.mktemp("providers"),
            {"openai": {"type": "openai_images", "base_url": provider.url,
                        "api_key": API_KEY, "timeout_s": 120}},
            {"text-to-image": ["openai"]}, retry={"attempts": 1}),
        GENERATION_INFRA_RETRY_SECONDS=INFRA_RETRY_SECONDS,
        GENERATION_RPC_TIMEOUT_SECONDS=RPC_TIMEOUT_SECONDS,
        # renewed every 3 s: a loaded CI machine must not let it lapse by a late renewal
        GENERATION_LEASE_SECONDS=9,
        GENERATION_WEBHOOK_ALLOW="127.0.0.1"))

    def start_storage():
        proc = start_process("storage", storage_env)
        proc.wait_ready(f"http://127.0.0.1:{ports['storage']}/readyz")
        return proc

    state = SimpleNamespace(provider=provider, receiver=receiver, generation=generation,
                            storage=start_storage(), start_storage=start_storage,
                            generation_db=create_engine(normalise_url(generation_db)))
    billing.wait_ready(f"http://127.0.0.1:{ports['billing']}/readyz")
    generation.wait_ready(f"http://127.0.0.1:{ports['generation']}/readyz")
    wait_consuming(amqp_uri, "evt-billing-credits_reserved--generation.credits_reserved",
                   generation)
    wait_consuming(amqp_uri, "evt-generation-job_requested--billing.job_requested", billing)
    with ClusterRpcProxy({"AMQP_URI": amqp_uri}, timeout=60) as rpc:
        for service in ("billing", "storage", "generation"):
            wait_for(lambda s=service: getattr(rpc, s).ping(), 30, 0.2, f"{service} RPC")
        state.rpc = rpc
        yield state
    state.generation_db.dispose()
    receiver.stop()
    provider.stop()


def new_user(stack) -> str:
    user = str(uuid.uuid4())
    assert stack.rpc.billing.get_balance(user)["available"] == 50
    return user


def job_of(stack, user, job_id) -> dict:
    return stack.rpc.generation.get_job(user, job_id)


def finished(stack, user, job_id, timeout: float) -> dict:
    return wait_for(lambda: (j := job_of(stack, user, job_id))["status"]
                    in ("succeeded", "failed") and j, timeout, 0.2, f"job {job_id} to finish")


def settled(stack, user) -> dict:
    return wait_for(lambda: (b := stack.rpc.billing.get_balance(user))["held"] == 0 and b,
                    30, 0.2, "the hold to settle")


def retries_logged(stack, job_id: str) -> int:
    return sum(1 for line in stack.generation.logs().splitlines()
               if job_id in line and "retrying in" in line)


def start_job_and_stop_storage(stack, user, webhook_url=None) -> dict:
    """A job whose provider call is under way when storage stops; the
    provider answers once storage is down, so the job meets the outage."""
    calls = len(stack.provider.requests_to("/v1/images/generations", "POST"))
    stack.provider.fail_next("slow")
    request = {"type": "text-to-image", "prompt": "a lighthouse", "size": "512x512"}
    if webhook_url:
        request["webhook_url"] = webhook_url
    job = stack.rpc.generation.submit(user, request)
    wait_for(lambda: len(stack.provider.requests_to("/v1/images/generations", "POST")) > calls,
             30, 0.1, "the provider call")
    assert job_of(stack, user, job["id"])["status"] == "running"
    stack.storage.stop()
    stack.provider.proceed()
    wait_for(lambda: retries_logged(stack, job["id"]) >= 1, 30, 0.2, "the job to meet the outage")
    return job


def test_a_job_waits_out_a_storage_restart_and_succeeds_without_replay(stack):
    user = new_user(stack)
    calls = len(stack.provider.requests_to("/v1/images/generations", "POST"))
    job = start_job_and_stop_storage(stack, user)
    time.sleep(RPC_TIMEOUT_SECONDS * 2)  # storage stays down across several retries
    assert job_of(stack, user, job["id"])["status"] == "running"
    assert job_of(stack, user, job["id"])["stage"] == "waiting_for_storage"
    stack.storage = stack.start_storage()

    done = finished(stack, user, job["id"], INFRA_RETRY_SECONDS + 30)
    assert done["status"] == "succeeded", done
    assert (done["attempt"], len(done["outputs"])) == (1, 1)
    assert stack.rpc.storage.get_object(user, done["outputs"][0])["job_id"] == job["id"]
    assert retries_logged(stack, job["id"]) >= 2
    # the paid provider call was made once; the storage steps were retried
    assert len(stack.provider.requests_to("/v1/images/generations", "POST")) == calls + 1
    balance = settled(stack, user)
    assert (balance["available"], balance["used_this_period"]) == (50 - job["price"], job["price"])
    kinds = [e["kind"] for e in stack.rpc.billing.list_ledger(user, {"limit": 20})["items"]]
    assert (kinds.count("hold"), kinds.count("capture"), kinds.count("release")) == (1, 1, 0)


def test_a_job_fails_within_the_bound_when_storage_does_not_come_back(stack):
    user = new_user(stack)
    # the log file is the session's "generation" log: e2e processes wrote to it too
    logged_before = len(stack.generation.logs())
    job = start_job_and_stop_storage(stack, user)
    met = time.monotonic()
    try:
        done = finished(stack, user, job["id"], INFRA_RETRY_SECONDS + RPC_TIMEOUT_SECONDS + 15)
        took = time.monotonic() - met
    finally:
        stack.storage = stack.start_storage()
    assert done["status"] == "failed", done
    assert done["error"]["code"] == "storage_unavailable"
    assert done["error"]["message"].startswith("cannot get an output slot: storage did not answer")
    # failed by its own worker at the bound, not left running until its lease lapsed
    assert INFRA_RETRY_SECONDS - RPC_TIMEOUT_SECONDS - 1 <= took
    assert took <= INFRA_RETRY_SECONDS + RPC_TIMEOUT_SECONDS + 5
    assert "requeued" not in stack.generation.logs()[logged_before:]
    balance = settled(stack, user)
    assert (balance["available"], balance["used_this_period"]) == (50, 0)


@pytest.mark.parametrize("status, code", [(400, "provider_rejected_request"),
                                          (500, "provider_unavailable")])
def test_an_error_body_echoing_secrets_never_reaches_the_user(stack, status, code):
    user = new_user(stack)
    stack.provider.fail_next((status, {"error": {"message": ECHO, "type": "invalid_request_error",
                                                 "code": "upstream_failed"}}))
    job = stack.rpc.generation.submit(user, {
        "type": "text-to-image", "prompt": "a fox", "size": "512x512",
        "webhook_url": f"{stack.receiver.url}/hooks/{uuid.uuid4().hex}",
        "webhook_events": ["failed"]})
    done = finished(stack, user, job["id"], 60)
    assert done["status"] == "failed" and done["error"]["code"] == code, done
    shown = [done["error"]["message"], str(stack.rpc.generation.list_jobs(user, {"limit": 5}))]
    with stack.generation_db.connect() as conn:  # the webhook's body, as it will be sent
        shown += list(conn.execute(text("SELECT body FROM webhook_deliveries WHERE job_id = :id"),
                                   {"id": uuid.UUID(job["id"])}).scalars())
        shown += list(conn.execute(text("SELECT error_message FROM jobs WHERE id = :id"),
                                   {"id": uuid.UUID(job["id"])}).scalars())
    assert len(shown) == 4
    shown.append(stack.generation.logs())
    for place in shown:
        for secret in SECRETS:
            assert secret not in place, (secret, place[-2000:])
    if status == 400:  # the kind of failure, the peer and the status remain
        assert done["error"]["message"] == "openai answered 400 (upstream_failed)"


def test_a_content_refusal_fails_the_job_content_refused_and_releases_the_hold(stack):
    user = new_user(stack)
    stack.provider.fail_next("refuse")
    job = stack.rpc.generation.submit(user, {"type": "text-to-image", "prompt": "a fox",
                                             "size": "512x512"})
    done = finished(stack, user, job["id"], 60)
    assert done["status"] == "failed" and done["error"]["code"] == "content_refused", done
    balance = settled(stack, user)  # the hold released, nothing captured
    assert (balance["available"], balance["used_this_period"]) == (50, 0)
