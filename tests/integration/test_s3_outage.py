"""An S3 endpoint answering 503 for half a minute. Real storage, generation,
billing and gateway processes (their Procfile commands), storage's s3 backend
pointed at a real HTTP proxy (tests/s3_proxy.py) in front of the tests' S3
endpoint, a fake OpenAI-compatible provider on loopback, auth faked as in the
other stacks (its ``authenticate`` answers the gateway).

The proxy answers every request 503 ``SlowDown`` (S3's XML error body) for
``OUTAGE_SECONDS`` while jobs have their outputs to write:

- each job waits the outage out inside its run (its PUT to the output slot
  and its commit are retried within ``GENERATION_INFRA_RETRY_SECONDS``) and
  succeeds once the endpoint is back, attempt 1, its provider called once,
  charged once; its output's bytes are those the provider made;
- an upload through the API during the outage answers 503
  ``service_unavailable`` with ``Retry-After``, not a 500; the same upload
  after the outage is stored;
- an upload whose bytes reached the store but whose finish meets the outage
  (the store refuses to read them back) answers 503 ``storage_unavailable``
  with ``Retry-After``; the same upload afterwards is stored;
- nothing is lost or half-written: the objects in the bucket are exactly the
  committed rows, no row is left pending, and staged bytes belong to
  unfinished upload slots only (the orphan sweep's).
"""

from __future__ import annotations

import hashlib
import io
import time
import uuid
from types import SimpleNamespace

import pytest
import requests
from minio import Minio
from nameko.standalone.rpc import ClusterRpcProxy
from PIL import Image
from sqlalchemy import create_engine, text

from services.common.db import normalise_url
from tests.conftest import wait_for
from tests.fakes.providers import FakeOpenAIImages
from tests.integration.job_stack import start_job_stack
from tests.integration.probe_service import FAKE_TOKEN_PREFIX
from tests.s3_proxy import S3Proxy

pytestmark = pytest.mark.integration

OUTAGE_SECONDS = 30
JOBS = 3


@pytest.fixture(scope="module")
def stack(make_vhost, make_database, start_process, s3_endpoint, tmp_path_factory):
    amqp_uri, _ = make_vhost("s3-outage")
    proxy = S3Proxy(s3_endpoint.url).start()
    provider = FakeOpenAIImages(hang_s=120).start()
    bucket = s3_endpoint.bucket_name("s3-outage")
    storage_db = make_database("s3out_storage")
    started = start_job_stack(
        start_process, tmp_path_factory, amqp_uri,
        databases={"billing": make_database("s3out_billing"), "storage": storage_db,
                   "generation": make_database("s3out_generation")},
        s3=s3_endpoint, s3_url=proxy.url, bucket=bucket, provider_url=provider.url, services={},
        generation=dict(GENERATION_INFRA_RETRY_SECONDS=OUTAGE_SECONDS + 60,
                        GENERATION_RPC_TIMEOUT_SECONDS=20, GENERATION_LEASE_SECONDS=9),
        gateway=dict(GATEWAY_AUTH_CACHE_SECONDS=0))
    store = Minio(s3_endpoint.endpoint, access_key=s3_endpoint.access_key,
                  secret_key=s3_endpoint.secret_key, secure=s3_endpoint.secure,
                  region=s3_endpoint.region)  # the store itself, behind the proxy
    storage_engine = create_engine(normalise_url(storage_db))
    with ClusterRpcProxy({"AMQP_URI": amqp_uri}, timeout=60) as rpc:
        for service in ("billing", "storage", "generation", "auth"):
            wait_for(lambda s=service: getattr(rpc, s).ping(), 30, 0.2, f"{service} RPC")
        yield SimpleNamespace(rpc=rpc, proxy=proxy, provider=provider, procs=started.procs,
                              base=started.base,
                              store=store, bucket=bucket, storage_db=storage_engine)
    storage_engine.dispose()
    provider.stop()
    proxy.stop()


def png(seed: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (40, 30), (seed % 256, 90, 160)).save(buffer, "PNG")
    return buffer.getvalue()


def upload(stack, user: str, data: bytes) -> requests.Response:
    return requests.post(f"{stack.base}/v1/uploads",
                         headers={"Authorization": f"Bearer {FAKE_TOKEN_PREFIX}{user}"},
                         files={"file": ("photo.png", data, "image/png")}, timeout=120)


def generations(stack) -> int:
    return len(stack.provider.requests_to("/v1/images/generations", "POST"))


def test_outputs_wait_out_an_s3_outage_and_uploads_get_503(stack):
    users = [str(uuid.uuid4()) for _ in range(JOBS)]
    for user in users:
        assert stack.rpc.billing.get_balance(user)["available"] == 50
    calls = generations(stack)
    for _ in users:
        stack.provider.fail_next("slow")  # each call waits until the outage has begun
    jobs = [(user, stack.rpc.generation.submit(user, {"type": "text-to-image",
                                                      "prompt": "a harbour at dawn",
                                                      "size": "512x512"}))
            for user in users]
    wait_for(lambda: generations(stack) == calls + JOBS, 60, 0.1, "the provider calls")

    stack.proxy.fail("SlowDown")
    began = time.monotonic()
    for _ in users:
        stack.provider.proceed()  # the outputs are ready: now they have to be written
    wait_for(lambda: stack.proxy.refused >= JOBS, 60, 0.2, "the outputs' writes to meet it")

    # an upload through the API meanwhile: a clear 503, and when to come back
    refused = upload(stack, users[0], png(1))
    assert refused.status_code == 503, refused.text
    assert refused.json()["error"]["code"] == "service_unavailable"
    assert int(refused.headers["Retry-After"]) >= 1
    for user, job in jobs:  # what the user sees meanwhile
        wait_for(lambda u=user, j=job: (v := stack.rpc.generation.get_job(u, j["id"]))[
            "status"] == "running" and v["stage"] == "waiting_for_storage", 20, 0.2,
            f"job {job['id']} to wait for storage")

    time.sleep(max(0.0, OUTAGE_SECONDS - (time.monotonic() - began)))
    stack.proxy.recover()

    for user, job in jobs:
        done = wait_for(lambda u=user, j=job: (v := stack.rpc.generation.get_job(u, j["id"]))[
            "status"] in ("succeeded", "failed") and v, 120, 0.5, f"job {job['id']}")
        assert (done["status"], done["attempt"], len(done["outputs"])) == ("succeeded", 1, 1), done
        output = stack.rpc.storage.get_object(user, done["outputs"][0])
        assert output["job_id"] == job["id"]
        body = requests.get(output["url"], timeout=30)
        assert body.status_code == 200
        assert hashlib.sha256(body.content).hexdigest() == output["sha256"]
    assert generations(stack) == calls + JOBS  # no paid call made again
    for user, job in jobs:
        balance = wait_for(lambda u=user: (b := stack.rpc.billing.get_balance(u))["held"] == 0
                           and b, 60, 0.3, "the hold to be captured")
        assert balance["available"] == 50 - job["price"]
        kinds = [e["kind"] for e in stack.rpc.billing.list_ledger(user, {"limit": 20})["items"]]
        assert (kinds.count("hold"), kinds.count("capture"), kinds.count("release")) == (1, 1, 0)

    stored = upload(stack, users[0], png(2))  # the endpoint is back: the same upload works
    assert stored.status_code == 201, stored.text

    assert_consistent(stack)
    assert not staged(stack)  # the refused upload never reached the store


def test_an_upload_finished_during_an_outage_gets_503_and_nothing_half_written(stack):
    """The bytes reach the store, then reading them back for the finish is
    refused: 503 ``storage_unavailable`` with Retry-After, no object row;
    the staged bytes wait for the orphan sweep, as any unfinished upload's."""
    user = str(uuid.uuid4())
    stack.proxy.fail("ServiceUnavailable", methods=("GET", "HEAD"))
    try:
        refused = upload(stack, user, png(3))
    finally:
        stack.proxy.recover()
    assert refused.status_code == 503, refused.text
    assert refused.json()["error"]["code"] == "storage_unavailable"
    assert int(refused.headers["Retry-After"]) >= 1
    assert staged(stack), "the bytes did not reach the store before the finish"
    stored = upload(stack, user, png(3))
    assert stored.status_code == 201, stored.text
    assert_consistent(stack)


def staged(stack) -> set[str]:
    return {obj.object_name for obj in stack.store.list_objects(
        stack.bucket, prefix="staging/", recursive=True)}


def assert_consistent(stack) -> None:
    """Nothing lost, nothing half-written: the bucket's objects are exactly the
    committed rows, and its staged uploads are those of unfinished slots."""
    with stack.storage_db.connect() as conn:
        rows = conn.execute(text("SELECT key, status FROM objects")).all()
        unfinished = set(conn.execute(text(
            "SELECT key FROM upload_slots WHERE finished_at IS NULL")).scalars())
    assert rows and {status for _, status in rows} == {"committed"}, rows
    keys = {obj.object_name for obj in stack.store.list_objects(stack.bucket, prefix="objects/",
                                                                recursive=True)}
    assert keys == {key for key, _ in rows}
    assert staged(stack) <= unfinished
    for name, proc in stack.procs.items():
        assert proc.alive(), f"{name} died:\n{proc.logs()[-3000:]}"
