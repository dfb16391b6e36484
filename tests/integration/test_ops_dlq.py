"""`darkroom-ops dlq ...` (the installed console script, as a subprocess)
against real dead letters the probe service produced, in a vhost of its own.

The dead letters are probe events that fail every time unless the flag file
``<key>.ok`` exists: creating it makes a replay succeed.
"""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from pathlib import Path
from types import SimpleNamespace

import pytest
from kombu import Connection, Exchange, Queue

from services.common.db import make_engine
from services.common.messaging import dlq_name
from tests.conftest import REPO, base_env, free_port, wait_for
from tests.integration.probe_service import (
    PROBE_QUEUE,
    count_effects,
    poke,
    queue_state,
    run_times,
    start_probe,
)

pytestmark = pytest.mark.integration

DLQ = dlq_name(PROBE_QUEUE)
OPS = str(Path(sys.executable).parent / "darkroom-ops")


def ops(env: dict, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([OPS, *args], env=env, cwd=REPO, capture_output=True, text=True, timeout=90)


@pytest.fixture(scope="module")
def setup(make_vhost, make_database, start_process, tmp_path_factory, rabbit_server):
    amqp_uri, vhost = make_vhost("ops")
    workdir = tmp_path_factory.mktemp("ops-probe")
    db_url = make_database("probe")
    proc = start_probe(start_process, workdir, amqp_uri, db_url)
    env = base_env(AMQP_URI=amqp_uri, RABBIT_MANAGEMENT_URL=rabbit_server[1])
    engine = make_engine(db_url)

    # another subscriber of probe.poked: a replay must not reach it
    with Connection(amqp_uri) as conn:
        bystander = Queue("test-bystander", exchange=Exchange("probe.events", type="topic", durable=True),
                          routing_key="poked", durable=True)
        bystander(conn.default_channel).declare()

    keys = [f"ops-{uuid.uuid4().hex[:10]}" for _ in range(3)]
    for key in keys:
        poke(amqp_uri, key=key, fail_times=-1, unless_flag=True,
             headers={"nameko.correlation_id": f"corr-{key}"})
    wait_for(lambda: queue_state(amqp_uri, DLQ)[0] == 3, 20, what="three dead letters")
    yield SimpleNamespace(amqp_uri=amqp_uri, env=env, proc=proc, engine=engine, keys=keys,
                          state_dir=proc.state_dir)
    engine.dispose()


def dlq_count(setup) -> int:
    return queue_state(setup.amqp_uri, DLQ)[0]


def effects(setup, key: str) -> int:
    with setup.engine.connect() as conn:
        return count_effects(conn, key)


def drain(amqp_uri: str, queue: str) -> list:
    with Connection(amqp_uri) as conn:
        q = Queue(queue, channel=conn.default_channel, no_declare=True)
        messages = []
        while (m := q.get(no_ack=True)) is not None:
            messages.append(m)
        return messages


def test_list_shows_every_dlq_with_its_count(setup):
    result = ops(setup.env, "dlq", "list")
    assert result.returncode == 0, result.stderr
    rows = [line.split() for line in result.stdout.splitlines()[1:]]
    assert [DLQ, "3"] in rows
    assert all(name.startswith("dlq.") for name, _ in rows)
    listed = json.loads(ops(setup.env, "dlq", "list", "--json").stdout)
    assert {"queue": DLQ, "messages": 3} in listed


def test_show_prints_the_story_and_leaves_the_messages(setup):
    result = ops(setup.env, "dlq", "show", PROBE_QUEUE)  # the original queue's name works too
    assert result.returncode == 0, result.stderr
    for key in setup.keys:
        assert f"RuntimeError: probe failure on run 3 of {key}" in result.stdout
        assert f"corr-{key}" in result.stdout
    assert "attempts:         3" in result.stdout
    assert f"original queue:   {PROBE_QUEUE}" in result.stdout
    assert "#1 probe.poked" in result.stdout

    letters = json.loads(ops(setup.env, "dlq", "show", DLQ, "--json", "--limit", "2").stdout)
    assert len(letters) == 2
    peeked = [letter["body"]["key"] for letter in letters]
    assert len(set(peeked)) == 2 and set(peeked) <= set(setup.keys)
    assert letters[0]["event"] == "probe.poked" and letters[0]["attempts"] == 3
    assert letters[0]["dead_lettered_at"].endswith("Z")
    assert "traceback" not in letters[0]
    assert dlq_count(setup) == 3  # peeked, not consumed
    # and peeking twice shows the same first message
    again = json.loads(ops(setup.env, "dlq", "show", DLQ, "--json", "--limit", "1").stdout)
    assert again[0]["body"]["key"] == peeked[0]


def test_replay_all_dry_run_says_what_would_move_and_moves_nothing(setup):
    result = ops(setup.env, "dlq", "replay", "--all", "--dry-run", "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {"dry_run": True, "all": True, "messages": 3,
                                         "queues": [{"queue": DLQ, "messages": 3}]}
    text = ops(setup.env, "dlq", "replay", "--all", "--dry-run")
    assert text.stdout.splitlines() == [
        "dry run: would replay 3 messages from 1 queue; nothing was moved", f"  {DLQ}  3"]
    assert dlq_count(setup) == 3
    assert all(len(run_times(setup.state_dir, key)) == 3 for key in setup.keys)  # no rerun
    neither = ops(setup.env, "dlq", "replay", "--json")
    assert neither.returncode == 2
    assert json.loads(neither.stdout) == {"error": {"code": "usage",
                                                    "message": "name one queue or pass --all"}}


def test_replay_sends_them_back_to_the_failed_consumer_only(setup):
    fixed, broken = setup.keys[:2], setup.keys[2]
    for key in fixed:
        (setup.state_dir / f"{key}.ok").touch()  # the bug is fixed for these two
    drain(setup.amqp_uri, "test-bystander")

    result = ops(setup.env, "dlq", "replay", "--all")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [f"replayed 3 messages from {DLQ}",
                                          "replayed 3 messages in all"]

    wait_for(lambda: all(effects(setup, key) == 1 for key in fixed), 20, what="the replayed handlers")
    for key in fixed:
        assert len(run_times(setup.state_dir, key)) == 4  # 3 attempts, then the replay
    # the still-broken one failed again (a full set of attempts) and is back, once
    wait_for(lambda: len(run_times(setup.state_dir, broken)) == 6 and dlq_count(setup) == 1, 20,
             what="the broken one back in the DLQ")
    [letter] = json.loads(ops(setup.env, "dlq", "show", DLQ, "--json").stdout)
    assert letter["body"]["key"] == broken
    assert letter["replays"] == 1 and letter["attempts"] == 3
    assert letter["correlation_id"] == f"corr-{broken}"  # nameko context kept
    assert drain(setup.amqp_uri, "test-bystander") == []  # nobody else got the replay


def test_replay_limit(setup):
    poke(setup.amqp_uri, key=f"ops-{uuid.uuid4().hex[:10]}", fail_times=-1)
    wait_for(lambda: dlq_count(setup) == 2, 20, what="a second dead letter")
    result = ops(setup.env, "dlq", "replay", PROBE_QUEUE, "--limit", "1")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"replayed 1 message from {DLQ}"
    # only the first (the one replayed before) went; it fails again and comes back
    # behind the other: replayed twice now, the other never
    def replays():
        return [item["replays"] for item in json.loads(ops(setup.env, "dlq", "show", DLQ, "--json").stdout)]

    wait_for(lambda: replays() == [0, 2], 20, what="the limited replay to come back")


def test_purge_needs_yes_then_empties(setup):
    before = dlq_count(setup)
    assert before > 0
    refused = ops(setup.env, "dlq", "purge", DLQ)
    assert refused.returncode == 2
    assert f"not purging {DLQ} without --yes" in refused.stderr
    assert dlq_count(setup) == before

    result = ops(setup.env, "dlq", "purge", PROBE_QUEUE, "--yes")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().startswith(f"purged {before} message")
    assert dlq_count(setup) == 0
    assert "is empty" in ops(setup.env, "dlq", "show", DLQ).stdout


@pytest.mark.parametrize("command", [["show", "nope"], ["replay", "dlq.nope"], ["purge", "nope", "--yes"]])
def test_a_missing_queue_is_a_message_not_a_traceback(setup, command):
    result = ops(setup.env, "dlq", *command)
    assert result.returncode == 1
    assert "error: no queue 'dlq.nope' in vhost" in result.stderr
    assert "Traceback" not in result.stderr


def test_an_unreachable_broker_is_a_message_not_a_traceback(setup):
    env = {**setup.env, "AMQP_URI": f"amqp://guest:secret@127.0.0.1:{free_port()}/"}
    result = ops(env, "dlq", "show", "q")
    assert result.returncode == 1
    assert "error: cannot reach RabbitMQ at amqp://guest:***@127.0.0.1" in result.stderr
    assert "secret" not in result.stderr and "Traceback" not in result.stderr
    env = {**setup.env, "RABBIT_MANAGEMENT_URL": f"http://guest:guest@127.0.0.1:{free_port()}"}
    result = ops(env, "dlq", "list")
    assert result.returncode == 1
    assert "cannot reach the RabbitMQ management API" in result.stderr
