"""Retries with idempotency keys, and errors as ``DarkroomError``."""

from __future__ import annotations

import socket
import uuid
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import pytest
from darkroom_client import Client, DarkroomError, OutputURL
from darkroom_client.client import BACKOFF_MAX_S, _retry_after

from .conftest import API_KEY, answer, error, job

GENERATIONS = "/v1/generations"


def test_a_submit_retried_after_5xx_and_a_dropped_connection_sends_one_key(api, client,
                                                                           sleeps):
    api.fail_next(503, "drop", 502)
    api.answer_with("POST", GENERATIONS, answer(202, job()))
    created = client.submit("text-to-image", "a kite", size="512x512")
    assert created.id == job()["id"] and created.status == "queued"
    posts = api.calls("POST", GENERATIONS)
    assert len(posts) == 4
    keys = {p.header("Idempotency-Key") for p in posts}
    assert len(keys) == 1  # the same key on every attempt: the server makes one job
    assert uuid.UUID(keys.pop()).version == 4
    assert all(p.json() == {"type": "text-to-image", "prompt": "a kite", "size": "512x512"}
               for p in posts)
    assert all(p.header("Authorization") == f"Bearer {API_KEY}" for p in posts)
    # exponential back-off with jitter: attempt n waits between half and all of 0.5 * 2**n
    assert len(sleeps) == 3
    for n, slept in enumerate(sleeps):
        assert 0.5 * 2 ** n / 2 <= slept <= min(BACKOFF_MAX_S, 0.5 * 2 ** n)


def test_two_submits_get_two_keys_and_a_given_key_is_sent_as_it_is(api, client):
    api.answer_with("POST", GENERATIONS, answer(202, job()))
    client.submit("text-to-image", "one")
    client.submit("text-to-image", "two")
    client.submit("text-to-image", "three", idempotency_key="mine-1")
    keys = [p.header("Idempotency-Key") for p in api.calls("POST", GENERATIONS)]
    assert keys[0] != keys[1] and keys[2] == "mine-1"


def test_429_waits_what_retry_after_says(api, client, sleeps):
    api.fail_next((429, {"error": {"code": "rate_limited", "message": "slow down",
                                   "details": {}}}, {"Retry-After": "3"}))
    api.answer_with("GET", "/v1/me", answer(200, {"id": "u1", "email": "a@example.com"}))
    assert client.me()["id"] == "u1"
    assert sleeps == [3.0]
    assert len(api.calls("GET", "/v1/me")) == 2


def test_a_retry_after_longer_than_the_client_waits_is_raised_at_once(api, client, sleeps):
    api.answer_with("GET", "/v1/me", error(429, "rate_limited", headers={"Retry-After": "600"}))
    with pytest.raises(DarkroomError) as caught:
        client.me()
    assert (caught.value.status, caught.value.code, caught.value.retry_after) == \
        (429, "rate_limited", 600.0)
    assert sleeps == [] and len(api.calls("GET", "/v1/me")) == 1


def test_retry_after_as_an_http_date():
    when = datetime.now(UTC) + timedelta(seconds=30)
    assert 25 <= _retry_after(format_datetime(when, usegmt=True)) <= 30
    assert _retry_after("soon") is None and _retry_after(None) is None
    assert _retry_after(format_datetime(when - timedelta(minutes=5), usegmt=True)) == 0


def test_other_4xx_are_never_retried_and_carry_their_code(api, client, sleeps):
    api.answer_with("POST", GENERATIONS, error(
        400, "invalid_request", "size is invalid", {"fields": {"size": ["bad size"]}}))
    with pytest.raises(DarkroomError) as caught:
        client.submit("text-to-image", "x", size="100x100")
    err = caught.value
    assert (err.status, err.code, err.message) == (400, "invalid_request", "size is invalid")
    assert err.details == {"fields": {"size": ["bad size"]}}
    assert err.request_id == "req-1"
    assert len(api.calls("POST", GENERATIONS)) == 1 and sleeps == []


def test_retries_end_with_the_last_error(api, client, sleeps):
    api.answer_with("GET", "/v1/billing/balance", error(503, "service_unavailable"))
    with pytest.raises(DarkroomError) as caught:
        client.balance()
    assert (caught.value.status, caught.value.code) == (503, "service_unavailable")
    assert len(api.calls("GET", "/v1/billing/balance")) == 4  # 1 + max_retries
    assert len(sleeps) == 3


def test_an_upload_is_not_replayed_after_a_5xx_or_a_dropped_connection(api, client, sleeps):
    api.answer_with("POST", "/v1/uploads", error(500, "internal_error"))
    with pytest.raises(DarkroomError) as caught:
        client.upload(b"\x89PNG...", filename="a.png")
    assert caught.value.status == 500
    api.fail_next("drop")
    with pytest.raises(DarkroomError) as dropped:
        client.upload(b"\x89PNG...", filename="a.png")
    assert (dropped.value.status, dropped.value.code) == (None, "connection_error")
    assert len(api.calls("POST", "/v1/uploads")) == 2 and sleeps == []
    assert api.calls("POST", "/v1/uploads")[0].header("Idempotency-Key") is None


def test_an_upload_is_retried_when_the_server_asks_to(api, client, sleeps):
    image = {"id": "img-1", "kind": "upload", "content_type": "image/png", "size": 8,
             "width": 1, "height": 1, "created_at": "2026-12-03T18:00:00+00:00"}
    api.answer_with("POST", "/v1/uploads",
                    error(503, "storage_busy", headers={"Retry-After": "1"}),
                    error(429, "rate_limited", headers={"Retry-After": "2"}),
                    answer(201, image))
    uploaded = client.upload(b"\x89PNG....", filename="a.png", content_type="image/png")
    assert (uploaded.id, uploaded.width, uploaded.created_at.year) == ("img-1", 1, 2026)
    assert sleeps == [1.0, 2.0]
    bodies = [r.body for r in api.calls("POST", "/v1/uploads")]
    assert len(bodies) == 3 and all(b'name="file"; filename="a.png"' in b for b in bodies)


def test_a_refused_connection_is_retried_even_for_an_upload(sleeps):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    client = Client(f"http://127.0.0.1:{port}", API_KEY, timeout=2, max_retries=2)
    client._sleep = sleeps.append
    with pytest.raises(DarkroomError) as caught:
        client.upload(b"x", filename="a.png")
    assert (caught.value.status, caught.value.code) == (None, "connection_error")
    assert len(sleeps) == 2


def test_a_body_that_is_not_the_envelope_still_gives_a_code(api, client):
    api.answer_with("DELETE", f"{GENERATIONS}/j1",
                    (409, {"Content-Type": "text/html"}, b"<html>Conflict</html>"))
    with pytest.raises(DarkroomError) as caught:
        client.cancel_job("j1")
    assert (caught.value.status, caught.value.code) == (409, "http_409")
    assert "Conflict" in caught.value.message


def test_a_signed_url_is_downloaded_without_the_api_key(api, client):
    api.answer_with("GET", "/files/o/img-1", (200, {"Content-Type": "image/png"}, b"PNGDATA"))
    link = OutputURL(id="img-1", url=f"{api.url}/files/o/img-1?signature=s")
    assert client.download(link) == b"PNGDATA"
    [fetched] = api.calls("GET", "/files/o/img-1")
    assert fetched.header("Authorization") is None and fetched.header("X-API-Key") is None
    api.answer_with("GET", "/v1/me", answer(200, {"id": "u1"}))
    client.me()
    assert api.calls("GET", "/v1/me")[0].header("Authorization") == f"Bearer {API_KEY}"
