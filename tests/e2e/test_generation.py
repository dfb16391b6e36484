"""Generation through the whole stack over HTTP: every job type from submit to
outputs in the gallery and credits captured, failover, an outage that fails
jobs and their replay by an operator, rejection, moderation, cancellation,
idempotency, isolation, the event stream and a signed webhook.

The providers are fakes on loopback (see conftest.py): ``stack.images`` is the
OpenAI-compatible images API text-to-image tries first (the local renderer is
second), ``stack.video`` the async task API image-to-video tries first."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import pytest
import standardwebhooks
from PIL import Image

from tests.conftest import wait_for
from tests.e2e.stack import verified_login
from tests.fakes.providers import FakeWebhookReceiver

pytestmark = pytest.mark.e2e

SIGNUP_GRANT = 50
FINAL = ("succeeded", "failed", "rejected", "cancelled")
OPS = str(Path(sys.executable).parent / "darkroom-ops")
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def user(stack):
    address, registered, token = verified_login(stack)
    wait_for(lambda: balance(stack, token)["available"] == SIGNUP_GRANT, 20, 0.2, "signup grant")
    return {"email": address, "id": registered["user"]["id"], "token": token}


def balance(stack, token) -> dict:
    response = stack.call("GET", "/v1/billing/balance", token=token)
    assert response.status_code == 200, response.text
    return response.json()


def settled(stack, token) -> dict:
    return wait_for(lambda: (b := balance(stack, token))["held"] == 0 and b, 30, 0.2,
                    "credits to settle")


def ledger_kinds(stack, token) -> list[str]:
    response = stack.call("GET", "/v1/billing/ledger", token=token, params={"limit": 50})
    assert response.status_code == 200, response.text
    return [entry["kind"] for entry in response.json()["items"]]


def submit(stack, token, body: dict, key: str | None = None, expect: int = 202) -> dict:
    headers = {"Idempotency-Key": key} if key else {}
    response = stack.call("POST", "/v1/generations", token=token, json=body, headers=headers)
    assert response.status_code == expect, response.text
    if expect == 202:
        assert response.headers["Location"] == f"/v1/generations/{response.json()['id']}"
    return response.json()


def job(stack, token, job_id: str) -> dict:
    response = stack.call("GET", f"/v1/generations/{job_id}", token=token)
    assert response.status_code == 200, response.text
    return response.json()


def finished(stack, token, job_id: str, timeout: float = 60) -> dict:
    return wait_for(lambda: (j := job(stack, token, job_id))["status"] in FINAL and j, timeout,
                    0.2, f"job {job_id} to finish")


def upload_png(stack, token, size=(96, 64)) -> str:
    buf = io.BytesIO()
    Image.new("RGB", size, (30, 120, 200)).save(buf, "PNG")
    response = stack.call("POST", "/v1/uploads", token=token,
                          files={"file": ("source.png", buf.getvalue(), "image/png")})
    assert response.status_code == 201, response.text
    return response.json()["id"]


def content(stack, token, image_id: str) -> tuple[str, bytes]:
    """The object's content type (from the gallery) and its bytes."""
    described = stack.call("GET", f"/v1/images/{image_id}", token=token)
    assert described.status_code == 200, described.text
    response = stack.call("GET", f"/v1/images/{image_id}/content", token=token)
    assert response.status_code == 200, response.text
    kind = described.json()["content_type"]
    assert response.headers["Content-Type"] == kind  # the bytes are served with their type
    return kind, response.content


def ops(stack, *args: str) -> subprocess.CompletedProcess:
    env = {**stack.env, "OPS_RPC_TIMEOUT_SECONDS": "30"}
    return subprocess.run([OPS, *args], env=env, cwd=REPO, capture_output=True, text=True,
                          timeout=120)


# ---------------------------------------------------------------- job types


def test_text_to_image_through_the_first_provider(stack, user):
    token = user["token"]
    quote = stack.call("POST", "/v1/generations", token=token, params={"dry_run": "true"},
                       json={"type": "text-to-image", "prompt": "a red fox", "n": 2,
                             "size": "512x512"})
    assert quote.status_code == 200 and quote.json()["price"] == 2
    before = len(stack.images.requests_to("/v1/images/generations", "POST"))
    created = submit(stack, token, {"type": "text-to-image", "prompt": "a red fox in snow",
                                    "n": 2, "size": "512x512"})
    done = finished(stack, token, created["id"])
    assert (done["status"], done["provider"], len(done["outputs"])) == ("succeeded", "openai", 2)
    gallery = stack.call("GET", "/v1/images", token=token, params={"job_id": created["id"]})
    assert sorted(i["id"] for i in gallery.json()["items"]) == sorted(done["outputs"])
    content_type, data = content(stack, token, done["outputs"][0])
    assert content_type == "image/png" and Image.open(io.BytesIO(data)).size == (512, 512)
    assert (settled(stack, token)["available"], ledger_kinds(stack, token).count("capture")) == (
        SIGNUP_GRANT - 2, 1)
    # the provider got the prompt and nothing that names the account
    [call] = stack.images.requests_to("/v1/images/generations", "POST")[before:]
    sent = call.body.decode() + json.dumps(call.headers)
    assert "a red fox in snow" in sent
    for secret in (user["id"], user["email"], token, created["id"]):
        assert secret not in sent


@pytest.mark.parametrize("outage", [(500, 500), ("hang", "hang")], ids=["errors", "timeouts"])
def test_the_first_provider_failing_fails_over_to_the_second(stack, user, outage):
    stack.images.fail_next(*outage)
    created = submit(stack, user["token"], {"type": "text-to-image", "prompt": "a lighthouse",
                                            "size": "512x512"})
    done = finished(stack, user["token"], created["id"])
    assert (done["status"], done["provider"]) == ("succeeded", "local")
    assert settled(stack, user["token"])["available"] == SIGNUP_GRANT - 1


def test_image_to_image_from_the_callers_upload(stack, user):
    token = user["token"]
    source = upload_png(stack, token)
    created = submit(stack, token, {"type": "image-to-image", "prompt": "as a pencil sketch",
                                    "source_image_id": source, "size": "512x512",
                                    "strength": 0.4})
    done = finished(stack, token, created["id"])
    assert (done["status"], done["provider"]) == ("succeeded", "local")
    content_type, data = content(stack, token, done["outputs"][0])
    assert content_type == "image/png" and Image.open(io.BytesIO(data)).size == (512, 512)
    assert settled(stack, token)["available"] == SIGNUP_GRANT - created["price"]


def test_image_to_video_through_the_async_task_provider(stack, user):
    token = user["token"]
    created = submit(stack, token, {"type": "image-to-video", "source_image_id":
                                    upload_png(stack, token), "prompt": "slow push in",
                                    "duration_s": 2})
    assert created["price"] == 10
    done = finished(stack, token, created["id"])
    assert (done["status"], done["provider"]) == ("succeeded", "video"), done
    content_type, data = content(stack, token, done["outputs"][0])
    assert content_type == "video/mp4" and data[4:8] == b"ftyp"
    assert settled(stack, token)["available"] == SIGNUP_GRANT - 10


# ---------------------------------------------------------------- failures


def failed_by_the_vendor(stack, token) -> tuple[dict, dict]:
    """A 2-second video (10 credits) the video vendor fails: ``(submitted, failed)``
    (tests/e2e/test_admin.py replays one too)."""
    stack.video.outcome = "failed"
    try:
        # the model named: the route's other vendors would take over (test_vendors.py)
        created = submit(stack, token, {"type": "image-to-video", "source_image_id":
                                        upload_png(stack, token), "duration_s": 2,
                                        "model": "video"})
        return created, finished(stack, token, created["id"])
    finally:
        stack.video.outcome = "succeeded"


def queued_behind_a_slow_one(stack, token) -> tuple[dict, dict]:
    """A job running slowly in the only run slot (1 credit) and one (4 credits)
    waiting with its hold: ``(running, waiting)``."""
    stack.images.fail_next("hang", "hang")  # the first job holds the only run slot a while
    first = submit(stack, token, {"type": "text-to-image", "prompt": "a slow one",
                                  "size": "512x512"})
    wait_for(lambda: job(stack, token, first["id"])["status"] == "running", 20, 0.1, "running")
    second = submit(stack, token, {"type": "text-to-image", "prompt": "a queued one",
                                   "size": "1024x1024"})
    wait_for(lambda: job(stack, token, second["id"])["status"] == "reserved", 20, 0.1,
             "the second job waiting with its hold")
    return first, second


def test_an_outage_fails_the_job_releases_its_credits_and_a_replay_charges_once(stack, user):
    token = user["token"]
    created, failed = failed_by_the_vendor(stack, token)
    assert failed["status"] == "failed" and failed["error"]["code"]
    assert settled(stack, token)["available"] == SIGNUP_GRANT

    listed = ops(stack, "jobs", "list", "--status", "failed", "--since", "10m", "--json")
    assert listed.returncode == 0, listed.stderr
    assert created["id"] in listed.stdout
    replayed = ops(stack, "jobs", "replay", created["id"], "--yes")
    assert replayed.returncode == 0, replayed.stderr + replayed.stdout
    done = wait_for(lambda: (j := job(stack, token, created["id"]))["attempt"] == 2
                    and j["status"] in FINAL and j, 60, 0.2, "the replay")
    assert done["status"] == "succeeded"
    assert settled(stack, token)["available"] == SIGNUP_GRANT - 10
    kinds = ledger_kinds(stack, token)
    assert (kinds.count("hold"), kinds.count("release"), kinds.count("capture")) == (2, 1, 1)


def test_insufficient_credits_end_rejected(stack, user):
    token = user["token"]
    created = submit(stack, token, {"type": "image-to-video", "source_image_id":
                                    upload_png(stack, token), "duration_s": 60})
    done = finished(stack, token, created["id"])
    assert (done["status"], done["error"]["code"]) == ("rejected", "insufficient_credits")
    assert settled(stack, token)["available"] == SIGNUP_GRANT


def test_moderation_refuses_before_any_hold(stack, user):
    token = user["token"]
    response = stack.call("POST", "/v1/generations", token=token, json={
        "type": "text-to-image", "prompt": "sexual content involving a child"})
    assert response.status_code == 422
    assert response.json()["error"]["code"] == "content_policy_violation"
    assert stack.call("GET", "/v1/generations", token=token).json()["items"] == []
    assert ledger_kinds(stack, token) == ["grant"]


def test_cancelling_a_queued_job_releases_its_hold(stack, user):
    token = user["token"]
    first, second = queued_behind_a_slow_one(stack, token)
    assert balance(stack, token)["held"] == 1 + 4
    response = stack.call("DELETE", f"/v1/generations/{second['id']}", token=token)
    assert response.status_code == 202 and response.json()["status"] == "cancelled"
    assert finished(stack, token, first["id"])["status"] == "succeeded"
    assert settled(stack, token)["available"] == SIGNUP_GRANT - 1
    again = stack.call("DELETE", f"/v1/generations/{first['id']}", token=token)
    assert (again.status_code, again.json()["error"]["code"]) == (409, "not_cancellable")


# ---------------------------------------------------------------- the API's promises


def test_an_idempotent_resubmission_returns_the_first_job(stack, user):
    token = user["token"]
    body = {"type": "text-to-image", "prompt": "a paper crane", "size": "512x512"}
    first = submit(stack, token, body, key="crane-1")
    again = submit(stack, token, body, key="crane-1")
    assert again["id"] == first["id"]
    reused = stack.call("POST", "/v1/generations", token=token, headers={"Idempotency-Key":
                        "crane-1"}, json={**body, "prompt": "a paper boat"})
    assert (reused.status_code, reused.json()["error"]["code"]) == (409, "idempotency_key_reused")
    finished(stack, token, first["id"])
    assert settled(stack, token)["available"] == SIGNUP_GRANT - 1


def test_another_users_job_is_404_everywhere(stack, user):
    owner = user["token"]
    other = verified_login(stack)[2]
    created = submit(stack, owner, {"type": "text-to-image", "prompt": "mine", "size": "512x512"})
    for method, path in (("GET", ""), ("DELETE", ""), ("GET", "/events")):
        response = stack.call(method, f"/v1/generations/{created['id']}{path}", token=other)
        assert (response.status_code, response.json()["error"]["code"]) == (404, "not_found")
    assert stack.call("GET", "/v1/generations", token=other).json()["items"] == []
    finished(stack, owner, created["id"])


def test_bad_requests_get_a_clear_4xx(stack, user):
    token = user["token"]
    for body in ({"type": "text-to-video", "prompt": "x"}, {"type": "text-to-image"},
                 {"type": "text-to-image", "prompt": "x", "n": 9},
                 {"type": "text-to-image", "prompt": "x", "size": "100x100"},
                 {"type": "image-to-image", "prompt": "x"}):
        response = stack.call("POST", "/v1/generations", token=token, json=body)
        assert response.status_code == 400, (body, response.text)
        assert response.json()["error"]["code"] == "invalid_request"
    unknown = stack.call("POST", "/v1/generations", token=token, json={
        "type": "image-to-image", "prompt": "x",
        "source_image_id": "01900000-0000-7000-8000-000000000000"})
    assert unknown.status_code == 404
    assert stack.call("GET", "/v1/generations/not-a-job", token=token).status_code == 404
    assert stack.call("POST", "/v1/generations", json={"type": "text-to-image",
                                                      "prompt": "x"}).status_code == 401


def test_the_event_stream_follows_the_job_to_its_end(stack, user):
    token = user["token"]
    created = submit(stack, token, {"type": "text-to-image", "prompt": "a windmill",
                                    "size": "512x512"})
    response = stack.http.get(f"{stack.base_url}/v1/generations/{created['id']}/events",
                              headers={"Authorization": f"Bearer {token}"}, stream=True,
                              timeout=60)
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("text/event-stream")
    states = []
    for line in response.iter_lines(decode_unicode=True):
        if line.startswith("data:"):
            states.append(json.loads(line[5:])["status"])
    response.close()
    assert states[-1] == "succeeded"
    assert states.index("succeeded") == len(states) - 1


def test_the_webhook_arrives_signed_with_the_accounts_secret(stack, user):
    token = user["token"]
    with FakeWebhookReceiver() as receiver:
        created = submit(stack, token, {"type": "text-to-image", "prompt": "a weathervane",
                                        "size": "512x512", "webhook_url": f"{receiver.url}/hook",
                                        "webhook_events": ["completed"]})
        assert finished(stack, token, created["id"])["status"] == "succeeded"
        [hook] = wait_for(lambda: receiver.requests_to("/hook", "POST"), 30, 0.2, "the webhook")
    secret = stack.call("GET", "/v1/me/webhook-secret", token=token).json()["secret"]
    # Standard Webhooks, as a receiver checks it with the standardwebhooks library
    payload = standardwebhooks.Webhook(secret).verify(hook.body, hook.headers)
    assert (payload["type"], payload["job"]["id"]) == ("job.completed", created["id"])
    assert "weathervane" not in hook.body.decode()


def test_a_worker_killed_mid_job_is_restarted_and_the_job_finishes_once(stack, user):
    token = user["token"]
    generation = stack.processes["generation"]
    stack.video.outcome = "never"  # the provider's task runs until the worker is dead
    try:
        source = upload_png(stack, token)
        tasks = len(stack.video.tasks)
        created = submit(stack, token, {"type": "image-to-video", "source_image_id": source,
                                        "duration_s": 2})
        wait_for(lambda: job(stack, token, created["id"])["status"] == "running"
                 and len(stack.video.tasks) > tasks, 30, 0.1, "the provider's task running")
        generation.kill()  # SIGKILL
    finally:
        stack.video.outcome = "succeeded"
    generation.start()
    generation.wait_ready(f"http://127.0.0.1:{stack.env['GENERATION_METRICS_PORT']}/readyz")
    done = finished(stack, token, created["id"], timeout=90)
    assert (done["status"], done["attempt"], len(done["outputs"])) == ("succeeded", 1, 1)
    assert settled(stack, token)["available"] == SIGNUP_GRANT - 10
    kinds = ledger_kinds(stack, token)
    assert (kinds.count("hold"), kinds.count("capture"), kinds.count("release")) == (1, 1, 0)
    assert len(stack.video.tasks) == tasks + 2  # the killed run's task and the rerun's


# ---------------------------------------------------------------- synchronous mode, output URLs


def test_prefer_wait_answers_a_fast_job_finished_and_a_slow_one_202(stack, user):
    """``Prefer: wait=N``: a job that ends within N seconds is answered 200
    with its final state; one that does not is the usual 202."""
    token = user["token"]
    fast = stack.call("POST", "/v1/generations", token=token, headers={"Prefer": "wait=10"},
                      json={"type": "text-to-image", "prompt": "a quick sketch", "size": "512x512"})
    assert fast.status_code == 200, fast.text
    assert (fast.json()["status"], fast.headers["Preference-Applied"]) == ("succeeded", "wait=10")
    assert len(fast.json()["output_urls"]) == 1  # no second request needed for the image

    stack.images.fail_next("hang", "hang")  # the first provider takes its time
    slow = stack.call("POST", "/v1/generations", token=token, headers={"Prefer": "wait=1"},
                      json={"type": "text-to-image", "prompt": "a slow one", "size": "512x512"})
    assert slow.status_code == 202, slow.text
    assert slow.json()["status"] not in FINAL and slow.headers["Preference-Applied"] == "wait=1"
    assert slow.headers["Location"] == f"/v1/generations/{slow.json()['id']}"
    assert finished(stack, token, slow.json()["id"])["status"] == "succeeded"
    assert settled(stack, token)["available"] == SIGNUP_GRANT - 2


def test_a_finished_job_carries_signed_output_urls_that_download(stack, user):
    token = user["token"]
    created = submit(stack, token, {"type": "text-to-image", "prompt": "two boats", "n": 2,
                                    "size": "512x512"})
    assert created["output_urls"] == []  # not finished yet
    done = finished(stack, token, created["id"])
    assert [link["id"] for link in done["output_urls"]] == done["outputs"]
    for link in done["output_urls"]:
        response = stack.http.get(link["url"], timeout=30)  # no credential: the URL is signed
        assert response.status_code == 200, response.text
        assert Image.open(io.BytesIO(response.content)).size == (512, 512)
        assert link["url_expires_at"] > done["finished_at"]
    [listed] = [j for j in stack.call("GET", "/v1/generations", token=token).json()["items"]
                if j["id"] == created["id"]]
    assert [link["id"] for link in listed["output_urls"]] == done["outputs"]
    # an image deleted from the gallery is no longer offered
    deleted = stack.call("DELETE", f"/v1/images/{done['outputs'][0]}", token=token)
    assert deleted.status_code == 204, deleted.text
    assert [link["id"] for link in job(stack, token, created["id"])["output_urls"]] == \
        done["outputs"][1:]
    # another user sees neither the job nor its URLs
    other = verified_login(stack)[2]
    assert stack.call("GET", f"/v1/generations/{created['id']}", token=other).status_code == 404
