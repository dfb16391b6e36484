"""services.common.messaging against real RabbitMQ: retries with backoff, dead
letters, poison messages, header hygiene, idempotence, crash safety and the
transactional outbox.

The probe service (tests/integration/probe_service.py) runs through `nameko run`
in a vhost of its own, with retry delays of 200 and 400 ms (3 attempts).
"""

from __future__ import annotations

import json
import signal
import time
import urllib.parse
import uuid
from contextlib import contextmanager
from datetime import timedelta
from types import SimpleNamespace

import pytest
import requests
from kombu import Connection, Exchange, Queue
from sqlalchemy import MetaData, text, update
from sqlalchemy.orm import Session

from services.common.db import make_engine
from services.common.messaging import dlq_name
from tests.conftest import wait_for
from tests.integration.probe_service import (
    PROBE_QUEUE,
    count_effects,
    poke,
    queue_state,
    run_times,
    start_probe,
)

pytestmark = pytest.mark.integration

PROBE_DLQ = dlq_name(PROBE_QUEUE)
RETRY_QUEUES = ["darkroom.retry.200ms", "darkroom.retry.400ms"]


@pytest.fixture(scope="module")
def probe(make_vhost, make_database, start_process, tmp_path_factory, rabbit_server):
    amqp_uri, vhost = make_vhost("messaging")
    workdir = tmp_path_factory.mktemp("probe")
    db_url = make_database("probe")
    handle = SimpleNamespace(amqp_uri=amqp_uri, vhost=vhost, mgmt=rabbit_server[1], db_url=db_url)

    def start():
        handle.proc = start_probe(start_process, workdir, amqp_uri, db_url)
        handle.state_dir = handle.proc.state_dir
        return handle.proc

    handle.start = start
    start()
    handle.engine = make_engine(db_url)
    yield handle
    handle.engine.dispose()


def effects(probe, key: str) -> int:
    with probe.engine.connect() as conn:
        return count_effects(conn, key)


def runs(probe, key: str) -> int:
    return len(run_times(probe.state_dir, key))


def raw_body(message) -> bytes:
    """py-amqp decodes bodies that name their encoding; undo that."""
    body = message.body
    return body.encode(message.content_encoding or "utf-8") if isinstance(body, str) else body


def take_dead_letter(amqp_uri: str, marker: str, timeout: float = 15.0):
    """Wait for the dead letter whose body contains ``marker``; consume it and
    leave every other one in the queue."""

    def find():
        with Connection(amqp_uri) as conn:
            channel = conn.channel()
            queue = Queue(PROBE_DLQ, channel=channel, no_declare=True)
            found = None
            while (message := queue.get(no_ack=False)) is not None:
                if found is None and marker.encode() in raw_body(message):
                    found = message
                    message.ack()
            channel.close()  # the others go back, unacked
            return found

    return wait_for(find, timeout, 0.2, f"a dead letter containing {marker}")


def dead_letter_bodies(amqp_uri: str) -> list[bytes]:
    """Every body in the DLQ, left there."""
    with Connection(amqp_uri) as conn:
        channel = conn.channel()
        queue = Queue(PROBE_DLQ, channel=channel, no_declare=True)
        bodies = []
        while (message := queue.get(no_ack=False)) is not None:
            bodies.append(raw_body(message))
        channel.close()
        return bodies


def dead_letter_count(amqp_uri: str, marker: str) -> int:
    return sum(marker.encode() in body for body in dead_letter_bodies(amqp_uri))


def assert_queues_empty(probe):
    for name in [PROBE_QUEUE, *RETRY_QUEUES]:
        assert queue_state(probe.amqp_uri, name)[0] == 0, f"{name} still holds messages"
    vhost = urllib.parse.quote(probe.vhost, safe="")

    def nothing_unacked():
        info = requests.get(f"{probe.mgmt}/api/queues/{vhost}/{PROBE_QUEUE}", timeout=5).json()
        return info.get("messages_unacknowledged", 1) == 0

    wait_for(nothing_unacked, 15, 0.5, f"no unacknowledged message on {PROBE_QUEUE}")


def new_key() -> str:
    return f"k-{uuid.uuid4().hex[:12]}"


def test_handler_failing_twice_is_retried_with_backoff_and_applied_once(probe):
    key = new_key()
    poke(probe.amqp_uri, key=key, fail_times=2)

    wait_for(lambda: effects(probe, key) == 1, 15, what="the side effect")
    times = run_times(probe.state_dir, key)
    assert len(times) == 3
    # retried after ~200 ms, then ~400 ms (TTL queues; never early)
    assert times[1] - times[0] >= 0.18
    assert times[2] - times[1] >= 0.38
    time.sleep(1.0)  # nothing else arrives later
    assert runs(probe, key) == 3 and effects(probe, key) == 1
    assert dead_letter_count(probe.amqp_uri, key) == 0


def test_handler_always_failing_is_dead_lettered_with_its_story(probe):
    key = new_key()
    correlation_id = f"corr-{key}"
    body = poke(probe.amqp_uri, key=key, fail_times=-1,
                headers={"nameko.correlation_id": correlation_id, "nameko.call_id_stack": ["test.0"]})

    message = take_dead_letter(probe.amqp_uri, key)
    assert json.loads(message.body) == body
    assert message.content_type == "application/json"
    headers = message.headers
    assert headers["nameko.correlation_id"] == correlation_id
    assert headers["x-darkroom-error"] == f"RuntimeError: probe failure on run 3 of {key}"
    assert "Traceback" in headers["x-darkroom-traceback"]
    assert headers["x-darkroom-attempts"] == 3
    assert headers["x-darkroom-original-queue"] == PROBE_QUEUE
    assert headers["x-darkroom-event"] == "probe.poked"
    assert headers["x-darkroom-service"] == "probe"
    assert headers["x-darkroom-dead-lettered-at"].endswith("Z")
    assert "x-death" not in headers  # RabbitMQ's own bookkeeping stays behind
    assert message.properties.get("delivery_mode") == 2

    time.sleep(1.0)
    assert runs(probe, key) == 3
    assert effects(probe, key) == 0
    assert dead_letter_count(probe.amqp_uri, key) == 0  # exactly one was there
    assert_queues_empty(probe)


def test_non_retryable_error_is_dead_lettered_at_once(probe):
    key = new_key()
    poke(probe.amqp_uri, key=key, fail_times=-1, non_retryable=True)
    message = take_dead_letter(probe.amqp_uri, key)
    assert message.headers["x-darkroom-attempts"] == 1
    assert message.headers["x-darkroom-error"] == f"NonRetryable: probe gives up on {key}"
    assert runs(probe, key) == 1


@pytest.mark.parametrize(
    "case",
    ["fails the schema", "not an object", "not JSON", "foreign content type", "no content type"],
)
def test_invalid_payload_goes_to_the_dlq_at_once_and_the_handler_never_runs(probe, case):
    key = new_key()
    content_type = "application/json"
    if case == "fails the schema":
        from services.common import contracts

        body = {**contracts.make_event("probe.poked", {"key": key}), "fail_times": "many"}
        raw = json.dumps(body).encode()
    elif case == "not an object":
        raw = json.dumps([key]).encode()
    elif case == "not JSON":
        raw = b'{"key": "' + key.encode() + b'", oops'
    elif case == "foreign content type":
        raw, content_type = f"key={key}".encode(), "text/plain"
    else:
        raw, content_type = f"key={key}".encode(), None
    poke(probe.amqp_uri, raw=raw, content_type=content_type,
         headers={"nameko.correlation_id": f"corr-{key}"})

    message = take_dead_letter(probe.amqp_uri, key)
    assert raw_body(message) == raw
    if content_type:
        assert message.content_type == content_type
    assert message.headers["x-darkroom-attempts"] == 1
    assert message.headers["x-darkroom-original-queue"] == PROBE_QUEUE
    assert message.headers["nameko.correlation_id"] == f"corr-{key}"
    if case == "fails the schema":
        assert "fail_times" in message.headers["x-darkroom-error"]
    assert runs(probe, key) == 0

    # the service survived the poison message and goes on working
    assert probe.proc.alive(), probe.proc.logs()[-3000:]
    after = new_key()
    poke(probe.amqp_uri, key=after)
    wait_for(lambda: effects(probe, after) == 1, 15, what="a good message after a bad one")
    assert_queues_empty(probe)


@contextmanager
def forwarded_events(probe, key: str):
    """A queue bound to ``probe.forwarded`` for one test; yields a function that
    drains it (the messages received so far)."""
    with Connection(probe.amqp_uri) as conn:
        exchange = Exchange("probe.events", type="topic", durable=True)
        queue = Queue(f"test-forwarded-{key}", exchange=exchange, routing_key="forwarded",
                      durable=False, auto_delete=False)
        queue(conn.default_channel).declare()
        received = []

        def drain():
            while (message := queue(conn.default_channel).get(no_ack=True)) is not None:
                received.append(message)
            return received

        try:
            yield drain
        finally:
            queue(conn.default_channel).delete()


def test_retry_bookkeeping_does_not_leak_into_downstream_events(probe):
    key = new_key()
    correlation_id = f"corr-{key}"
    with forwarded_events(probe, key) as drain:
        # fails once: the delivery that succeeds is a retry, full of x-* headers
        poke(probe.amqp_uri, key=key, fail_times=1, forward=True,
             headers={"nameko.correlation_id": correlation_id})
        message = wait_for(drain, 15, 0.2, "the forwarded event")[0]

    assert runs(probe, key) == 2
    assert json.loads(message.body)["key"] == key
    assert message.headers["nameko.correlation_id"] == correlation_id
    assert all(name.startswith("nameko.") for name in message.headers), message.headers


def test_an_event_dispatched_in_a_rolled_back_transaction_is_never_published(probe):
    key = new_key()
    with forwarded_events(probe, key) as drain:
        # the first run writes its effect and dispatches, then fails: both roll back
        poke(probe.amqp_uri, key=key, fail_times=1, fail_after_forward=True, forward=True)
        wait_for(lambda: effects(probe, key) == 1, 15, what="the retried run's effect")
        time.sleep(1.5)  # three relay intervals: nothing else may arrive
        forwarded = drain()
    assert runs(probe, key) == 2
    assert [json.loads(m.body)["key"] for m in forwarded] == [key]
    assert outbox_rows(probe) == 0


def test_the_relay_publishes_what_a_crash_left_in_the_outbox(probe):
    """A process killed between its commit and its publish leaves the row: the
    relay publishes it (with its headers) and deletes it."""
    from services.common import contracts
    from services.common.ids import utcnow
    from services.common.outbox import OutboxRow, enqueue, outbox_table

    key = new_key()
    body = contracts.make_event("probe.forwarded", {"key": key})
    table = outbox_table(MetaData())
    with forwarded_events(probe, key) as drain:
        with Session(probe.engine) as session:
            enqueue(session, table, OutboxRow(body["event_id"], "forwarded", body,
                                              {"nameko.correlation_id": f"corr-{key}"}))
            session.execute(update(table).values(created_at=utcnow() - timedelta(minutes=5)))
            session.commit()
        message = wait_for(drain, 15, 0.2, "the relayed event")[0]
    assert json.loads(message.body) == body
    assert message.headers["nameko.correlation_id"] == f"corr-{key}"
    wait_for(lambda: outbox_rows(probe) == 0, 5, what="the relayed row deleted")


def outbox_rows(probe) -> int:
    with probe.engine.connect() as conn:
        return conn.execute(text("SELECT count(*) FROM outbox")).scalar_one()


def test_same_event_delivered_twice_is_applied_once(probe):
    from services.common import contracts

    key = new_key()
    body = contracts.make_event("probe.poked", {"key": key})
    poke(probe.amqp_uri, body=body)
    poke(probe.amqp_uri, body=body)
    wait_for(lambda: runs(probe, key) == 2, 15, what="both deliveries handled")
    time.sleep(0.3)  # the second worker's transaction is over
    assert effects(probe, key) == 1


def test_sigkill_with_messages_queued_and_mid_retry_loses_none(probe):
    keys = [new_key() for _ in range(30)]
    for i, key in enumerate(keys):
        # half of them fail once: they sit in a retry queue when the process dies
        poke(probe.amqp_uri, key=key, fail_times=i % 2, sleep_ms=300)
    time.sleep(0.45)
    probe.proc.stop(signal.SIGKILL)
    assert not probe.proc.alive()

    done_before = sum(effects(probe, key) for key in keys)
    retried_before = sum(runs(probe, key) >= 1 for key in keys[1::2])
    assert done_before < len(keys)  # the kill did interrupt work
    assert retried_before > 0  # and some were between attempts

    probe.start()
    wait_for(lambda: all(effects(probe, key) == 1 for key in keys), 60, 0.5,
             "every event applied after the restart")
    time.sleep(1.0)
    assert [effects(probe, key) for key in keys] == [1] * len(keys)
    dead = dead_letter_bodies(probe.amqp_uri)
    assert not [key for key in keys if any(key.encode() in body for body in dead)]
    assert_queues_empty(probe)
