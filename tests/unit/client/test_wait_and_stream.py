"""``wait()``: the server waits first (the submission repeated with its key and
``Prefer: wait``), then polling; ``stream()``: the event stream, reconnecting."""

from __future__ import annotations

import json

import pytest
from darkroom_client import DarkroomError, WaitTimeout

from .conftest import answer, error, job

GENERATIONS = "/v1/generations"
JOB_ID = job()["id"]
DONE = job(status="succeeded", outputs=["img-1"], output_urls=[{
    "id": "img-1", "url": "http://files.example/o/img-1?signature=s",
    "url_expires_at": "2026-12-03T18:05:00+00:00"}])


def test_wait_has_the_server_wait_with_the_same_key(api, client, sleeps):
    applied = {"Preference-Applied": "wait=60"}
    api.answer_with("POST", GENERATIONS, answer(202, job()),  # the submission itself
                    answer(202, job(status="running"), applied),  # waited 60 s: still running
                    answer(200, DONE, applied))
    created = client.submit("text-to-image", "a kite", wait=5)
    assert created.status == "queued" and not created.done
    done = created.wait()
    assert (done.status, [u.id for u in done.output_urls]) == ("succeeded", ["img-1"])
    assert done.output_urls[0].url_expires_at.minute == 5
    posts = api.calls("POST", GENERATIONS)
    assert [p.header("Prefer") for p in posts] == ["wait=5", "wait=60", "wait=60"]
    assert len({p.header("Idempotency-Key") for p in posts}) == 1
    assert len({p.body for p in posts}) == 1  # the same body: the same job, no second one
    assert api.calls("GET", f"{GENERATIONS}/{JOB_ID}") == [] and sleeps == []


def test_wait_polls_when_the_server_does_not_wait(api, client, sleeps):
    """No ``Preference-Applied``: the gateway had no free waiting slot."""
    api.answer_with("POST", GENERATIONS, answer(202, job()))
    api.answer_with("GET", f"{GENERATIONS}/{JOB_ID}", answer(200, job(status="running")),
                    answer(200, job(status="running")), answer(200, job(status="running")),
                    answer(200, DONE))
    done = client.submit("text-to-image", "a kite").wait(timeout=30)
    assert done.status == "succeeded"
    first, again = [p.header("Prefer") for p in api.calls("POST", GENERATIONS)]
    assert first is None and again in ("wait=29", "wait=30")  # what is left of the timeout
    assert len(api.calls("GET", f"{GENERATIONS}/{JOB_ID}")) == 4
    assert sleeps == [0.25, 0.5, 1.0, 2.0]  # doubling up to poll_interval


def test_wait_by_id_polls_and_times_out(api, client, sleeps):
    api.answer_with("GET", f"{GENERATIONS}/{JOB_ID}", answer(200, job(status="running")))
    with pytest.raises(WaitTimeout) as caught:
        client.wait(JOB_ID, timeout=0.3, poll_interval=0.05)
    assert caught.value.code == "wait_timeout" and caught.value.job.status == "running"
    assert api.calls("POST", GENERATIONS) == []


def test_a_job_that_has_ended_is_not_waited_for(api, client):
    api.answer_with("POST", GENERATIONS, answer(200, DONE, {"Preference-Applied": "wait=10"}))
    done = client.submit("text-to-image", "a kite", wait=10)
    assert done.wait() is done and len(api.requests) == 1




def sse(*events: tuple[str, dict, str], end: str = "") -> tuple:
    body = "retry: 10\n\n: keepalive\n\n"
    for name, data, ident in events:
        body += f"event: {name}\nid: {ident}\ndata: {json.dumps(data)}\n\n"
    return 200, {"Content-Type": "text/event-stream"}, (body + end).encode()


def test_stream_yields_each_change_until_the_job_ends(api, client, sleeps):
    path = f"{GENERATIONS}/{JOB_ID}/events"
    api.answer_with("GET", path,
                    sse(("job", job(), "a1"), ("job", job(status="running", progress=0.5), "a2")),
                    error(429, "too_many_streams", headers={"Retry-After": "1"}),
                    sse(("job", job(status="running", progress=0.5), "a2"), ("job", DONE, "a3")))
    events = list(client.stream(JOB_ID))
    assert [(e.event, e.id, e.job.status, e.job.progress) for e in events] == [
        ("job", "a1", "queued", 0.0), ("job", "a2", "running", 0.5),
        ("job", "a2", "running", 0.5), ("job", "a3", "succeeded", 1.0)]
    assert events[-1].job.output_urls[0].id == "img-1"
    gets = api.calls("GET", path)
    # closed by the server before the end: opened again after its `retry` (10 ms), from the
    # last event's id; the 429 waited its Retry-After
    assert [g.header("Last-Event-ID") for g in gets] == [None, "a2", "a2"]
    assert all(g.header("Accept") == "text/event-stream" for g in gets)
    assert sleeps == [0.01, 1.0]


def test_stream_ends_on_an_error_event_and_raises_a_4xx(api, client):
    path = f"{GENERATIONS}/{JOB_ID}/events"
    api.answer_with("GET", path, sse(("error", {"error": {"code": "not_found",
                                                          "message": "gone"}}, "e1")))
    [event] = client.stream(JOB_ID)
    assert (event.event, event.error["code"], event.job) == ("error", "not_found", None)
    api.answers[("GET", path)] = [error(404, "not_found")]
    with pytest.raises(DarkroomError) as caught:
        next(client.stream(JOB_ID))
    assert (caught.value.status, caught.value.code) == (404, "not_found")


def test_a_wait_over_60_seconds_asks_for_60(api, client):
    api.answer_with("POST", GENERATIONS, answer(202, job()))
    client.submit("text-to-image", "a kite", wait=600)
    assert api.calls("POST", GENERATIONS)[0].header("Prefer") == "wait=60"


def test_a_refused_repeat_falls_back_to_polling(api, client, sleeps):
    api.answer_with("POST", GENERATIONS, answer(202, job()),
                    error(403, "processing_restricted"))
    api.answer_with("GET", f"{GENERATIONS}/{JOB_ID}", answer(200, DONE))
    done = client.submit("text-to-image", "a kite").wait()
    assert done.status == "succeeded" and len(api.calls("POST", GENERATIONS)) == 2
    assert len(api.calls("GET", f"{GENERATIONS}/{JOB_ID}")) == 1
