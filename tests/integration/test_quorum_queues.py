"""Quorum queues (``AMQP_QUEUE_TYPE=quorum``) and failover URIs on the local
RabbitMQ node (a quorum queue works on one node), with the probe service run
through ``nameko run`` and ``darkroom-ops`` as the installed console script.

Every process is given ``AMQP_URI`` = a dead port first, then the real broker
(kombu's ``;`` failover syntax): each has to fail over to connect at all.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.parse
import uuid
from pathlib import Path

import amqp
import pytest
import requests
from kombu import Connection, Exchange, Queue

from gateway.rpc import BoundedClusterRpcProxy
from services.common.db import make_engine
from services.common.messaging import dlq_name
from tests.conftest import REPO, base_env, free_port, wait_for
from tests.integration.probe_service import (
    PROBE_COMMAND,
    PROBE_QUEUE,
    count_effects,
    poke,
    queue_state,
    run_times,
    start_probe,
    write_config,
)
from tests.integration.test_ops_dlq import ops

pytestmark = pytest.mark.integration

DLQ = dlq_name(PROBE_QUEUE)
DELIVERY_LIMIT = 2


def failover_uri(amqp_uri: str) -> str:
    """A broker that refuses connections first, then the real one."""
    parts = urllib.parse.urlsplit(amqp_uri)
    dead = parts._replace(netloc=f"{parts.username}:{parts.password}@127.0.0.1:{free_port()}")
    return f"{urllib.parse.urlunsplit(dead)};{amqp_uri}"


def queue_info(mgmt: str, vhost: str) -> dict[str, dict]:
    quoted = urllib.parse.quote(vhost, safe="")
    rows = requests.get(f"{mgmt}/api/queues/{quoted}", timeout=10).json()
    return {row["name"]: row for row in rows}


def effects(db_url: str, key: str) -> int:
    engine = make_engine(db_url)
    try:
        with engine.connect() as conn:
            return count_effects(conn, key)
    finally:
        engine.dispose()


def die_on(amqp_uri: str, queue: str, times: int) -> None:
    """Take the head message ``times`` times and vanish without an ack, as a
    consumer that crashes on it would (the broker counts each delivery)."""
    with Connection(amqp_uri) as conn:
        for _ in range(times):
            channel = conn.connection.channel()
            message = None
            for _ in range(50):
                message = channel.basic_get(queue, no_ack=False)
                if message is not None:
                    break
                time.sleep(0.1)
            assert message is not None, f"nothing to take from {queue}"
            channel.close()  # unacked: back to the queue, delivery counted


@pytest.fixture(scope="module")
def stack(make_vhost, make_database, start_process, tmp_path_factory, rabbit_server):
    amqp_uri, vhost = make_vhost("quorum")
    uri = failover_uri(amqp_uri)
    db_url = make_database("quorum")
    workdir = tmp_path_factory.mktemp("quorum-probe")
    config = {"AMQP_QUEUE_TYPE": "quorum", "AMQP_DELIVERY_LIMIT": DELIVERY_LIMIT}
    # the outbox's publishes land here too (probe.forwarded)
    with Connection(amqp_uri) as conn:
        Queue("test-forwarded", exchange=Exchange("probe.events", type="topic", durable=True),
              routing_key="forwarded", durable=True)(conn.default_channel).declare()
    proc = start_probe(start_process, workdir, uri, db_url, **config)
    env = base_env(AMQP_URI=uri, RABBIT_MANAGEMENT_URL=rabbit_server[1])
    return {"amqp_uri": amqp_uri, "uri": uri, "vhost": vhost, "mgmt": rabbit_server[1],
            "db_url": db_url, "proc": proc, "workdir": workdir, "config": config, "env": env,
            "start": lambda: start_probe(start_process, workdir, uri, db_url, **config)}


def test_every_durable_queue_is_quorum_and_reply_queues_are_not(stack):
    with BoundedClusterRpcProxy({"AMQP_URI": stack["uri"]}, timeout=20) as proxy:
        assert proxy.probe.ping() == {"service": "probe", "ok": True}  # over failover
        queues = queue_info(stack["mgmt"], stack["vhost"])
        replies = [row for name, row in queues.items() if name.startswith("rpc.reply-")]
        # each client's own reply queue: classic, gone 5 minutes after its client,
        # transient (a durable one could not be declared again while its node is down)
        assert replies and all(row["type"] == "classic" and row["arguments"].get("x-expires")
                               and row["durable"] is False for row in replies)
    for name in (PROBE_QUEUE, "rpc-probe", DLQ, "darkroom.retry.200ms", "darkroom.retry.400ms"):
        assert queues[name]["type"] == "quorum", name
    assert queues[PROBE_QUEUE]["arguments"]["x-delivery-limit"] == DELIVERY_LIMIT
    assert queues[PROBE_QUEUE]["arguments"]["x-dead-letter-routing-key"] == PROBE_QUEUE
    assert queues["darkroom.retry.200ms"]["arguments"]["x-message-ttl"] == 200


def test_an_event_is_retried_through_the_quorum_retry_queues_and_forwarded(stack):
    key = f"q-{uuid.uuid4().hex[:8]}"
    poke(stack["uri"], key=key, fail_times=2, forward=True)  # fails twice, then succeeds
    state_dir = stack["proc"].state_dir
    wait_for(lambda: effects(stack["db_url"], key) == 1, 30, what="the effect after two retries")
    assert len(run_times(state_dir, key)) == 3
    # the outbox published probe.forwarded (the relay and the flush connect with failover)
    with Connection(stack["amqp_uri"]) as conn:
        forwarded = Queue("test-forwarded", channel=conn.default_channel, no_declare=True)
        bodies = []

        def arrived():
            while (message := forwarded.get(no_ack=True)) is not None:
                bodies.append(json.loads(message.body))
            return any(b.get("key") == key for b in bodies)

        wait_for(arrived, 20, what="probe.forwarded")
    assert queue_state(stack["amqp_uri"], DLQ)[0] == 0


def test_a_poison_message_reaches_the_dlq_by_delivery_limit_and_replays(stack):
    stack["proc"].stop()
    key = f"poison-{uuid.uuid4().hex[:8]}"
    poke(stack["uri"], key=key)
    die_on(stack["amqp_uri"], PROBE_QUEUE, DELIVERY_LIMIT + 1)
    wait_for(lambda: queue_state(stack["amqp_uri"], DLQ)[0] == 1, 10, what="the dead letter")
    assert queue_state(stack["amqp_uri"], PROBE_QUEUE)[0] == 0  # not looping any more

    shown = ops(stack["env"], "dlq", "show", DLQ, "--json")
    assert shown.returncode == 0, shown.stderr
    [letter] = json.loads(shown.stdout)
    assert letter["error"] == "dead-lettered by RabbitMQ: delivery_limit"
    assert letter["original_queue"] == PROBE_QUEUE and letter["body"]["key"] == key

    replayed = ops(stack["env"], "dlq", "replay", DLQ, "--json")
    assert replayed.returncode == 0, replayed.stderr
    assert queue_state(stack["amqp_uri"], DLQ)[0] == 0
    stack["proc"] = stack["start"]()
    wait_for(lambda: effects(stack["db_url"], key) == 1, 30, what="the replayed event handled")


def test_a_classic_queue_stops_a_quorum_service_at_start(make_vhost, tmp_path):
    amqp_uri, _ = make_vhost("mismatch")
    with Connection(amqp_uri) as conn:  # left by a deployment that ran on classic queues
        Queue("rpc-probe", durable=True)(conn.default_channel).declare()
    config = write_config(tmp_path / "probe.yaml", AMQP_URI=amqp_uri, AMQP_QUEUE_TYPE="quorum",
                          DATABASE_URL=f"sqlite:///{tmp_path}/p.db", METRICS_PORT=free_port(),
                          PROBE_STATE_DIR=str(tmp_path))
    nameko = str(Path(sys.executable).parent / "nameko")
    result = subprocess.run(
        [nameko, *PROBE_COMMAND.format(config=config, cls="ProbeService").split()[1:]],
        env=base_env(), cwd=REPO, capture_output=True, text=True, timeout=90)
    assert result.returncode != 0
    logs = result.stdout + result.stderr
    assert "QueueTypeMismatch" in logs and "'rpc-probe' as a quorum queue" in logs
    assert "darkroom-ops queues migrate --to quorum" in logs
    assert "docs/runbooks/quorum-queues.md" in logs
    with Connection(amqp_uri) as conn:  # and left it as it was
        assert conn.default_channel.queue_declare("rpc-probe", passive=True).message_count == 0


def test_migrate_moves_classic_queues_to_quorum_with_every_message(
        make_vhost, make_database, start_process, tmp_path, rabbit_server):
    amqp_uri, vhost = make_vhost("migrate")
    uri = failover_uri(amqp_uri)
    mgmt = rabbit_server[1]
    db_url = make_database("migrate")
    classic = start_probe(start_process, tmp_path, uri, db_url)  # AMQP_QUEUE_TYPE: classic
    assert queue_info(mgmt, vhost)[PROBE_QUEUE]["type"] == "classic"
    classic.stop()

    keys = [f"m-{i}-{uuid.uuid4().hex[:6]}" for i in range(20)]
    for key in keys:  # waiting in the classic queue while Darkroom is stopped
        poke(amqp_uri, key=key)
    with Connection(amqp_uri) as conn:  # a dead letter and an RPC request wait too
        channel = conn.connection.channel()
        channel.confirm_select()
        channel.basic_publish(amqp.Message(b'{"key": "dead"}', content_type="application/json",
                                           headers={"x-darkroom-error": "boom"}, delivery_mode=2),
                              exchange="darkroom.dead-letter", routing_key=PROBE_QUEUE)
        replies = Queue("test-replies", exchange=Exchange("nameko-rpc", type="topic", durable=True),
                        routing_key="test-replies", durable=True)
        replies(channel).declare()
        channel.basic_publish(amqp.Message(b'{"args": [], "kwargs": {}}', delivery_mode=2,
                                           content_type="application/json",
                                           correlation_id="c-1", reply_to="test-replies"),
                              exchange="nameko-rpc", routing_key="probe.ping")
        channel.close()
    assert queue_state(amqp_uri, PROBE_QUEUE)[0] == 20

    env = base_env(AMQP_URI=uri, RABBIT_MANAGEMENT_URL=mgmt, AMQP_DELIVERY_LIMIT=DELIVERY_LIMIT)
    dry = ops(env, "queues", "migrate", "--to", "quorum", "--dry-run", "--json")
    assert dry.returncode == 0, dry.stderr
    assert {row["queue"] for row in json.loads(dry.stdout)} >= {PROBE_QUEUE, DLQ, "rpc-probe"}
    assert queue_info(mgmt, vhost)[PROBE_QUEUE]["type"] == "classic"  # nothing moved

    result = ops(env, "queues", "migrate", "--to", "quorum", "--json")
    assert result.returncode == 0, result.stderr
    moved = {row["queue"]: row for row in json.loads(result.stdout)}
    assert moved[PROBE_QUEUE]["messages"] == 20 and moved[DLQ]["messages"] == 1
    assert moved["rpc-probe"]["messages"] == 1
    queues = queue_info(mgmt, vhost)
    assert not any(name.endswith(".migrating") for name in queues)
    for name in (PROBE_QUEUE, DLQ, "rpc-probe", "darkroom.retry.200ms"):
        assert queues[name]["type"] == "quorum", name
    assert queue_state(amqp_uri, DLQ)[0] == 1
    assert queue_state(amqp_uri, "rpc-probe")[0] == 1
    again = ops(env, "queues", "migrate", "--to", "quorum")
    assert again.returncode == 0 and "declared so already" in again.stdout

    # the bindings moved: an event published now reaches the new queue; the
    # service, now on quorum, starts on the queues and handles every message
    late = f"late-{uuid.uuid4().hex[:6]}"
    poke(amqp_uri, key=late)
    start_probe(start_process, tmp_path, uri, db_url, AMQP_QUEUE_TYPE="quorum",
                AMQP_DELIVERY_LIMIT=DELIVERY_LIMIT)
    for key in [*keys, late]:
        wait_for(lambda k=key: effects(db_url, k) == 1, 30, what=f"the effect of {key}")
    with Connection(amqp_uri) as conn:  # the RPC request kept its routing key and reply-to
        reply = wait_for(lambda: conn.default_channel.basic_get("test-replies", no_ack=True),
                         20, what="the reply to the request that waited")
        assert reply.properties["correlation_id"] == "c-1"
        assert json.loads(reply.body) == {"result": {"service": "probe", "ok": True}, "error": None}


def test_migrate_finishes_a_run_interrupted_after_the_delete(make_vhost, rabbit_server):
    amqp_uri, vhost = make_vhost("interrupted")
    mgmt = rabbit_server[1]
    name = "evt-shop-paid--mail.on_paid"
    exchange = Exchange("shop.events", type="topic", durable=True)
    with Connection(amqp_uri) as conn:  # the queue is gone, its messages and bindings are held
        channel = conn.default_channel
        Queue(f"{name}.migrating", exchange=exchange, routing_key="paid", durable=True,
              queue_arguments={"x-queue-type": "quorum"})(channel).declare()
        producer = conn.Producer(channel)
        for i in range(3):
            producer.publish({"n": i}, exchange=exchange, routing_key="paid", delivery_mode=2)
    env = base_env(AMQP_URI=amqp_uri, RABBIT_MANAGEMENT_URL=mgmt)
    result = ops(env, "queues", "migrate", "--to", "quorum", "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == [{"queue": name, "from": "none", "to": "quorum",
                                          "messages": 0}]
    queues = queue_info(mgmt, vhost)
    assert f"{name}.migrating" not in queues and queues[name]["type"] == "quorum"
    assert queue_state(amqp_uri, name)[0] == 3
    poke_like = Connection(amqp_uri)
    with poke_like as conn:  # bound as before
        conn.Producer(conn.default_channel).publish({"n": 3}, exchange=exchange,
                                                   routing_key="paid", delivery_mode=2)
    wait_for(lambda: queue_state(amqp_uri, name)[0] == 4, 10, what="the fourth message")


def test_a_real_service_on_quorum_queues_answers_rpc_and_handles_events(
        make_vhost, make_database, start_process, tmp_path, rabbit_server):
    """notifications through its Procfile entrypoint, AMQP_QUEUE_TYPE=quorum,
    a dead broker first in AMQP_URI: ping over RPC, a mail from an event."""
    from tests.integration.probe_service import wait_consuming
    from tests.integration.test_notifications import (
        HANDLERS,
        MAIL_SECRETS_KEY,
        Mailbox,
        new_address,
        publish,
        queue_of,
        verification,
    )

    amqp_uri, vhost = make_vhost("quorum-real")
    uri = failover_uri(amqp_uri)
    port = free_port()
    mail_dir = tmp_path / "mail"
    mail_dir.mkdir()
    proc = start_process("notifications", base_env(
        AMQP_URI=uri, AMQP_QUEUE_TYPE="quorum", NOTIFICATIONS_METRICS_PORT=port,
        NOTIFICATIONS_DATABASE_URL=make_database("quorum_notifications"),
        MAIL_URL=f"file://{mail_dir}", MAIL_SECRETS_KEY=MAIL_SECRETS_KEY))
    proc.wait_ready(f"http://127.0.0.1:{port}/readyz")
    for event_type in HANDLERS:
        wait_consuming(amqp_uri, queue_of(event_type), proc)

    queues = queue_info(rabbit_server[1], vhost)
    for event_type in HANDLERS:
        assert queues[queue_of(event_type)]["type"] == "quorum"
        assert queues[dlq_name(queue_of(event_type))]["type"] == "quorum"
    assert queues["rpc-notifications"]["type"] == "quorum"

    with BoundedClusterRpcProxy({"AMQP_URI": uri}, timeout=20) as proxy:
        assert proxy.notifications.ping() == {"service": "notifications", "ok": True}
    address = new_address()
    publish(uri, "email_verification_requested", verification(address, code="493817"))
    [message] = Mailbox(mail_dir).wait(address)
    assert "493817" in message.get_body(preferencelist=("plain",)).get_content()
