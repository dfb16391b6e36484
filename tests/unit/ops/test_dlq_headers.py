"""Dead-letter header handling: names, replay headers, descriptions."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from ops.dlq import describe, original_queue, replay_headers, resolve
from ops.errors import OpsError
from services.common.messaging import republish_headers

DEAD = {
    "nameko.correlation_id": "req-1",
    "nameko.call_id_stack": ["gateway.x.1", "probe.handle_poked.2"],
    "x-darkroom-error": "RuntimeError: boom",
    "x-darkroom-traceback": "Traceback ...",
    "x-darkroom-attempt": 3,
    "x-darkroom-attempts": 3,
    "x-darkroom-event": "probe.poked",
    "x-darkroom-service": "probe",
    "x-darkroom-original-queue": "evt-probe-poked--probe.handle_poked",
    "x-darkroom-dead-lettered-at": "2026-01-01T00:00:00Z",
    "x-death": [{"queue": "darkroom.retry.200ms", "count": 1}],
    "x-first-death-queue": "darkroom.retry.200ms",
}


def test_resolve_accepts_both_names():
    assert resolve("evt-a--b.c") == "dlq.evt-a--b.c"
    assert resolve("dlq.evt-a--b.c") == "dlq.evt-a--b.c"
    for bad in ("", "  ", "dlq."):
        with pytest.raises(OpsError):
            resolve(bad)


def test_replay_keeps_nameko_context_drops_bookkeeping_and_counts():
    headers = replay_headers(DEAD)
    assert headers == {
        "nameko.correlation_id": "req-1",
        "nameko.call_id_stack": ["gateway.x.1", "probe.handle_poked.2"],
        "x-darkroom-replays": 1,
    }
    assert replay_headers({**DEAD, "x-darkroom-replays": 2})["x-darkroom-replays"] == 3
    assert replay_headers(None) == {"x-darkroom-replays": 1}
    assert DEAD["x-darkroom-attempts"] == 3  # the input is not modified


def test_republish_headers_keeps_only_context_and_the_replay_count():
    assert republish_headers({**DEAD, "x-darkroom-replays": 1}) == {
        "nameko.correlation_id": "req-1",
        "nameko.call_id_stack": ["gateway.x.1", "probe.handle_poked.2"],
        "x-darkroom-replays": 1,
    }
    assert republish_headers(None) == {}


def test_original_queue_prefers_our_header_then_rabbitmqs_then_the_name():
    assert original_queue("dlq.q", DEAD) == "evt-probe-poked--probe.handle_poked"
    assert original_queue("dlq.q", {"x-first-death-queue": "evt-x"}) == "evt-x"
    assert original_queue("dlq.evt-y--s.m", {}) == "evt-y--s.m"


def message(body, content_type="application/json", content_encoding="utf-8", headers=DEAD):
    return SimpleNamespace(body=body, content_type=content_type, content_encoding=content_encoding,
                           headers=headers)


def test_describe_a_dead_letter():
    letter = describe("dlq.q", message('{"key": "k1"}'))
    assert letter.to_dict() == {
        "event": "probe.poked",
        "error": "RuntimeError: boom",
        "attempts": 3,
        "replays": 0,
        "dead_lettered_at": "2026-01-01T00:00:00Z",
        "original_queue": "evt-probe-poked--probe.handle_poked",
        "correlation_id": "req-1",
        "content_type": "application/json",
        "body": {"key": "k1"},
        "traceback": "Traceback ...",
        "expires_at": None,  # no TTL known
    }


def test_a_dead_letter_expires_ttl_after_it_entered_its_queue():
    ttl = 14 * 86_400_000
    assert describe("dlq.q", message("{}"), ttl).expires_at == "2026-01-15T00:00:00Z"
    restamped = {**DEAD, "x-darkroom-restamped-at": "2026-03-01T12:00:00Z"}
    assert describe("dlq.q", message("{}", headers=restamped), ttl).expires_at == (
        "2026-03-15T12:00:00Z")
    assert describe("dlq.q", message("{}", headers={}), ttl).expires_at is None  # dlq.broker

@pytest.mark.parametrize("body, content_type, expected", [
    (b'{"key": "k1"}', "application/json", {"key": "k1"}),
    (b'{"key": oops', "application/json", '{"key": oops'),
    (b"plain words", "text/plain", "plain words"),
    (b"\xff\xfe", None, "\ufffd\ufffd"),
])
def test_describe_shows_any_body(body, content_type, expected):
    letter = describe("dlq.q", message(body, content_type, None, headers={}))
    assert letter.body == expected
    assert letter.attempts is None and letter.replays == 0 and letter.original_queue == "q"
