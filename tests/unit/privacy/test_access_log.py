"""The gateway's access-log facts: what a fact holds (route template, no
query string, a truncated network), that the response never waits for the
broker (a full queue drops and counts), and the publishing thread's retries."""

from __future__ import annotations

import threading
import time

import pytest

from gateway import access_log
from gateway.app import create_app
from services.common import contracts
from tests.unit.gateway.conftest import BASE_CONFIG, BEARER, USER_ID, FakePool


@pytest.mark.parametrize("address, network", [
    ("203.0.113.77", "203.0.113.0/24"),
    ("::ffff:198.51.100.9", "198.51.100.0/24"),
    ("2001:db8:abcd:12:1:2:3:4", "2001:db8:abcd::/48"),
    ("not an address", None),
    (None, None),
])
def test_the_client_is_known_by_its_network_only(address, network):
    logged = access_log.fact("GET", "/v1/me", 200, None, address)
    assert logged["network"] == network
    if network:  # the address itself is never in the fact
        assert address not in str(logged)


def test_a_fact_fits_its_contract():
    fact = access_log.fact("GET", "/v1/images/<uuid:image_id>", 200, USER_ID, "203.0.113.77")
    event = contracts.load_event("gateway.request_logged",
                                 contracts.make_event("gateway.request_logged", fact))
    assert event["network"] == "203.0.113.0/24" and str(event["user_id"]) == USER_ID


class RecordingPublisher:
    def __init__(self, fail_times=0, block: threading.Event | None = None):
        self.bodies, self.fail_times, self.block = [], fail_times, block

    def publish(self, body, **kwargs):
        if self.block is not None:
            self.block.wait(5)
        if self.fail_times:
            self.fail_times -= 1
            raise ConnectionError("broker away")
        self.bodies.append((body, kwargs))


def dropped(reason: str) -> float:
    return access_log.DROPPED.labels(reason)._value.get()


def test_each_request_becomes_one_fact_with_its_route_template(monkeypatch):
    recorder = RecordingPublisher()
    publisher = access_log.AccessLogPublisher("amqp://unused", publisher=recorder)
    monkeypatch.setattr(access_log, "from_config", lambda config: publisher)
    client = create_app({**BASE_CONFIG}, rpc=FakePool()).test_client()
    client.get(f"/v1/images/{USER_ID}?secret=query", headers={**BEARER, "X-Request-Id": "req-1"})
    client.get("/healthz")  # not a user's request: not published
    client.post("/v1/auth/login", json={}, environ_base={"REMOTE_ADDR": "2001:db8::1"})
    for _ in range(50):
        if len(recorder.bodies) == 2:
            break
        time.sleep(0.05)
    (first, options), (second, _) = recorder.bodies
    assert first["route"] == "/v1/images/<uuid:image_id>"  # never the path or query
    assert first["user_id"] == USER_ID and first["method"] == "GET"
    assert first["network"] == "127.0.0.0/24" and "secret" not in str(first)
    assert options["routing_key"] == "request_logged"
    assert options["extra_headers"] == {"nameko.correlation_id": "req-1"}
    assert second["user_id"] is None and second["network"] == "2001:db8::/48"
    assert (second["route"], second["status"]) == ("/v1/auth/login", 400)


def test_a_full_queue_drops_and_counts_without_waiting():
    release = threading.Event()
    publisher = access_log.AccessLogPublisher("amqp://unused", max_queue=2,
                                              publisher=RecordingPublisher(block=release))
    before = dropped("queue_full")
    fact = access_log.fact("GET", "/v1/me", 200, None, None)
    started = time.monotonic()
    results = [publisher.submit(fact) for _ in range(10)]
    assert time.monotonic() - started < 0.5  # never blocked by the stuck publisher
    assert results.count(False) >= 7 and dropped("queue_full") - before == results.count(False)
    release.set()


def test_a_fact_the_broker_refuses_is_retried_then_dropped(monkeypatch):
    monkeypatch.setattr(access_log, "RETRY_PAUSE_SECONDS", 0)
    flaky = RecordingPublisher(fail_times=2)
    publisher = access_log.AccessLogPublisher("amqp://unused", publisher=flaky)
    fact = access_log.fact("GET", "/v1/me", 200, None, None)
    assert publisher.publish_one(fact) is True and len(flaky.bodies) == 1
    before = dropped("publish_failed")
    down = access_log.AccessLogPublisher("amqp://unused", publisher=RecordingPublisher(9))
    assert down.publish_one(fact) is False
    assert dropped("publish_failed") - before == 1


def test_publishing_can_be_switched_off():
    assert access_log.from_config({"AMQP_URI": "amqp://x", "ACCESS_LOG_EVENTS": "false"}) is None
    on = access_log.from_config({"AMQP_URI": "amqp://x", "ACCESS_LOG_QUEUE_SIZE": 7})
    assert on is not None and on.queue.maxsize == 7
