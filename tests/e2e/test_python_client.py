"""The Python client (clients/python, ``darkroom_client``) against the whole
stack: after an account is made and verified over HTTP, everything goes
through the client with the account's API key (as ``Authorization: Bearer``).

Text-to-image runs on ``stack.images`` (the OpenAI-compatible fake) first;
``fail_next("slow")`` holds its answer up to 4 s, long enough for a job to be
seen running."""

from __future__ import annotations

import io
import threading
import uuid

import pytest
from darkroom_client import Client, DarkroomError, verify_webhook
from PIL import Image

from tests.conftest import wait_for
from tests.e2e.stack import verified_login
from tests.fakes.providers import FakeWebhookReceiver

pytestmark = pytest.mark.e2e

SIGNUP_GRANT = 50
PNG_512 = {"type": "text-to-image", "size": "512x512"}


@pytest.fixture
def client(stack):
    _, registered, _ = verified_login(stack)
    with Client(stack.base_url, registered["api_key"]["key"], timeout=30, max_retries=2) as c:
        wait_for(lambda: c.balance().available == SIGNUP_GRANT, 20, 0.2, "signup grant")
        yield c


def settled(client: Client):
    return wait_for(lambda: (b := client.balance()).held == 0 and b, 30, 0.2, "credits to settle")


def test_submit_with_wait_answers_the_finished_job_whose_output_downloads(client):
    assert client.me()["email_verified"] is True
    models = {m.name: m for m in client.models()}
    assert any("text-to-image" in m.job_types for m in models.values())

    job = client.submit(prompt="a lighthouse", wait=30, **PNG_512)
    assert (job.status, job.done, job.error) == ("succeeded", True, None)
    [link] = job.output_urls
    assert link.id == job.outputs[0] and link.url_expires_at > job.finished_at
    image = Image.open(io.BytesIO(client.download(link)))
    assert image.size == (512, 512)

    assert settled(client).available == SIGNUP_GRANT - job.price
    kinds = [entry.kind for entry in client.iter_ledger(page_size=1) if entry.job_id == job.id]
    assert sorted(kinds) == ["capture", "hold"]


def test_the_iterators_walk_every_page(client):
    made = [client.submit(prompt=f"a boat {i}", wait=30, **PNG_512) for i in range(3)]
    assert all(job.status == "succeeded" for job in made)
    listed = list(client.iter_jobs(page_size=2))
    assert [job.id for job in listed] == [job.id for job in reversed(made)]  # newest first
    assert all(job.output_urls for job in listed)
    outputs = list(client.iter_gallery(kind="output", page_size=2))
    assert sorted(image.job_id for image in outputs) == sorted(job.id for job in made)
    assert list(client.iter_jobs(status="failed")) == []


def test_stream_follows_a_job_to_its_end(stack, client):
    stack.images.fail_next("slow")  # the provider holds its answer (up to 4 s)
    job = client.submit(prompt="a windmill", **PNG_512)
    events = []
    for event in client.stream(job.id):
        events.append(event)
        if len(events) == 1:
            # the first event arrives while the job runs (the stream is live, not
            # buffered to its end): the provider still holds its answer
            assert not client.get_job(job.id).done
            stack.images.proceed()  # now let it finish
    statuses = [event.job.status for event in events]
    assert statuses[0] != "succeeded" and statuses[-1] == "succeeded"
    assert all(event.event == "job" and event.job.id == job.id for event in events)
    assert events[-1].job.output_urls and events[-1].job.progress == 1.0


def test_wait_after_a_short_synchronous_wait(stack, client):
    """``Prefer: wait=1`` answers 202 with the job running; ``job.wait()``
    has the server wait again for that same job (no second one is made)."""
    stack.images.fail_next("slow")
    job = client.submit(prompt="a slow kite", wait=1, **PNG_512)
    assert not job.done
    threading.Timer(1.5, stack.images.proceed).start()
    done = job.wait(timeout=60)
    assert (done.id, done.status) == (job.id, "succeeded")
    assert [j.id for j in client.iter_jobs()] == [job.id]  # one job
    assert client.wait(job.id, timeout=5).status == "succeeded"  # by id: read, already ended


def test_a_webhook_verifies_with_the_client_and_its_delivery_is_listed(client):
    with FakeWebhookReceiver() as receiver:
        job = client.submit(prompt="a weathervane", wait=30,
                            webhook_url=f"{receiver.url}/hook", webhook_events=["completed"],
                            **PNG_512)
        assert job.status == "succeeded"
        [hook] = wait_for(lambda: receiver.requests_to("/hook", "POST"), 30, 0.2, "the webhook")
    event = verify_webhook(client.webhook_secret(), hook.body, hook.headers)
    assert (event.type, event.job.id, event.job.status) == ("job.completed", job.id, "succeeded")
    [delivery] = wait_for(lambda: [d for d in client.iter_deliveries(job.id)
                                   if d.status == "delivered"], 30, 0.2, "delivered")
    assert (delivery.id, delivery.event) == (event.webhook_id, "completed")


def test_refusals_are_darkroom_errors_with_their_codes(stack, client):
    with pytest.raises(DarkroomError) as caught:
        client.submit(prompt="x", type="text-to-image", size="100x100")
    assert (caught.value.status, caught.value.code) == (400, "invalid_request")
    assert "size" in caught.value.details["fields"]
    with pytest.raises(DarkroomError) as missing:
        client.get_job(str(uuid.uuid4()))
    assert (missing.value.status, missing.value.code) == (404, "not_found")
    assert missing.value.request_id
    with Client(stack.base_url, "drk_nothing_nothing", max_retries=0) as stranger:
        with pytest.raises(DarkroomError) as refused:
            stranger.balance()
    assert (refused.value.status, refused.value.code) == (401, "unauthenticated")
    assert list(client.iter_jobs()) == []  # nothing was made
