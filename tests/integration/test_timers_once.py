"""Every timer acts once across replicas (docs/scaling.md "Timers").

Two replicas of a service, each started by its Procfile command, share one
PostgreSQL database and a fresh vhost, their timers shortened through
``TIMER_INTERVALS``. Due work is set up in the database (or over RPC); both
replicas' timers fire many times over it; the effect is counted where it
shows: one ``storage.objects_purged`` mention and one purge audit row per
object, one orphan sweep for a set of orphans, one publish per outbox row,
one monthly grant per account, one ``billing.credits_released`` per stale
hold, one revocation and one ``privacy.erasure_requested`` per erasure, one
POST per webhook delivery at a loopback receiver, each expired auth row,
access log and payment record past retention deleted once. Where a task runs under its lock, the test also
holds that lock itself for a while (as a third replica would) and sees
neither replica act meanwhile.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from collections import Counter
from contextlib import contextmanager
from datetime import datetime, timedelta
from types import SimpleNamespace

import pytest
from kombu import Connection, Exchange, Queue
from nameko.standalone.rpc import ClusterRpcProxy
from sqlalchemy import text
from sqlalchemy.orm import Session

from services.common import outbox, timers
from services.common.db import make_engine
from services.common.ids import utcnow
from services.generation import deliveries, webhooks
from services.generation.models import WebhookDelivery
from services.privacy import requests as subject_requests
from services.storage.models import outbox as storage_outbox
from tests.conftest import base_env, free_port, procfile_commands, providers_file, wait_for
from tests.fakes.providers import FakeWebhookReceiver
from tests.integration.test_billing_service import publish
from tests.integration.test_privacy_races import SETTINGS as PRIVACY_SETTINGS
from tests.integration.test_storage_service import PUBLIC_BASE_URL, URL_SECRET, output, set_expiry
from tests.unit.events import Events

pytestmark = pytest.mark.integration

PRIVACY_SETTINGS_KEY = "integration-test-mail-secrets-key"  # PRIVACY_SETTINGS' sealer

TICK = 0.3  # seconds between ticks of every timer under test
SETTLE = 8 * TICK + 2  # after the work is done: time for a second act to show


def intervals(*names: str) -> str:
    return json.dumps({name: TICK for name in names})


def start_replicas(start_process, service: str, env: dict, count: int = 2) -> list:
    """``count`` processes of ``service``'s Procfile command, each with its own
    metrics port; returns them once every one answers /readyz."""
    started = []
    for n in range(1, count + 1):
        port = free_port()
        proc = start_process(f"{service}-{n}", base_env(
            **env, **{f"{service.upper()}_METRICS_PORT": port}),
            command=procfile_commands()[service])
        started.append((proc, port))
    for proc, port in started:
        proc.wait_ready(f"http://127.0.0.1:{port}/readyz", timeout=120)
    return [proc for proc, _ in started]


class Tap:
    """Every message published on ``<source>.events``, from before the work."""

    def __init__(self, amqp_uri: str, source: str):
        self.connection = Connection(amqp_uri)
        exchange = Exchange(f"{source}.events", type="topic", durable=True)
        self.queue = Queue(f"test-timers-{source}-{uuid.uuid4().hex[:8]}", exchange=exchange,
                           routing_key="#", exclusive=True,
                           auto_delete=True)(self.connection.channel())
        exchange(self.queue.channel).declare()
        self.queue.declare()
        self.seen: list[tuple[str, dict]] = []

    def of(self, routing_key: str) -> list[dict]:
        while (message := self.queue.get(no_ack=True)) is not None:
            self.seen.append((message.delivery_info["routing_key"], message.payload))
        return [body for key, body in self.seen if key == routing_key]

    def close(self):
        self.connection.release()


@contextmanager
def rpc_of(amqp_uri: str, service: str):
    with ClusterRpcProxy({"AMQP_URI": amqp_uri}, timeout=60) as rpc:
        proxy = getattr(rpc, service)
        wait_for(lambda: proxy.ping(), 60, 0.2, f"{service} RPC")
        yield proxy


def datetime_ago(seconds: float) -> datetime:
    return utcnow() - timedelta(seconds=seconds)


@contextmanager
def holding(engine, task: str):
    """Hold ``task``'s lock, as a third replica's tick would, taken as soon as
    no replica's tick has it."""
    deadline = time.monotonic() + 60
    while True:
        with timers.held(engine, task) as mine:
            if mine:
                yield
                return
        assert time.monotonic() < deadline, f"{task}'s lock never came free"
        time.sleep(0.05)


def sql(engine, statement: str, **params):
    with engine.begin() as conn:
        return conn.execute(text(statement), params)


def logged(procs, message: str) -> list[dict]:
    """The JSON log records saying ``message``, of every replica."""
    records = []
    for proc in procs:
        for line in proc.logs().splitlines():
            if line.startswith("{") and f'"message": "{message}"' in line:
                records.append(json.loads(line))
    return records


# ---------------------------------------------------------------- storage


@pytest.fixture(scope="module")
def storage(make_vhost, make_database, start_process, tmp_path_factory):
    amqp_uri, _ = make_vhost("timers-storage")
    db_url = make_database("timers_storage")
    root = tmp_path_factory.mktemp("timers-objects")
    tap = Tap(amqp_uri, "storage")
    procs = start_replicas(start_process, "storage", dict(
        AMQP_URI=amqp_uri, STORAGE_DATABASE_URL=db_url, STORAGE_BACKEND="fs",
        STORAGE_FS_ROOT=str(root), STORAGE_PURGE_BATCH_SIZE=3, OUTBOX_RELAY_INTERVAL_SECONDS=1,
        PUBLIC_BASE_URL=PUBLIC_BASE_URL, STORAGE_URL_SECRET=URL_SECRET,
        TIMER_INTERVALS=intervals("storage.purge", "storage.orphan_sweep")))
    engine = make_engine(db_url)
    with rpc_of(amqp_uri, "storage") as rpc:
        yield SimpleNamespace(kind="fs", root=root, rpc=rpc, tap=tap, engine=engine,
                              procs=procs, amqp_uri=amqp_uri)
    engine.dispose()
    tap.close()


def test_the_storage_purge_purges_each_object_once(storage):
    owner = str(uuid.uuid4())
    ids = [output(storage, owner)["id"] for _ in range(24)]
    set_expiry(storage, ids, datetime_ago(3600))
    purged = lambda: [i for e in storage.tap.of("objects_purged") for i in e["object_ids"]]  # noqa: E731
    wait_for(lambda: set(ids) <= set(purged()), 90, 0.2, "every object purged")
    time.sleep(SETTLE)
    mentions = Counter(purged())
    assert {i: mentions[i] for i in ids} == {i: 1 for i in ids}
    events = storage.tap.of("objects_purged")
    batches = sql(storage.engine, "SELECT count(*), sum(objects) FROM purge_batches "
                  "WHERE reason = 'retention'").one()
    assert tuple(batches) == (len(events), len(ids))  # one audit row per batch, each object in one
    assert sql(storage.engine, "SELECT count(*) FROM objects WHERE id = ANY(:ids) "
               "AND deleted_at IS NULL", ids=[uuid.UUID(i) for i in ids]).scalar() == 0


def test_the_orphan_sweep_deletes_each_orphan_once(storage):
    keys = [f"objects/{uuid.uuid4()}/{uuid.uuid4()}" for _ in range(5)]
    two_days_ago = time.time() - 2 * 86400
    with Session(storage.engine) as holder:  # a sweep in a third replica, mid-transaction
        wait_for(lambda: timers.try_xact_lock(holder, "storage.orphan_sweep")
                 or holder.rollback(), 60, 0.05, "the sweep's lock free")
        for key in keys:  # bytes no row accounts for, older than the grace period
            path = storage.root / key
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(b"left by a crash")
            os.utime(path, (two_days_ago, two_days_ago))
        assert storage.rpc.sweep_orphans() == {"objects": 0, "bytes": 0, "batch_id": None}
        time.sleep(SETTLE)
        assert all((storage.root / key).exists() for key in keys)
    wait_for(lambda: not any((storage.root / key).exists() for key in keys), 60, 0.2,
             "the orphans deleted")
    time.sleep(SETTLE)
    swept = sql(storage.engine, "SELECT count(*), sum(objects) FROM purge_batches "
                "WHERE reason = 'orphan'").one()
    assert tuple(swept) == (1, len(keys))  # one sweep deleted them, audited once


def test_the_outbox_relays_publish_each_row_once(storage):
    rows = [outbox.OutboxRow(str(uuid.uuid4()), "relay_probe",
                             {"event_id": None, "n": n}, {}) for n in range(60)]
    for row in rows:
        row.body["event_id"] = row.event_id
    with Session(storage.engine) as session:  # left behind, as by a replica killed after commit
        for row in rows:
            outbox.enqueue(session, storage_outbox, row)
        session.commit()
    ids = {row.event_id for row in rows}
    seen = lambda: [e["event_id"] for e in storage.tap.of("relay_probe")]  # noqa: E731
    wait_for(lambda: ids <= set(seen()), 60, 0.2, "every outbox row published")
    wait_for(lambda: sql(storage.engine, "SELECT count(*) FROM outbox").scalar() == 0,
             30, 0.2, "the outbox emptied")
    time.sleep(SETTLE)
    assert Counter(seen()) == Counter({i: 1 for i in ids})


# ---------------------------------------------------------------- billing


@pytest.fixture(scope="module")
def billing(make_vhost, make_database, start_process, tmp_path_factory):
    from tests.integration.probe_service import start_fake_auth

    amqp_uri, _ = make_vhost("timers-billing")
    start_fake_auth(start_process, tmp_path_factory.mktemp("timers-fake-auth"), amqp_uri)
    db_url = make_database("timers_billing")
    tap = Tap(amqp_uri, "billing")
    procs = start_replicas(start_process, "billing", dict(
        AMQP_URI=amqp_uri, BILLING_DATABASE_URL=db_url, OUTBOX_RELAY_INTERVAL_SECONDS=1,
        BILLING_PSEUDONYM_KEY="timers-pseudonym-key",
        TIMER_INTERVALS=intervals("billing.housekeeping", "billing.grants", "billing.retention")))
    engine = make_engine(db_url)
    with rpc_of(amqp_uri, "billing") as rpc:
        yield SimpleNamespace(rpc=rpc, tap=tap, engine=engine, procs=procs, amqp_uri=amqp_uri)
    engine.dispose()
    tap.close()


def test_monthly_grants_are_given_once_per_account(billing):
    users = [str(uuid.uuid4()) for _ in range(20)]
    for user in users:
        billing.rpc.get_balance(user)  # opens the account: this month counts as granted
    period = sql(billing.engine, "SELECT granted_period FROM accounts LIMIT 1").scalar()
    granted = lambda: sql(billing.engine, "SELECT count(*) FROM accounts WHERE "  # noqa: E731
                          "granted_period = :p AND user_id = ANY(:u)", p=period,
                          u=[uuid.UUID(u) for u in users]).scalar()
    with holding(billing.engine, "billing.grants"):  # as a third replica would
        sql(billing.engine, "UPDATE accounts SET granted_period = '2000-01' "
            "WHERE user_id = ANY(:u)", u=[uuid.UUID(u) for u in users])  # due now
        time.sleep(SETTLE)
        assert granted() == 0  # neither replica ran the task while the lock was held
    wait_for(lambda: granted() == len(users), 60, 0.2, "every account granted")
    time.sleep(SETTLE)
    grants = dict(sql(billing.engine, "SELECT user_id, count(*) FROM ledger_entries "
                      "WHERE idempotency_key LIKE 'grant:monthly:%' GROUP BY user_id").all())
    assert grants == {uuid.UUID(u): 1 for u in users}
    assert sum(r["accounts"] for r in logged(billing.procs, "monthly grants")) == len(users)
    grant = sql(billing.engine, "SELECT min(amount), max(amount) FROM ledger_entries "
                "WHERE idempotency_key LIKE 'grant:monthly:%'").one()
    assert grant[0] == grant[1] > 0
    for user in users:  # the balances say the same as the ledger: the signup grant and one more
        assert billing.rpc.get_balance(user)["available"] == 50 + grant[0]


def test_stale_holds_are_released_once(billing):
    user = str(uuid.uuid4())
    billing.rpc.get_balance(user)
    jobs = [str(uuid.uuid4()) for _ in range(8)]
    for job in jobs:
        publish(billing.amqp_uri, "generation", "job_requested", {
            "job_id": job, "user_id": user, "attempt": 1, "type": "text-to-image", "price": 2})
    wait_for(lambda: {e["job_id"] for e in billing.tap.of("credits_reserved")} >= set(jobs),
             60, 0.2, "every hold taken")
    sql(billing.engine, "UPDATE holds SET created_at = created_at - interval '7 hours' "
        "WHERE user_id = :u", u=uuid.UUID(user))
    released = lambda: [e["job_id"] for e in billing.tap.of("credits_released")]  # noqa: E731
    wait_for(lambda: set(jobs) <= set(released()), 60, 0.2, "every stale hold released")
    time.sleep(SETTLE)
    assert Counter(released()) == Counter({job: 1 for job in jobs})
    assert sql(billing.engine, "SELECT count(*) FROM ledger_entries WHERE kind = 'release' "
               "AND user_id = :u", u=uuid.UUID(user)).scalar() == len(jobs)


def test_payment_records_past_retention_are_deleted_once(billing):
    count = lambda: sql(billing.engine, "SELECT count(*) FROM payments").scalar()  # noqa: E731
    with holding(billing.engine, "billing.retention"):  # as a third replica would
        sql(billing.engine, "INSERT INTO payments (id, order_id, user_ref, provider, amount, "
            "currency, status, created_at, paid_at, retain_until) SELECT gen_random_uuid(), "
            "gen_random_uuid(), 'u-' || n, 'stripe', 500, 'usd', 'paid', :t, :t, :until "
            "FROM generate_series(1, 25) AS n", t=datetime_ago(6 * 366 * 86400),
            until=datetime_ago(86400))
        time.sleep(SETTLE)
        assert count() == 25
    wait_for(lambda: count() == 0, 60, 0.2, "the payments past retention deleted")
    time.sleep(SETTLE)
    reported = logged(billing.procs, "payment records past retention deleted")
    assert sum(r["payments"] for r in reported) == 25


# ---------------------------------------------------------------- auth and privacy


@pytest.fixture(scope="module")
def identity(make_vhost, make_database, start_process):
    """Two replicas of auth and two of privacy (whose timer asks auth to
    revoke an erased account's credentials) on one vhost."""
    amqp_uri, _ = make_vhost("timers-identity")
    auth_db, privacy_db = make_database("timers_auth"), make_database("timers_privacy")
    tap = Tap(amqp_uri, "privacy")
    common = dict(AMQP_URI=amqp_uri, OUTBOX_RELAY_INTERVAL_SECONDS=1,
                  MAIL_SECRETS_KEY=PRIVACY_SETTINGS_KEY)
    auth = start_replicas(start_process, "auth", dict(
        common, AUTH_DATABASE_URL=auth_db, TIMER_INTERVALS=intervals("auth.retention")))
    privacy = start_replicas(start_process, "privacy", dict(
        common, PRIVACY_DATABASE_URL=privacy_db, PRIVACY_ERASURE_SETTLE_SECONDS=0,
        PRIVACY_RPC_TIMEOUT_SECONDS=10,
        TIMER_INTERVALS=intervals("privacy.tick", "privacy.retention", "privacy.breach_gauge")))
    engines = SimpleNamespace(auth=make_engine(auth_db), privacy=make_engine(privacy_db))
    with rpc_of(amqp_uri, "privacy"), rpc_of(amqp_uri, "auth") as auth_rpc:
        yield SimpleNamespace(tap=tap, engines=engines, auth=auth, privacy=privacy,
                              amqp_uri=amqp_uri, auth_rpc=auth_rpc)
    engines.auth.dispose()
    engines.privacy.dispose()
    tap.close()


def test_auth_retention_deletes_each_row_once(identity):
    engine = identity.engines.auth
    subjects = [uuid.uuid4().hex for _ in range(40)]
    with holding(engine, "auth.retention"):  # as a third replica would
        for subject in subjects:  # throttles whose window ended long ago
            sql(engine, "INSERT INTO throttles (subject, attempts, window_started_at) "
                "VALUES (:s, 3, :t)", s=subject, t=datetime_ago(30 * 86400))
        time.sleep(SETTLE)
        assert sql(engine, "SELECT count(*) FROM throttles").scalar() == len(subjects)
    wait_for(lambda: sql(engine, "SELECT count(*) FROM throttles").scalar() == 0,
             60, 0.2, "the throttles deleted")
    time.sleep(SETTLE)
    reported = logged(identity.auth, "retention purge")
    assert sum(r["deleted"]["throttles"] for r in reported) == len(subjects)


def test_privacy_revokes_and_starts_each_erasure_once(identity):
    engine = identity.engines.privacy
    ids = []
    with Session(engine) as db:
        for _ in range(10):
            request = subject_requests.create(db, PRIVACY_SETTINGS, uuid.uuid4(), "erasure",
                                              utcnow(), Events("privacy"))
            ids.append(request.id)
        db.commit()
    sql(engine, "UPDATE privacy_requests SET starts_at = :t WHERE id = ANY(:ids)",
        t=datetime_ago(60), ids=ids)  # the grace period is over
    started = lambda: [e["request_id"] for e in identity.tap.of("erasure_requested")]  # noqa: E731
    wait_for(lambda: {str(i) for i in ids} <= set(started()), 90, 0.2, "every erasure started")
    time.sleep(SETTLE)
    assert Counter(started()) == Counter({str(i): 1 for i in ids})
    actions = Counter(tuple(r) for r in sql(
        engine, "SELECT request_id, action FROM request_log WHERE request_id = ANY(:ids) "
        "AND action IN ('credentials_revoked', 'started')", ids=ids).all())
    assert actions == Counter({(i, a): 1 for i in ids for a in ("credentials_revoked", "started")})


def test_privacy_retention_deletes_each_access_log_once(identity):
    engine = identity.engines.privacy
    old = datetime_ago(400 * 86400)
    with holding(engine, "privacy.retention"):
        sql(engine, "INSERT INTO access_logs (id, user_id, at, method, route, status) "
            "SELECT gen_random_uuid(), NULL, :t, 'GET', '/v1/jobs', 200 "
            "FROM generate_series(1, 300)", t=old)
        time.sleep(SETTLE)
        assert sql(engine, "SELECT count(*) FROM access_logs").scalar() == 300
    wait_for(lambda: sql(engine, "SELECT count(*) FROM access_logs").scalar() == 0,
             60, 0.2, "the access logs deleted")
    time.sleep(SETTLE)
    reported = logged(identity.privacy, "access logs past retention deleted")
    assert sum(r["rows"] for r in reported) == 300


# ---------------------------------------------------------------- generation


@pytest.fixture(scope="module")
def generation(identity, make_database, start_process, tmp_path_factory):
    """Two replicas of generation beside ``identity``'s auth (which holds the
    accounts' webhook secrets)."""
    db_url = make_database("timers_generation")
    procs = start_replicas(start_process, "generation", dict(
        AMQP_URI=identity.amqp_uri, OUTBOX_RELAY_INTERVAL_SECONDS=1,
        GENERATION_DATABASE_URL=db_url, GENERATION_WEBHOOK_ALLOW="127.0.0.1",
        GENERATION_PROVIDERS_FILE=providers_file(tmp_path_factory.mktemp("timers-providers"),
                                                 {"local": {"type": "local"}},
                                                 {"text-to-image": ["local"]}),
        TIMER_INTERVALS=intervals("generation.webhooks", "generation.recovery")))
    engine = make_engine(db_url)
    with rpc_of(identity.amqp_uri, "generation"):
        yield SimpleNamespace(engine=engine, procs=procs)
    engine.dispose()


def test_each_webhook_delivery_is_posted_once(identity, generation):
    user = identity.auth_rpc.register({"email": f"hooks-{uuid.uuid4().hex[:8]}@example.com",
                                       "password": "correct horse battery staple"})["user"]["id"]
    with FakeWebhookReceiver() as receiver:
        url = f"{receiver.url}/hooks/once"
        now = utcnow()
        rows = [WebhookDelivery(id=uuid.uuid4(), job_id=uuid.uuid4(), user_id=uuid.UUID(user),
                                attempt=1, job_status="succeeded", url=url,
                                receiver=webhooks.receiver_of(url), body=json.dumps({"n": n}),
                                status=deliveries.PENDING, tries=0, next_attempt_at=now,
                                created_at=now) for n in range(30)]
        ids = [row.id for row in rows]
        with Session(generation.engine) as db:  # due now, as a finished job leaves them
            db.add_all(rows)
            db.commit()
        wait_for(lambda: sql(generation.engine, "SELECT count(*) FROM webhook_deliveries WHERE "
                             "id = ANY(:ids) AND status = 'delivered'", ids=ids).scalar() == 30,
                 90, 0.2, "every delivery delivered")
        time.sleep(SETTLE)
        posts = Counter(r.headers[webhooks.ID_HEADER]
                        for r in receiver.requests_to("/hooks/once", "POST"))
    assert posts == Counter({str(i): 1 for i in ids})  # webhook-id is the delivery's id
