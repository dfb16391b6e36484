"""The generation saga across real services: generation, billing and storage
(s3 backend on the tests' S3 endpoint), each started by its Procfile command,
on one RabbitMQ vhost and their own PostgreSQL databases. Jobs are submitted
over RPC as the gateway submits them.

The routes make failover and failure observable without a model:
text-to-image tries ``openai`` (an OpenAI-compatible provider at an address
where nothing listens) and fails over to ``local``; image-to-video has only
``video``, an async-task provider at such an address, so those jobs fail and
billing releases their hold.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import socket
import uuid
from contextlib import contextmanager
from datetime import UTC, datetime
from types import SimpleNamespace

import pytest
import requests
import standardwebhooks
from nameko.standalone.rpc import ClusterRpcProxy
from PIL import Image
from sqlalchemy import delete, update

from services.auth.models import User
from services.common.db import make_engine
from services.common.errors import DomainError
from services.generation import webhooks
from services.generation.models import ErasurePending
from tests.conftest import base_env, free_port, providers_file, wait_for
from tests.fakes.providers import DripReceiver, FakeWebhookReceiver
from tests.integration.probe_service import wait_consuming
from tests.integration.test_ops_users import ops

pytestmark = pytest.mark.integration

@pytest.fixture(scope="module")
def dead_provider():
    """A loopback address that refuses connections: a port bound (so no other
    server of the test run can take it) and never listened on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"


@pytest.fixture(scope="module")
def stack(make_vhost, make_database, start_process, s3_endpoint, dead_provider,
          tmp_path_factory):
    amqp_uri, _ = make_vhost("generation")
    common = dict(AMQP_URI=amqp_uri, OUTBOX_RELAY_INTERVAL_SECONDS=1)
    ports = {name: free_port() for name in ("auth", "billing", "storage", "generation")}
    auth_db, generation_db = make_database("gen_auth"), make_database("gen_generation")
    auth = start_process("auth", base_env(
        **common, AUTH_DATABASE_URL=auth_db, AUTH_METRICS_PORT=ports["auth"]))
    billing = start_process("billing", base_env(
        **common, BILLING_DATABASE_URL=make_database("gen_billing"),
        BILLING_METRICS_PORT=ports["billing"]))
    storage = start_process("storage", storage_env(
        common, make_database("gen_storage"), ports["storage"], s3_endpoint, "generation"))
    generation = start_process("generation", base_env(
        **common, GENERATION_DATABASE_URL=generation_db,
        GENERATION_METRICS_PORT=ports["generation"],
        GENERATION_PROVIDERS_FILE=providers_file(
            tmp_path_factory.mktemp("providers"),
            {"openai": {"type": "openai_images", "base_url": dead_provider,
                        "api_key": "sk-test", "timeout_s": 2},
             "video": {"type": "async_task", "base_url": dead_provider, "timeout_s": 2,
                       "task_timeout_s": 600, "poll_interval_s": 2},
             "local": {"type": "local"}},
            {"text-to-image": ["openai", "local"], "image-to-image": ["local"],
             "image-to-video": ["video"]},
            retry={"attempts": 2, "base_delay_s": 0.05, "max_delay_s": 30}),
        GENERATION_MAX_ACTIVE_JOBS_PER_USER=3,
        GENERATION_WEBHOOK_ALLOW="127.0.0.1", GENERATION_WEBHOOK_TIMEOUT_SECONDS=10))
    procs = {"auth": auth, "billing": billing, "storage": storage, "generation": generation}
    with ready(amqp_uri, procs, ports, auth_db) as ready_stack:
        engine = make_engine(generation_db)
        yield SimpleNamespace(**vars(ready_stack), generation=generation, amqp_uri=amqp_uri,
                              generation_db=engine)
        engine.dispose()


def storage_env(common: dict, database: str, port: int, s3_endpoint, bucket: str) -> dict:
    """The storage process's environment: the s3 backend on the tests' endpoint."""
    return base_env(
        **common, STORAGE_DATABASE_URL=database, STORAGE_METRICS_PORT=port,
        STORAGE_BACKEND="s3", S3_ENDPOINT=s3_endpoint.url, S3_ACCESS_KEY=s3_endpoint.access_key,
        S3_SECRET_KEY=s3_endpoint.secret_key, S3_BUCKET=s3_endpoint.bucket_name(bucket),
        S3_REGION=s3_endpoint.region)


@contextmanager
def ready(amqp_uri: str, procs: dict, ports: dict, auth_db: str):
    """Waits for the auth, billing, storage and generation processes to serve
    and consume the saga's events; yields ``rpc`` and auth's engine ``auth_db``."""
    for name, proc in procs.items():
        proc.wait_ready(f"http://127.0.0.1:{ports[name]}/readyz")
    wait_consuming(amqp_uri, "evt-billing-credits_reserved--generation.credits_reserved",
                   procs["generation"])
    wait_consuming(amqp_uri, "evt-generation-job_requested--billing.job_requested",
                   procs["billing"])
    with ClusterRpcProxy({"AMQP_URI": amqp_uri}, timeout=60) as rpc:
        for service in procs:
            wait_for(lambda s=service: getattr(rpc, s).ping(), 30, 0.2, f"{service} RPC")
        engine = make_engine(auth_db)
        yield SimpleNamespace(rpc=rpc, auth_db=engine)
        engine.dispose()


def new_user(stack, verified: bool = True) -> str:
    """A user auth knows, with a verified address unless asked (set in auth's
    database: no mail round trip), and the free plan's signup grant (50 credits)."""
    user, now = uuid.uuid4(), datetime.now(UTC)
    with stack.auth_db.begin() as conn:
        conn.execute(User.__table__.insert().values(
            id=user, email=f"u-{user.hex[:12]}@example.com", email_verified=verified,
            password_hash="!", plan="free", created_at=now, updated_at=now))
    assert stack.rpc.billing.get_balance(str(user))["available"] == 50
    return str(user)


def set_verified(stack, user: str, verified: bool) -> None:
    with stack.auth_db.begin() as conn:
        conn.execute(update(User).where(User.id == uuid.UUID(user))
                     .values(email_verified=verified))


def set_erasure_pending(stack, user: str, pending: bool) -> None:
    """What privacy's ``erasure_scheduled`` (``_cancelled``) leaves in
    generation's database (services.common.privacy_parts.ErasurePendingMirror)."""
    with stack.generation_db.begin() as conn:
        conn.execute(delete(ErasurePending).where(ErasurePending.user_id == uuid.UUID(user)))
        conn.execute(ErasurePending.__table__.insert().values(
            user_id=uuid.UUID(user), pending=pending, changed_at=datetime.now(UTC)))


def finished(stack, user: str, job_id: str, timeout: float = 60) -> dict:
    return wait_for(
        lambda: (job := stack.rpc.generation.get_job(user, job_id))["status"]
        in ("succeeded", "failed", "rejected", "cancelled") and job,
        timeout, 0.1, f"job {job_id} to finish")


def settled(stack, user: str) -> dict:
    """The balance once no credit is held any more."""
    return wait_for(lambda: (b := stack.rpc.billing.get_balance(user))["held"] == 0 and b,
                    30, 0.1, "holds settled")


def refused(call, *args, **kwargs) -> DomainError:
    with pytest.raises(DomainError) as info:
        call(*args, **kwargs)
    return info.value


def png(width=64, height=48, colour=(200, 40, 40)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (width, height), colour).save(buf, "PNG")
    return buf.getvalue()


def upload(stack, user: str, data: bytes) -> str:
    slot = stack.rpc.storage.create_upload_slot(user)
    response = requests.request(slot["method"], slot["url"], data=data, headers=slot["headers"],
                                timeout=10)
    assert response.status_code in (200, 201), response.text
    return stack.rpc.storage.finish_upload(user, slot["upload_id"])["id"]


def download(stack, user: str, object_id: str) -> tuple[dict, bytes]:
    obj = stack.rpc.storage.get_object(user, object_id)
    response = requests.get(obj["url"], timeout=10)
    assert response.status_code == 200
    return obj, response.content


# ---------------------------------------------------------------- tests


def test_text_to_image_fails_over_stores_its_outputs_and_is_charged_once(stack):
    user = new_user(stack)
    quote = stack.rpc.generation.submit(user, {"type": "text-to-image", "prompt": "a red fox",
                                               "n": 2, "size": "512x512"}, dry_run=True)
    assert quote["price"] == 2
    job = stack.rpc.generation.submit(user, {"type": "text-to-image", "prompt": "a red fox",
                                             "n": 2, "size": "512x512", "seed": 7})
    assert job["status"] == "queued" and job["price"] == 2 and job["attempt"] == 1
    done = finished(stack, user, job["id"])
    assert done["status"] == "succeeded", done
    assert done["provider"] == "local"  # the first provider is down: failover
    assert done["progress"] == 1.0 and done["queue_position"] is None
    assert len(done["outputs"]) == 2
    for object_id in done["outputs"]:
        obj, data = download(stack, user, object_id)
        assert obj["kind"] == "output" and obj["job_id"] == job["id"]
        assert obj["sha256"] == hashlib.sha256(data).hexdigest()
        assert Image.open(io.BytesIO(data)).size == (512, 512)
    balance = settled(stack, user)
    assert (balance["available"], balance["used_this_period"]) == (48, 2)
    kinds = [e["kind"] for e in stack.rpc.billing.list_ledger(user, {"limit": 10})["items"]]
    assert kinds.count("capture") == 1 and kinds.count("hold") == 1


def test_submitting_needs_a_verified_address_whoever_calls(stack):
    """Not only the gateway's rule: the RPC itself refuses, before anything is
    created or held; a dry run (a quote) spends nothing and is answered."""
    user = new_user(stack, verified=False)
    request = {"type": "text-to-image", "prompt": "a red fox", "size": "512x512"}
    assert stack.rpc.generation.submit(user, request, dry_run=True)["price"] == 1
    error = refused(stack.rpc.generation.submit, user, request, idempotency_key="k-1")
    assert (error.code, error.status) == ("email_unverified", 403)
    assert stack.rpc.generation.list_jobs(user)["items"] == []
    assert stack.rpc.billing.get_balance(user)["held"] == 0
    set_verified(stack, user, True)  # verifying counts at once: nothing is cached
    assert stack.rpc.generation.submit(user, request, idempotency_key="k-1")["status"] == "queued"


def test_the_same_prompt_and_seed_give_the_same_pixels(stack):
    user = new_user(stack)
    request = {"type": "text-to-image", "prompt": "a lighthouse at dusk", "size": "512x512",
               "seed": 42}
    first = finished(stack, user, stack.rpc.generation.submit(user, request)["id"])
    second = finished(stack, user, stack.rpc.generation.submit(user, request)["id"])
    assert first["outputs"] != second["outputs"]
    assert download(stack, user, first["outputs"][0])[1] == download(
        stack, user, second["outputs"][0])[1]


def test_idempotent_resubmission_returns_the_first_job(stack):
    user = new_user(stack)
    request = {"type": "text-to-image", "prompt": "a quiet harbour", "size": "512x512"}
    first = stack.rpc.generation.submit(user, request, idempotency_key="key-1")
    again = stack.rpc.generation.submit(user, request, idempotency_key="key-1")
    assert again["id"] == first["id"]
    error = refused(stack.rpc.generation.submit, user, {**request, "prompt": "another"},
                    idempotency_key="key-1")
    assert (error.code, error.status) == ("idempotency_key_reused", 409)
    finished(stack, user, first["id"])
    assert settled(stack, user)["available"] == 50 - 1  # one job, charged once


def test_another_users_job_is_not_found(stack):
    owner, other = new_user(stack), new_user(stack)
    job = stack.rpc.generation.submit(owner, {"type": "text-to-image", "prompt": "a kite",
                                              "size": "512x512"})
    for call in (stack.rpc.generation.get_job, stack.rpc.generation.cancel_job):
        error = refused(call, other, job["id"])
        assert (error.code, error.status) == ("not_found", 404)
    assert stack.rpc.generation.list_jobs(other)["items"] == []
    assert [j["id"] for j in stack.rpc.generation.list_jobs(owner)["items"]] == [job["id"]]


def test_insufficient_credits_end_rejected_with_nothing_held(stack):
    user = new_user(stack)
    job = stack.rpc.generation.submit(user, {"type": "image-to-video", "source_image_id":
                                             upload(stack, user, png()), "duration_s": 60})
    assert job["price"] > 50
    done = finished(stack, user, job["id"])
    assert done["status"] == "rejected"
    assert done["error"]["code"] == "insufficient_credits"
    assert settled(stack, user)["available"] == 50


def test_moderation_rejects_before_any_hold(stack):
    user = new_user(stack)
    error = refused(stack.rpc.generation.submit, user, {
        "type": "text-to-image", "prompt": "sexual content involving a child"})
    assert (error.code, error.status) == ("content_policy_violation", 422)
    assert error.details["category"]
    assert stack.rpc.generation.list_jobs(user)["items"] == []
    ledger = stack.rpc.billing.list_ledger(user, {"limit": 10})["items"]
    assert [e["kind"] for e in ledger] == ["grant"]


def test_a_source_image_must_be_the_callers(stack):
    owner, other = new_user(stack), new_user(stack)
    source = upload(stack, owner, png())
    error = refused(stack.rpc.generation.submit, other, {
        "type": "image-to-image", "prompt": "as a watercolour", "source_image_id": source})
    assert (error.code, error.status) == ("not_found", 404)
    assert stack.rpc.generation.list_jobs(other)["items"] == []


def test_all_providers_failing_ends_failed_and_releases_the_hold(stack):
    user = new_user(stack)
    source = upload(stack, user, png())
    # a video that names no duration is quoted what the price list says it costs
    published = next(item for item in stack.rpc.billing.list_prices()["job_types"]
                     if item["type"] == "image-to-video")
    quote = stack.rpc.generation.submit(user, {"type": "image-to-video",
                                               "source_image_id": source}, dry_run=True)
    assert quote["price"] == max(published["minimum"], published["credits_per_second"]
                                 * published["default_duration_s"])
    job = stack.rpc.generation.submit(user, {"type": "image-to-video", "source_image_id": source,
                                             "duration_s": 2})
    assert job["price"] == 10
    done = finished(stack, user, job["id"])
    assert done["status"] == "failed"
    assert done["error"]["code"] == "provider_unavailable"
    balance = settled(stack, user)
    assert (balance["available"], balance["used_this_period"]) == (50, 0)
    # a replay holds the owner's credits again: not while the address is unverified
    set_verified(stack, user, False)
    error = refused(stack.rpc.generation.replay_job, job["id"])
    assert (error.code, error.status) == ("email_unverified", 403)
    assert stack.rpc.generation.get_job(user, job["id"])["status"] == "failed"
    set_verified(stack, user, True)
    # nor while an erasure of the account waits out its grace period
    set_erasure_pending(stack, user, True)
    error = refused(stack.rpc.generation.replay_job, job["id"])
    assert (error.code, error.status) == ("erasure_pending", 403)
    assert stack.rpc.generation.get_job(user, job["id"])["status"] == "failed"
    set_erasure_pending(stack, user, False)
    # an operator replays it: a new attempt, held again; it fails again (same outage)
    replayed = stack.rpc.generation.replay_job(job["id"])
    assert (replayed["attempt"], replayed["status"]) == (2, "queued")
    assert finished(stack, user, job["id"])["attempt"] == 2
    assert settled(stack, user)["available"] == 50
    kinds = [e["kind"] for e in stack.rpc.billing.list_ledger(user, {"limit": 20})["items"]]
    assert (kinds.count("hold"), kinds.count("release"), kinds.count("capture")) == (2, 2, 0)


def test_image_to_image_transforms_the_callers_upload(stack):
    user = new_user(stack)
    source = upload(stack, user, png(320, 240))
    job = stack.rpc.generation.submit(user, {"type": "image-to-image", "prompt": "as a sketch",
                                             "source_image_id": source, "size": "512x512",
                                             "seed": 3})
    done = finished(stack, user, job["id"])
    assert done["status"] == "succeeded", done
    assert done["params"]["source_image_id"] == source
    obj, data = download(stack, user, done["outputs"][0])
    assert obj["content_type"] == "image/png"
    assert settled(stack, user)["available"] == 50 - job["price"]


def registered_user(stack) -> str:
    """A user auth knows (webhooks are signed with the account's secret),
    with the signup grant."""
    registered = stack.rpc.auth.register({"email": f"hook-{uuid.uuid4().hex[:8]}@example.com",
                                          "password": "correct horse battery staple"})
    user = registered["user"]["id"]
    set_verified(stack, user, True)
    wait_for(lambda: stack.rpc.billing.get_balance(user)["available"] == 50, 20, 0.2,
             "the signup grant")
    return user


def test_a_final_state_is_posted_to_the_webhook_signed_with_the_accounts_secret(stack):
    user = registered_user(stack)
    with FakeWebhookReceiver() as receiver:
        job = stack.rpc.generation.submit(user, {
            "type": "text-to-image", "prompt": "a paper boat", "size": "512x512",
            "webhook_url": f"{receiver.url}/hooks/darkroom"})
        assert finished(stack, user, job["id"])["status"] == "succeeded"
        # every event when the job chose none: its start and its end
        hooks = wait_for(lambda: (lambda got: got if len(got) == 2 else None)(
            receiver.requests_to("/hooks/darkroom", "POST")), 30, 0.2, "the webhooks")
        secret = stack.rpc.auth.get_webhook_secret(user)["secret"]
        # Standard Webhooks: what any receiver's library accepts
        payloads = {}
        for hook in hooks:
            payload = standardwebhooks.Webhook(secret).verify(hook.body, hook.headers)
            payloads[payload["type"]] = payload
            another = "whsec_" + base64.b64encode(b"another account's 32-byte secret").decode()
            with pytest.raises(standardwebhooks.WebhookVerificationError):
                standardwebhooks.Webhook(another).verify(hook.body, hook.headers)
            assert "paper boat" not in hook.body.decode()  # the prompt never leaves in a webhook
        assert set(payloads) == {"job.started", "job.completed"}
        payload = payloads["job.completed"]
        assert payload["job"]["id"] == job["id"] and len(payload["job"]["outputs"]) == 1


def test_chosen_events_are_listed_and_redelivered_by_the_ops_cli_with_their_webhook_id(stack):
    """A job chooses ``started`` and ``completed``; the receiver refuses the
    first POST for good (410). Its owner lists both deliveries (another user
    gets 404); ``darkroom-ops webhooks list`` shows them and ``webhooks
    redeliver`` sends the refused one again with the same ``webhook-id``, and
    it verifies with the library."""
    user, other = registered_user(stack), new_user(stack)
    secret = stack.rpc.auth.get_webhook_secret(user)["secret"]
    with FakeWebhookReceiver() as receiver:
        receiver.fail_next(410)
        job = stack.rpc.generation.submit(user, {
            "type": "text-to-image", "prompt": "a lantern", "size": "512x512",
            "webhook_url": f"{receiver.url}/hooks/events",
            "webhook_events": ["started", "completed"]})
        assert job["webhook_events"] == ["started", "completed"]
        assert finished(stack, user, job["id"])["status"] == "succeeded"
        hooks = wait_for(lambda: (lambda got: got if len(got) == 2 else None)(
            receiver.requests_to("/hooks/events", "POST")), 30, 0.2, "both events")
        payloads = [standardwebhooks.Webhook(secret).verify(h.body, h.headers) for h in hooks]
        assert sorted(p["type"] for p in payloads) == ["job.completed", "job.started"]
        refused_id = hooks[0].header("webhook-id")

        def listed() -> dict:
            page = stack.rpc.generation.list_webhook_deliveries(user, job["id"], {"limit": 10})
            ended = all(d["status"] != "pending" for d in page["items"])
            return {d["id"]: d for d in page["items"]} if ended else None

        by_id = wait_for(listed, 30, 0.2, "both deliveries to end")
        assert set(by_id) == {h.header("webhook-id") for h in hooks}
        refused_one = by_id[refused_id]
        assert (refused_one["status"], refused_one["attempts"],
                refused_one["response_status"]) == ("failed", 1, 410)
        [done] = [d for d in by_id.values() if d["id"] != refused_id]
        assert (done["status"], done["response_status"]) == ("delivered", 204)
        assert {d["event"] for d in by_id.values()} == {
            p["type"].removeprefix("job.") for p in payloads}
        error = refused(stack.rpc.generation.list_webhook_deliveries, other, job["id"])
        assert (error.code, error.status) == ("not_found", 404)

        env = base_env(AMQP_URI=stack.amqp_uri, OPS_RPC_TIMEOUT_SECONDS=20)
        result = ops(env, "webhooks", "list", "--job", job["id"], "--status", "failed", "--json")
        assert result.returncode == 0, result.stderr
        assert [(d["id"], d["user_id"]) for d in json.loads(result.stdout)] == [(refused_id, user)]
        result = ops(env, "webhooks", "redeliver", refused_id)
        assert result.returncode == 0, result.stderr
        assert result.stdout.strip() == "queued 1 of 1 delivery for redelivery"
        [again] = wait_for(lambda: receiver.requests_to("/hooks/events", "POST")[2:], 30, 0.2,
                           "the redelivery")
        assert again.header("webhook-id") == refused_id and again.body == hooks[0].body
        assert standardwebhooks.Webhook(secret).verify(again.body, again.headers)
        redone = wait_for(lambda: (listed() or {}).get(refused_id, {}).get("status")
                          == "delivered" and listed()[refused_id], 30, 0.2, "delivered")
        assert (redone["attempts"], redone["response_status"]) == (2, 204)
        # an unknown one is named, and the command fails
        result = ops(env, "webhooks", "redeliver", str(uuid.uuid4()))
        assert result.returncode == 1 and "not_found" in result.stdout


def test_a_dripping_receiver_is_cut_at_the_deadline_while_the_others_get_theirs(stack):
    """A receiver that answers one byte a second holds one pool slot until the
    10 s deadline (GENERATION_WEBHOOK_TIMEOUT_SECONDS) cuts it, and is retried
    after the backoff; deliveries to other receivers go out meanwhile, each at
    the timer's next tick."""
    user = registered_user(stack)
    secret = stack.rpc.auth.get_webhook_secret(user)["secret"]
    with DripReceiver(every_s=1.0) as drip, FakeWebhookReceiver() as fast_a, \
            FakeWebhookReceiver() as fast_b:
        slow_job = stack.rpc.generation.submit(user, {
            "type": "text-to-image", "prompt": "a snail", "size": "512x512",
            "webhook_url": f"{drip.url}/hooks/slow", "webhook_events": ["completed"]})
        wait_for(lambda: drip.connections, 60, 0.05, "the dripping receiver's first attempt")
        first = drip.connections[0]
        fast_jobs = [stack.rpc.generation.submit(user, {
            "type": "text-to-image", "prompt": "a hare", "size": "512x512",
            "webhook_url": f"{receiver.url}/hooks/fast", "webhook_events": ["completed"]})
            for receiver in (fast_a, fast_b)]
        for receiver, job in zip((fast_a, fast_b), fast_jobs, strict=True):
            [hook] = wait_for(lambda r=receiver: r.requests_to("/hooks/fast", "POST"), 30, 0.05,
                              "a fast receiver's webhook")
            received = datetime.now(UTC)
            done = finished(stack, user, job["id"])
            assert done["status"] == "succeeded"
            late = (received - datetime.fromisoformat(done["finished_at"])).total_seconds()
            assert late < 6, f"delivered {late:.1f} s after the job ended"  # a tick is 2 s
            assert standardwebhooks.Webhook(secret).verify(hook.body, hook.headers)["job"]["id"] \
                == job["id"]
        assert first.closed is None  # both arrived while the drip still held its attempt
        wait_for(lambda: first.closed, 30, 0.05, "the drip to be cut")
        assert 9.5 <= first.closed - first.opened < 12.5, first.closed - first.opened
        assert b"webhook-signature:" in first.request.lower()
        # retried after the first backoff step (10 s), not at once and not never
        wait_for(lambda: len(drip.connections) > 1, 40, 0.1, "the drip's retry")
        assert drip.connections[1].opened - first.closed >= webhooks.BACKOFF_SCHEDULE_S[0] - 1
        assert finished(stack, user, slow_job["id"])["status"] == "succeeded"


def test_a_webhook_to_a_private_address_is_refused_at_submit(stack):
    user = new_user(stack)
    error = refused(stack.rpc.generation.submit, user, {
        "type": "text-to-image", "prompt": "a kite", "webhook_url": "http://10.1.2.3/hook"})
    assert (error.code, error.status) == ("invalid_request", 400)
    assert "webhook_url" in error.details["fields"]
