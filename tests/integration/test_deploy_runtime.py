"""What the deployment does at run time, against the real servers.

- deploy/postgres/init-databases.sh (compose's postgres-init job): one role and
  one database per service, each role able to connect only to its own,
  idempotent, passwords re-set from the environment at every run.
- deploy/rabbitmq/apply_definitions.py (compose's rabbitmq-init job): the
  dead-letter policy catches what RabbitMQ itself would drop from an event
  queue, into dlq.broker, where `darkroom-ops dlq replay` finds it.
- Migrations: under a PostgreSQL advisory lock, so replicas starting together
  do not migrate twice at once, and before the service consumes anything.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import subprocess
import sys
import time
import urllib.parse
import uuid
import zlib
from pathlib import Path

import pytest
import requests
from kombu import Connection, Queue
from sqlalchemy import create_engine, inspect, text
from sqlalchemy.engine import make_url

from services.common.db import normalise_url
from services.common.messaging import DEAD_LETTER_EXCHANGE, dead_letter_queue, dlq_name
from services.common.migrations import SERVICES_DIR, upgrade
from tests.conftest import REPO, RUN_ID, base_env, free_port, wait_for

pytestmark = pytest.mark.integration

INIT_SCRIPT = REPO / "deploy" / "postgres" / "init-databases.sh"
APPLY_DEFINITIONS = REPO / "deploy" / "rabbitmq" / "apply_definitions.py"
OPS = str(Path(sys.executable).parent / "darkroom-ops")
AUTH_MIGRATIONS = SERVICES_DIR / "auth" / "migrations"


# ------------------------------------------------------------------ PostgreSQL roles


@pytest.fixture
def pg(postgres_server, make_database):
    """(libpq environment of a superuser on a scratch maintenance database, server
    engine, names to create); the roles and databases are dropped afterwards."""
    url, engine = postgres_server
    maintenance = make_url(make_database("maint"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env.update(PGHOST=maintenance.host or "127.0.0.1", PGPORT=str(maintenance.port or 5432),
               PGUSER=maintenance.username or "postgres", PGDATABASE=maintenance.database)
    if maintenance.password:
        env["PGPASSWORD"] = maintenance.password
    names = [f"dr{RUN_ID}_{label}_{uuid.uuid4().hex[:4]}" for label in ("alpha", "beta")]
    yield env, engine, names, maintenance
    with engine.connect() as conn:
        for name in names:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
            conn.execute(text(f'DROP ROLE IF EXISTS "{name}"'))


def run_init(env: dict, names: list[str], **passwords: str) -> subprocess.CompletedProcess:
    env = {**env, **{f"{n.upper()}_DB_PASSWORD": p for n, p in passwords.items()}}
    return subprocess.run(["sh", str(INIT_SCRIPT), *names], env=env, capture_output=True,
                          text=True, timeout=60)


def connect_as(maintenance, role: str, password: str, database: str):
    url = maintenance.set(username=role, password=password, database=database)
    engine = create_engine(normalise_url(url.render_as_string(hide_password=False)))
    try:
        with engine.connect() as conn:
            return conn.execute(text("SELECT current_user")).scalar()
    finally:
        engine.dispose()


def test_init_script_gives_each_service_a_role_reaching_only_its_database(pg):
    env, engine, (alpha, beta), maintenance = pg
    passwords = {alpha: "a'b\"c\\d-" + uuid.uuid4().hex, beta: uuid.uuid4().hex}
    result = run_init(env, [alpha, beta], **passwords)
    assert result.returncode == 0, result.stderr
    assert passwords[alpha] not in result.stdout + result.stderr

    with engine.connect() as conn:
        roles = conn.execute(text(
            "SELECT rolname, rolcanlogin, rolsuper, rolcreatedb, rolcreaterole FROM pg_roles "
            "WHERE rolname IN (:a, :b)"), {"a": alpha, "b": beta}).all()
        assert sorted(roles) == sorted([(alpha, True, False, False, False),
                                        (beta, True, False, False, False)])
        owners = dict(conn.execute(text(
            "SELECT datname, pg_get_userbyid(datdba) FROM pg_database WHERE datname IN (:a, :b)"),
            {"a": alpha, "b": beta}).all())
        assert owners == {alpha: alpha, beta: beta}

        def can_connect(role, database):
            return conn.execute(text("SELECT has_database_privilege(:r, :d, 'CONNECT')"),
                                {"r": role, "d": database}).scalar()

        assert can_connect(alpha, alpha) and can_connect(beta, beta)
        assert not can_connect(alpha, beta) and not can_connect(beta, alpha)
        assert not can_connect(alpha, maintenance.database)  # PUBLIC's CONNECT revoked there too

    # for real: a role logs in to its own database and is turned away from the other
    assert connect_as(maintenance, alpha, passwords[alpha], alpha) == alpha
    with pytest.raises(Exception, match="permission denied for database"):
        connect_as(maintenance, alpha, passwords[alpha], beta)


def test_init_script_is_idempotent_and_rotates_passwords(pg):
    env, engine, (alpha, beta), _ = pg
    assert run_init(env, [alpha], **{alpha: "first-" + uuid.uuid4().hex}).returncode == 0

    def stored_password():
        with engine.connect() as conn:
            return conn.execute(text("SELECT rolpassword FROM pg_authid WHERE rolname = :r"),
                                {"r": alpha}).scalar()

    before = stored_password()
    result = run_init(env, [alpha, beta], **{alpha: "second-" + uuid.uuid4().hex,
                                             beta: uuid.uuid4().hex})
    assert result.returncode == 0, result.stderr  # alpha exists already: no error
    assert stored_password() != before  # the new password from the environment is set
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM pg_database WHERE datname = :d"),
                            {"d": beta}).scalar() == 1  # a service added later gets its own


def test_init_script_refuses_a_missing_password_or_a_bad_name(pg):
    env, engine, (alpha, _), _ = pg
    result = run_init(env, [alpha])
    assert result.returncode == 1
    assert f"{alpha.upper()}_DB_PASSWORD is not set" in result.stderr
    result = run_init(env, ['x"; DROP DATABASE postgres; --'], **{})
    assert result.returncode == 2
    with engine.connect() as conn:
        assert not conn.execute(text("SELECT 1 FROM pg_roles WHERE rolname = :r"),
                                {"r": alpha}).first()


# ------------------------------------------------------------------ RabbitMQ policy


def apply_definitions(amqp_uri: str, management_url: str, **extra: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "AMQP_URI": amqp_uri, "RABBIT_MANAGEMENT_URL": management_url, **extra}
    return subprocess.run([sys.executable, str(APPLY_DEFINITIONS), "--wait", "10"], env=env,
                          capture_output=True, text=True, timeout=60)


def queue_info(management_url: str, vhost: str, queue: str) -> dict:
    quoted = urllib.parse.quote(vhost, safe="")
    response = requests.get(f"{management_url}/api/queues/{quoted}/{queue}", timeout=10)
    response.raise_for_status()
    return response.json()


@pytest.fixture(scope="module")
def broker(make_vhost, rabbit_server):
    amqp_uri, vhost = make_vhost("deploy")
    management_url = rabbit_server[1]
    first = apply_definitions(amqp_uri, management_url)
    assert first.returncode == 0, first.stderr
    again = apply_definitions(amqp_uri, management_url)  # compose runs it at every `up`
    assert again.returncode == 0, again.stderr
    assert f"to vhost {vhost!r}" in again.stdout
    return amqp_uri, vhost, management_url


def get_one(conn: Connection, queue: str):
    """One message (a kombu Message, to ack, reject or requeue), or None."""
    return Queue(queue).bind(conn.default_channel).get(no_ack=False)


def test_a_message_rejected_from_an_event_queue_lands_in_dlq_broker_and_replays(broker):
    amqp_uri, vhost, management_url = broker
    queue = "evt-auth-user_registered--notifications.on_user_registered"
    with Connection(amqp_uri) as conn:
        Queue(queue, durable=True)(conn.default_channel).declare()  # as nameko declares it
        # (the management API reports it with the queue's next stats, every 5 s)
        wait_for(lambda: queue_info(management_url, vhost, queue).get("policy")
                 == "darkroom-dead-letter", 30, what="the policy on the event queue")
        conn.default_channel.basic_publish(
            conn.default_channel.prepare_message(b'{"id": 1}', content_type="application/json",
                                                 headers={"nameko.correlation_id": "c-1"}),
            exchange="", routing_key=queue)
        message = wait_for(lambda: get_one(conn, queue), 10, what="the published message")
        message.reject(requeue=False)  # what RabbitMQ would otherwise drop

        dead = wait_for(lambda: get_one(conn, "dlq.broker"), 10, what="the dead letter")
        assert dead.headers["x-first-death-queue"] == queue
        assert dead.headers["x-first-death-reason"] == "rejected"
        dead.requeue()

    env = base_env(AMQP_URI=amqp_uri, RABBIT_MANAGEMENT_URL=management_url)
    listed = subprocess.run([OPS, "dlq", "list"], env=env, capture_output=True, text=True,
                            timeout=90, cwd=REPO)
    assert "dlq.broker" in listed.stdout, listed.stdout + listed.stderr
    replay = subprocess.run([OPS, "dlq", "replay", "dlq.broker"], env=env, capture_output=True,
                            text=True, timeout=90, cwd=REPO)
    assert replay.returncode == 0, replay.stderr
    with Connection(amqp_uri) as conn:
        back = wait_for(lambda: get_one(conn, queue), 10, what="the replayed message")
        assert back.body in (b'{"id": 1}', '{"id": 1}')
        assert back.headers["nameko.correlation_id"] == "c-1"
        back.ack()


def test_a_quorum_event_queue_dead_letters_a_message_redelivered_past_the_limit(broker):
    amqp_uri, vhost, management_url = broker
    queue = "evt-probe-poked--crashy.on_poked"
    with Connection(amqp_uri) as conn:
        Queue(queue, durable=True, queue_arguments={"x-queue-type": "quorum"})(
            conn.default_channel).declare()
        wait_for(lambda: queue_info(management_url, vhost, queue).get("policy")
                 == "darkroom-dead-letter-quorum", 30, what="the policy on the quorum queue")
        conn.default_channel.basic_publish(
            conn.default_channel.prepare_message(b"poison"), exchange="", routing_key=queue)
        redeliveries = 0
        while True:  # a consumer that dies on this message, again and again
            message = wait_for(lambda: get_one(conn, queue) or get_one(conn, "dlq.broker"), 10,
                               what="the poison message")
            if "x-first-death-queue" in (message.headers or {}):
                break  # it came from dlq.broker
            message.requeue()
            redeliveries += 1
            assert redeliveries <= 25, "the delivery limit should have dead-lettered it"
        assert message.headers["x-first-death-queue"] == queue
        assert redeliveries >= 20  # the policy's delivery-limit
        message.ack()


def queued(conn: Connection, queue: str) -> int:
    return conn.default_channel.queue_declare(queue=queue, passive=True).message_count


def test_dead_letters_expire_after_the_ttl_even_those_there_before_the_policy(make_vhost,
                                                                              rabbit_server):
    amqp_uri, vhost = make_vhost("dlq-ttl")
    management_url = rabbit_server[1]
    failed_queue = "evt-probe-poked--ttl.on_poked"
    dlq = dlq_name(failed_queue)

    def dead_letter(conn: Connection, body: bytes) -> None:  # what messaging.py publishes
        conn.default_channel.basic_publish(conn.default_channel.prepare_message(body),
                                           exchange=DEAD_LETTER_EXCHANGE, routing_key=failed_queue)

    with Connection(amqp_uri) as conn:
        # an existing broker: the queue as the services declare it, a dead letter in it
        dead_letter_queue(failed_queue)(conn.default_channel).declare()
        dead_letter(conn, b"old")
        wait_for(lambda: queued(conn, dlq) == 1, 10, what="the dead letter")

    # the upgrade: rabbitmq-init with a TTL of about 1.7 s
    applied = apply_definitions(amqp_uri, management_url, DEAD_LETTER_TTL_DAYS="0.00002")
    assert applied.returncode == 0, applied.stderr
    wait_for(lambda: queue_info(management_url, vhost, dlq).get("policy")
             == "darkroom-dead-letter-ttl", 30, what="the TTL policy on the dead-letter queue")
    assert queue_info(management_url, vhost, dlq)["effective_policy_definition"] == {
        "message-ttl": 1728}
    with Connection(amqp_uri) as conn:
        # the services' own declaration still succeeds (no PRECONDITION_FAILED)
        dead_letter_queue(failed_queue)(conn.default_channel).declare()
        dead_letter(conn, b"new")
        time.sleep(3)
        # RabbitMQ stamps the expiry when a message enters the queue: the one from
        # before the policy never expires, and holds up the newer one behind it
        assert queued(conn, dlq) == 2

    # the documented upgrade step: move what predates the policy behind the TTL
    env = base_env(AMQP_URI=amqp_uri, RABBIT_MANAGEMENT_URL=management_url)
    restamped = subprocess.run([OPS, "dlq", "restamp", "--all"], env=env, capture_output=True,
                               text=True, timeout=90, cwd=REPO)
    assert restamped.returncode == 0, restamped.stderr
    assert f"restamped 2 messages in {dlq}" in restamped.stdout
    with Connection(amqp_uri) as conn:
        wait_for(lambda: queued(conn, dlq) == 0, 20, 0.2, "both dead letters to expire")
        dead_letter(conn, b"later")  # and from now on, each one expires by itself
        wait_for(lambda: queued(conn, dlq) == 1, 1.5, 0.02, "the new dead letter")
        wait_for(lambda: queued(conn, dlq) == 0, 20, 0.2, "a new dead letter to expire")
        assert queued(conn, "dlq.broker") == 0  # dropped, not dead-lettered anywhere else


def test_dead_letters_are_kept_14_days_by_default_and_ops_shows_when_they_expire(broker):
    amqp_uri, vhost, management_url = broker
    failed_queue = "evt-probe-poked--default.on_poked"
    with Connection(amqp_uri) as conn:
        dead_letter_queue(failed_queue)(conn.default_channel).declare()
        conn.default_channel.basic_publish(
            conn.default_channel.prepare_message(
                b"{}", content_type="application/json",
                headers={"x-darkroom-dead-lettered-at": "2026-01-01T00:00:00Z"}),
            exchange=DEAD_LETTER_EXCHANGE, routing_key=failed_queue)
    wait_for(lambda: queue_info(management_url, vhost, dlq_name(failed_queue))
             .get("effective_policy_definition") == {"message-ttl": 14 * 86_400_000}, 30,
             what="the default TTL policy")
    assert queue_info(management_url, vhost, "dlq.broker")["policy"] == "darkroom-dead-letter-ttl"
    env = base_env(AMQP_URI=amqp_uri, RABBIT_MANAGEMENT_URL=management_url)
    shown = subprocess.run([OPS, "dlq", "show", failed_queue, "--json"], env=env,
                           capture_output=True, text=True, timeout=90, cwd=REPO)
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout)[0]["expires_at"] == "2026-01-15T00:00:00Z"


# ------------------------------------------------------------------ migrations


def lock_key(migrations: Path) -> int:
    """The advisory lock services.common.migrations.run_env takes."""
    return zlib.crc32(str(migrations).encode())


def tables(url: str) -> set[str]:
    engine = create_engine(normalise_url(url))
    try:
        return set(inspect(engine).get_table_names())
    finally:
        engine.dispose()


def _upgrade_after(barrier, url: str) -> None:
    barrier.wait(30)
    upgrade(AUTH_MIGRATIONS, url)


def test_two_replicas_migrating_at_once_both_start(make_database):
    url = make_database("migrate-race")
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(3)
    workers = [context.Process(target=_upgrade_after, args=(barrier, url)) for _ in range(2)]
    for worker in workers:
        worker.start()
    barrier.wait(60)
    for worker in workers:
        worker.join(120)
    assert [w.exitcode for w in workers] == [0, 0]
    assert {"alembic_version", "users", "sessions"} <= tables(url)


def test_a_migration_waits_for_the_lock_another_replica_holds(make_database):
    url = make_database("migrate-lock")
    engine = create_engine(normalise_url(url))
    code = ("import sys; from services.common.migrations import upgrade; "
            f"upgrade({str(AUTH_MIGRATIONS)!r}, sys.argv[1])")
    with engine.connect() as holder:
        holder.execute(text("SELECT pg_advisory_lock(:k)"), {"k": lock_key(AUTH_MIGRATIONS)})
        holder.commit()
        proc = subprocess.Popen([sys.executable, "-c", code, url], cwd=REPO,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        try:
            with pytest.raises(subprocess.TimeoutExpired):
                proc.wait(5)  # blocked behind the lock...
            assert "alembic_version" not in tables(url)  # ...having changed nothing
        finally:
            holder.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": lock_key(AUTH_MIGRATIONS)})
            holder.commit()
    assert proc.wait(60) == 0, proc.stdout.read()
    engine.dispose()
    assert {"alembic_version", "users"} <= tables(url)


def test_a_service_consumes_nothing_until_it_has_migrated(make_vhost, make_database,
                                                          start_process):
    amqp_uri, _ = make_vhost("migrate-first")
    url = make_database("migrate-first")
    port = free_port()
    engine = create_engine(normalise_url(url))
    with engine.connect() as holder:  # another replica is migrating
        holder.execute(text("SELECT pg_advisory_lock(:k)"), {"k": lock_key(AUTH_MIGRATIONS)})
        holder.commit()
        auth = start_process("auth", base_env(AMQP_URI=amqp_uri, AUTH_DATABASE_URL=url,
                                              AUTH_METRICS_PORT=port))
        ready = f"http://127.0.0.1:{port}/readyz"
        try:
            # (a list: a 503 Response is falsy, and wait_for waits for something truthy)
            (response,) = wait_for(lambda: [requests.get(ready, timeout=2)], 60,
                                   what="auth's health endpoint")
            assert response.status_code == 503
            assert response.json()["checks"]["consumers"] == "starting"
            assert "alembic_version" not in tables(url)
        finally:
            holder.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": lock_key(AUTH_MIGRATIONS)})
            holder.commit()
    engine.dispose()
    auth.wait_ready(ready, timeout=90)
    assert {"alembic_version", "users"} <= tables(url)


# ---------------------------------------------------------------- the gateway's gunicorn


def _listening_inodes(pid: int, port: int) -> set[str]:
    """The inodes of the sockets ``pid`` holds that listen on ``port``."""
    listening = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:  # LISTEN
            listening.add(fields[9])
    held = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:[") and target[8:-1] in listening:
            held.add(target[8:-1])
    return held


@pytest.mark.parametrize("reuse_port", ["true", "false"])
def test_the_gateways_workers_each_listen_and_share_a_burst_of_connections(tmp_path, reuse_port):
    """deploy/config/gunicorn.conf.py, 2 workers: with GATEWAY_REUSE_PORT (the
    default) each worker has a listening socket of its own, so the kernel
    spreads connections over both (16 keep-alive connections opened at once,
    as wrk or a proxy's pool does, all on one worker: a chance of 2 in
    65,536); without it they share one (and whichever worker wakes first may
    take them all)."""
    from concurrent.futures import ThreadPoolExecutor

    from tests.conftest import Process

    port = free_port()
    proc = Process("gunicorn-pids", base_env(GATEWAY_PORT=str(port), GATEWAY_WORKERS="2",
                                             GATEWAY_REUSE_PORT=reuse_port),
                   tmp_path, command="gunicorn --config deploy/config/gunicorn.conf.py "
                                     "tests.fakes.pid_app:app").start()
    try:
        proc.wait_ready(f"http://127.0.0.1:{port}/")

        def booted():  # the first worker may answer before the second is forked and listening
            pids = [int(pid) for task in Path(f"/proc/{proc.proc.pid}/task").iterdir()
                    for pid in (task / "children").read_text().split()]
            return pids if len(pids) == 2 and all(_listening_inodes(p, port) for p in pids) else None

        workers = wait_for(booted, 30, what="two workers listening")
        sockets = [_listening_inodes(pid, port) for pid in workers]
        assert all(len(s) == 1 for s in sockets), sockets
        assert (sockets[0] != sockets[1]) is (reuse_port == "true")

        def served(session):  # one connection, three requests: the worker that holds it
            return {session.get(f"http://127.0.0.1:{port}/", timeout=10).text for _ in range(3)}

        with ThreadPoolExecutor(16) as pool:
            answers = list(pool.map(served, [requests.Session() for _ in range(16)]))
        assert all(len(a) == 1 for a in answers), answers  # keep-alive: one worker each
        if reuse_port == "true":
            assert set().union(*answers) == {str(pid) for pid in workers}
    finally:
        proc.stop()
