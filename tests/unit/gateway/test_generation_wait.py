"""``Prefer: wait=N`` on ``POST /v1/generations`` (RFC 7240): the gateway polls
the job with backoff and answers 200 with it once it ends within N seconds,
else the usual 202; ``Preference-Applied`` says when it waited. Against the
fake generation RPC surface and a fake clock (tests/e2e/test_generation.py
runs it on the stack)."""

from __future__ import annotations

import pytest

from gateway.api import generation as generation_api
from gateway.rpc import ServiceUnavailable
from services.common.contracts.generation import WAIT_MAX_S
from tests.unit.gateway import test_generation_api as api_tests
from tests.unit.gateway.conftest import BEARER, USER_ID
from tests.unit.gateway.test_generation_api import JOB_FIELDS, TEXT, FakeGeneration, state

clock = api_tests.clock  # the fake clock of the event stream's tests

DONE = state("succeeded", 1.0, "done", outputs=["01900000-0000-7000-8000-0000000000f1"])


def submit(client, prefer: str | None, **headers):
    if prefer is not None:
        headers["Prefer"] = prefer
    return client.post("/v1/generations", headers={**BEARER, **headers}, json=TEXT)


class ScriptedGeneration(FakeGeneration):
    """The fake generation service, whose next new job answers ``get_job``
    with ``next_script``'s states one after the other."""

    next_script: list = []

    def rpc_submit(self, user_id, payload, idempotency_key=None, dry_run=False):
        view = super().rpc_submit(user_id, payload, idempotency_key, dry_run)
        if not dry_run:
            self.script.setdefault(view["id"], list(self.next_script))
        return view


@pytest.fixture
def generation(pool) -> ScriptedGeneration:
    fake = ScriptedGeneration()
    pool.services["generation"] = fake
    return fake


def scripted(generation: ScriptedGeneration, *steps) -> None:
    generation.next_script = list(steps)


def test_a_job_that_ends_within_the_wait_is_answered_200_finished(client, generation, clock):
    scripted(generation, state("reserved", queue_position=1), state("running", 0.5), DONE)
    response = submit(client, "wait=10")
    assert response.status_code == 200, response.get_json()
    body = response.get_json()
    assert body["status"] == "succeeded" and set(body) == JOB_FIELDS
    assert response.headers["Preference-Applied"] == "wait=10"
    assert response.headers["Location"] == f"/v1/generations/{body['id']}"
    assert "Prefer" in response.headers["Vary"]
    assert clock.sleeps == [0.1, 0.2, 0.4]  # polled with a doubling interval
    assert [args for args, _ in generation.called("get_job")] == [(USER_ID, body["id"])] * 3


def test_a_job_still_running_after_the_wait_is_the_usual_202(client, generation, clock):
    scripted(generation, state("running", 0.3, "rendering"))
    response = submit(client, "wait=2")
    assert response.status_code == 202
    assert response.get_json()["status"] == "running"  # as it was when the wait ended
    assert response.headers["Preference-Applied"] == "wait=2"
    assert clock.now - 1000.0 == pytest.approx(2)  # waited exactly the time asked, no longer
    assert max(clock.sleeps) == generation_api.DEFAULT_POLL_SECONDS  # backoff capped


def test_a_job_that_fails_within_the_wait_is_answered_200_failed(client, generation, clock):
    error = {"code": "provider_unavailable", "message": "all providers down"}
    scripted(generation, state("failed", error=error))
    response = submit(client, "wait=5")
    assert (response.status_code, response.get_json()["status"]) == (200, "failed")
    assert response.get_json()["error"] == error


@pytest.mark.parametrize("prefer, applied", [
    ("wait=100", f"wait={WAIT_MAX_S}"),  # over the maximum: the maximum
    ("respond-async, wait=3", "wait=3"),
    ("handling=lenient; x=1, WAIT = \"4\"", "wait=4"),
])
def test_the_applied_wait_is_echoed(client, generation, clock, prefer, applied):
    scripted(generation, DONE)
    response = submit(client, prefer)
    assert (response.status_code, response.headers["Preference-Applied"]) == (200, applied)


@pytest.mark.parametrize("prefer", [None, "wait=soon", "wait=-1", "wait", "respond-async", ""])
def test_without_a_usable_wait_nothing_waits(client, generation, clock, prefer):
    scripted(generation, DONE)
    response = submit(client, prefer)
    assert response.status_code == 202
    assert "Preference-Applied" not in response.headers
    assert generation.called("get_job") == [] and clock.sleeps == []


def test_wait_zero_answers_at_once(client, generation, clock):
    scripted(generation, DONE)
    response = submit(client, "wait=0")
    assert (response.status_code, response.headers["Preference-Applied"]) == (202, "wait=0")
    assert generation.called("get_job") == []


def test_a_503_while_waiting_is_ridden_out(client, generation, clock):
    scripted(generation, ServiceUnavailable(), DONE)
    response = submit(client, "wait=10")
    assert (response.status_code, response.get_json()["status"]) == (200, "succeeded")


def test_a_job_that_vanishes_while_waiting_is_answered_as_it_was(client, generation, clock):
    from services.common.errors import DomainError

    scripted(generation, DomainError("not_found", "job not found", 404))
    response = submit(client, "wait=10")
    assert (response.status_code, response.get_json()["status"]) == (202, "queued")


def test_a_wait_takes_a_stream_slot_and_is_not_applied_without_one(make_app, generation, clock):
    app = make_app(GENERATION_EVENTS_MAX_STREAMS=1)
    client = app.test_client()
    slots = app.extensions[generation_api.STREAMS_EXTENSION]
    job = generation.add(USER_ID, status="running", stage="rendering")
    stream = client.get(f"/v1/generations/{job}/events", headers=BEARER, buffered=False)
    assert stream.status_code == 200
    scripted(generation, DONE)
    response = submit(client, "wait=10")  # the process's one slot is taken
    assert response.status_code == 202 and "Preference-Applied" not in response.headers
    stream.close()
    assert submit(client, "wait=10").status_code == 200
    assert slots.open_streams() == 0  # the wait gave its slot back


def test_an_idempotent_replay_with_a_wait_answers_the_first_job(client, generation, clock):
    key = {"Idempotency-Key": "lamp-1"}
    first = submit(client, None, **key)
    assert first.status_code == 202
    job_id = first.get_json()["id"]
    generation.jobs[job_id].update(DONE)
    again = submit(client, "wait=10", **key)
    assert (again.status_code, again.get_json()["id"]) == (200, job_id)
    assert again.headers["Preference-Applied"] == "wait=10"
    assert len(generation.jobs) == 1 and clock.sleeps == []  # final already: no poll


def test_a_dry_run_ignores_the_wait(client, generation, clock):
    response = client.post("/v1/generations?dry_run=true", headers={**BEARER, "Prefer": "wait=5"},
                           json=TEXT)
    assert response.status_code == 200 and set(response.get_json()) == {"price", "breakdown"}
    assert "Preference-Applied" not in response.headers
