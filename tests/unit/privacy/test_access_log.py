"""The gateway's access-log facts: what a fact holds (its own id, the route
template, no query string, a truncated network), that the response never
waits for the broker (a full queue drops and counts facts), that the
publishing thread sends what is queued in batches of at most BATCH_MAX, and
its retries."""

from __future__ import annotations

import math
import threading
import time
import uuid

import pytest
from marshmallow import ValidationError

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


def test_a_batch_of_facts_fits_its_contract():
    fact = access_log.fact("GET", "/v1/images/<uuid:image_id>", 200, USER_ID, "203.0.113.77")
    other = access_log.fact("POST", "/v1/auth/login", 400, None, None)
    assert fact["id"] != other["id"]  # each fact its own id
    event = contracts.load_event(access_log.EVENT,
                                 contracts.make_event(access_log.EVENT, {"entries": [fact, other]}))
    first, second = event["entries"]
    assert first["id"] == uuid.UUID(fact["id"]) and second["id"] == uuid.UUID(other["id"])
    assert first["network"] == "203.0.113.0/24" and str(first["user_id"]) == USER_ID
    assert (second["user_id"], second["status"]) == (None, 400)


@pytest.mark.parametrize("entries, field", [
    ([], "entries"),
    ([access_log.fact("GET", "/v1/me", 200, None, None)] * (access_log.BATCH_MAX + 1), "entries"),
    ([{**access_log.fact("GET", "/v1/me", 200, None, None), "status": 700}], "status"),
    ([{**access_log.fact("GET", "/v1/me", 200, None, None), "method": "X" * 11}], "method"),
    ([{k: v for k, v in access_log.fact("GET", "/v1/me", 200, None, None).items() if k != "id"}],
     "id"),
])
def test_a_batch_that_does_not_fit_is_refused(entries, field):
    with pytest.raises(ValidationError) as info:
        contracts.make_event(access_log.EVENT, {"entries": entries})
    assert field in str(info.value.messages)


def test_the_batch_cap_is_five_hundred():
    assert access_log.BATCH_MAX == 500
    full = [access_log.fact("GET", "/v1/me", 200, None, None) for _ in range(500)]
    assert len(contracts.make_event(access_log.EVENT, {"entries": full})["entries"]) == 500


class RecordingPublisher:
    def __init__(self, fail_times=0, block: threading.Event | None = None):
        self.bodies, self.fail_times, self.block = [], fail_times, block
        self.entered = threading.Event()

    def publish(self, body, **kwargs):
        self.entered.set()
        if self.block is not None:
            self.block.wait(5)
        if self.fail_times:
            self.fail_times -= 1
            raise ConnectionError("broker away")
        self.bodies.append((body, kwargs))

    def entries(self) -> list[dict]:
        return [entry for body, _ in self.bodies for entry in body["entries"]]


def dropped(reason: str) -> float:
    return access_log.DROPPED.labels(reason)._value.get()


def wait_until(condition, timeout=5.0):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_each_request_becomes_one_fact_with_its_route_template(monkeypatch):
    recorder = RecordingPublisher()
    publisher = access_log.AccessLogPublisher("amqp://unused", publisher=recorder)
    monkeypatch.setattr(access_log, "from_config", lambda config: publisher)
    client = create_app({**BASE_CONFIG}, rpc=FakePool()).test_client()
    client.get(f"/v1/images/{USER_ID}?secret=query", headers={**BEARER, "X-Request-Id": "req-1"})
    wait_until(lambda: len(recorder.entries()) == 1)  # light traffic: published on its own
    client.get("/healthz")  # not a user's request: not published
    client.post("/v1/auth/login", json={}, environ_base={"REMOTE_ADDR": "2001:db8::1"})
    wait_until(lambda: len(recorder.entries()) == 2)
    time.sleep(0.05)
    (first_body, options), (second_body, _) = recorder.bodies
    (first,), (second,) = first_body["entries"], second_body["entries"]
    assert first["route"] == "/v1/images/<uuid:image_id>"  # never the path or query
    assert first["user_id"] == USER_ID and first["method"] == "GET"
    assert first["network"] == "127.0.0.0/24" and "secret" not in str(first)
    assert options["routing_key"] == "requests_logged"
    assert options["extra_headers"] == {"nameko.correlation_id": "req-1"}
    assert second["user_id"] is None and second["network"] == "2001:db8::/48"
    assert (second["route"], second["status"]) == ("/v1/auth/login", 400)
    assert first["id"] != second["id"]


def test_a_burst_goes_out_in_batches_of_at_most_the_cap():
    release = threading.Event()
    recorder = RecordingPublisher(block=release)
    publisher = access_log.AccessLogPublisher("amqp://unused", publisher=recorder)
    publisher.submit(access_log.fact("GET", "/v1/me", 200, None, None), "alone")
    assert recorder.entered.wait(5)  # the thread holds the first fact, stuck on the broker
    burst = 2 * access_log.BATCH_MAX + 50
    facts = [access_log.fact("GET", f"/v1/r{i}", 200, None, None) for i in range(burst)]
    assert all(publisher.submit(f, f"req-{i}") for i, f in enumerate(facts))
    release.set()
    wait_until(lambda: len(recorder.entries()) == burst + 1)
    time.sleep(0.05)
    sizes = [len(body["entries"]) for body, _ in recorder.bodies]
    assert sizes == [1, access_log.BATCH_MAX, access_log.BATCH_MAX, 50]
    assert len(sizes) - 1 == math.ceil(burst / access_log.BATCH_MAX)
    assert [e["id"] for e in recorder.entries()[1:]] == [f["id"] for f in facts]  # in order, once
    # a batch of one keeps its request's correlation id; a batch of many has none
    headers = [options["extra_headers"] for _, options in recorder.bodies]
    assert headers == [{"nameko.correlation_id": "alone"}, {}, {}, {}]
    assert publisher.published == burst + 1


def test_a_full_queue_drops_and_counts_without_waiting():
    release = threading.Event()
    recorder = RecordingPublisher(block=release)
    publisher = access_log.AccessLogPublisher("amqp://unused", max_queue=2, publisher=recorder)
    fact = access_log.fact("GET", "/v1/me", 200, None, None)
    assert publisher.submit(fact)
    assert recorder.entered.wait(5)  # the thread is stuck publishing that one
    before = dropped("queue_full")
    started = time.monotonic()
    results = [publisher.submit(fact) for _ in range(10)]
    assert time.monotonic() - started < 0.5  # never blocked by the stuck publisher
    assert results == [True, True] + [False] * 8
    assert dropped("queue_full") - before == 8  # each fact counted
    release.set()
    wait_until(lambda: len(recorder.entries()) == 3)


def test_a_batch_the_broker_refuses_is_retried_then_dropped_fact_by_fact(monkeypatch):
    monkeypatch.setattr(access_log, "RETRY_PAUSE_SECONDS", 0)
    flaky = RecordingPublisher(fail_times=2)
    publisher = access_log.AccessLogPublisher("amqp://unused", publisher=flaky)
    fact = access_log.fact("GET", "/v1/me", 200, None, None)
    assert publisher.publish([fact]) is True and len(flaky.bodies) == 1
    before = dropped("publish_failed")
    down = access_log.AccessLogPublisher("amqp://unused", publisher=RecordingPublisher(9))
    batch = [access_log.fact("GET", "/v1/me", 200, None, None) for _ in range(5)]
    assert down.publish(batch) is False
    assert dropped("publish_failed") - before == 5


def test_a_fact_that_does_not_fit_is_counted_and_the_others_go_out():
    release = threading.Event()
    recorder = RecordingPublisher(block=release)
    publisher = access_log.AccessLogPublisher("amqp://unused", publisher=recorder)
    publisher.submit(access_log.fact("GET", "/v1/me", 200, None, None))
    assert recorder.entered.wait(5)
    before = dropped("invalid")
    publisher.submit({**access_log.fact("GET", "/v1/me", 200, None, None), "status": 999})
    publisher.submit(access_log.fact("GET", "/v1/me", 202, None, None))
    release.set()  # both are taken as one batch, which does not fit its contract
    wait_until(lambda: len(recorder.entries()) == 2)
    assert recorder.entries()[-1]["status"] == 202
    assert dropped("invalid") - before == 1
    publisher.submit(access_log.fact("GET", "/v1/me", 201, None, None))  # the thread goes on
    wait_until(lambda: len(recorder.entries()) == 3)
    assert recorder.entries()[-1]["status"] == 201


def test_publishing_can_be_switched_off():
    assert access_log.from_config({"AMQP_URI": "amqp://x", "ACCESS_LOG_EVENTS": "false"}) is None
    on = access_log.from_config({"AMQP_URI": "amqp://x", "ACCESS_LOG_QUEUE_SIZE": 7})
    assert on is not None and on.queue.maxsize == 7


def test_facts_within_the_batch_wait_share_one_event_and_later_ones_do_not():
    recorder = RecordingPublisher()
    publisher = access_log.AccessLogPublisher("amqp://unused", publisher=recorder, batch_wait=0.3)
    for i in range(5):  # a few requests a few milliseconds apart
        publisher.submit(access_log.fact("GET", f"/v1/r{i}", 200, None, None), f"req-{i}")
        time.sleep(0.01)
    wait_until(lambda: len(recorder.entries()) == 5)
    time.sleep(0.6)  # past the wait: the next fact starts a new event
    publisher.submit(access_log.fact("GET", "/v1/later", 200, None, None), "req-later")
    wait_until(lambda: len(recorder.entries()) == 6)
    assert [len(body["entries"]) for body, _ in recorder.bodies] == [5, 1]
