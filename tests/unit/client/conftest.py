"""A fake Darkroom API on loopback (a real HTTP server: the client's own
transport, retries and streaming run as they do against the gateway), and a
client of it whose back-off sleeps are recorded instead of slept."""

from __future__ import annotations

import json
from collections import defaultdict
from urllib.parse import parse_qs, urlsplit

import pytest
from darkroom_client import Client

from tests.fakes.providers import FakeHTTPServer, Recorded, Response

API_KEY = "drk_test0000_secretsecretsecret"


def job(job_id: str = "0190a5c3-0000-7000-8000-000000000001", status: str = "queued",
        **extra) -> dict:
    """A job as the API shows it (docs/api.md, "The job")."""
    return {"id": job_id, "type": "text-to-image", "status": status, "attempt": 1,
            "progress": 1.0 if status == "succeeded" else 0.0, "stage": status,
            "queue_position": None, "price": 1, "outputs": [], "error": None,
            "prompt": "a kite", "negative_prompt": None, "prompt_redacted": False,
            "params": {"n": 1, "size": "512x512"}, "shots": None, "webhook_url": None,
            "webhook_events": None, "provider": None, "model": None,
            "created_at": "2026-12-03T18:00:00+00:00", "started_at": None,
            "finished_at": None, "output_urls": [], **extra}


def answer(status: int, body=None, headers: dict | None = None) -> Response:
    payload = b"" if body is None else json.dumps(body).encode()
    return status, {"Content-Type": "application/json", **(headers or {})}, payload


def error(status: int, code: str, message: str = "refused", details: dict | None = None,
          headers: dict | None = None) -> Response:
    return answer(status, {"error": {"code": code, "message": message,
                                     "details": details or {}}},
                  {"X-Request-Id": "req-1", **(headers or {})})


class FakeDarkroom(FakeHTTPServer):
    """Answers ``(method, path)`` with the responses queued for it by
    ``answer_with`` (in turn, the last one again and again); scripted
    behaviours (``fail_next``: "drop", a status, ``(status, body, headers)``)
    come first, for every request."""

    def __init__(self):
        super().__init__()
        self.answers: dict[tuple[str, str], list] = defaultdict(list)

    def answer_with(self, method: str, path: str, *responses) -> None:
        self.answers[(method, path)].extend(responses)

    def scripted(self, request: Recorded) -> bool:
        return True

    def route(self, request: Recorded) -> Response:
        queued = self.answers.get((request.method, urlsplit(request.path).path))
        if not queued:
            return error(404, "not_found", "no such route in the fake")
        response = queued.pop(0) if len(queued) > 1 else queued[0]
        return response(request) if callable(response) else response

    def calls(self, method: str, path: str) -> list[Recorded]:
        return [r for r in self.requests
                if r.method == method and urlsplit(r.path).path == path]


def query(request: Recorded) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(urlsplit(request.path).query).items()}


@pytest.fixture
def api():
    with FakeDarkroom() as fake:
        yield fake


@pytest.fixture
def sleeps() -> list[float]:
    return []


@pytest.fixture
def client(api, sleeps):
    with Client(api.url, API_KEY, timeout=5, max_retries=3) as c:
        c._sleep = sleeps.append
        yield c
