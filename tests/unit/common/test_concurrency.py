"""The background heartbeat (threads here; green threads under nameko run)."""

from __future__ import annotations

import threading

from services.common.concurrency import Heartbeat


def test_it_beats_until_stopped():
    beats = threading.Semaphore(0)
    with Heartbeat(0.01, lambda: beats.release() or True) as heartbeat:
        for _ in range(3):
            assert beats.acquire(timeout=2)
    assert heartbeat.alive and not heartbeat.thread.is_alive()


def test_a_beat_that_says_false_ends_it_and_a_failing_one_does_not():
    calls = []

    def beat():
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("database briefly away")
        return len(calls) < 3

    heartbeat = Heartbeat(0.01, beat).__enter__()
    heartbeat.thread.join(2)
    assert not heartbeat.alive and len(calls) == 3
    heartbeat.stop()
