"""Test-only nameko services, run by the integration tests through ``nameko run``.

``ProbeService`` exercises services.common.messaging: its handler of the
test-only event ``probe.poked`` fails or succeeds as the event asks, records
every run in a file (which survives the worker's rollback) and its one side
effect in the database, idempotently on ``event_id``.

``FakeAuthService`` answers ``auth.set_admin`` the way the auth service does,
so the ops CLI's ``users`` commands can be tested over real RPC, and
``auth.get_user`` for the stacks of services that ask whether a user's address
is verified before spending;
``FakeStorageService`` does the same for ``storage.purge_expired`` and
``storage.report`` (the ``storage`` commands).

Configuration (the YAML file the tests write): ``AMQP_URI``, ``DATABASE_URL``,
``EVENT_RETRY_DELAYS_MS``, ``METRICS_PORT``, ``PROBE_STATE_DIR`` (the run
files and the ``<key>.ok`` flag files).
"""

from __future__ import annotations

import time
from pathlib import Path

from marshmallow import fields
from nameko.dependency_providers import Config
from sqlalchemy import Column, Integer, MetaData, String, Table, func, select

from services.common import contracts
from services.common.contracts.storage import PurgeRequest
from services.common.db import Database, claim_event, processed_events_table
from services.common.errors import DomainError, NonRetryable
from services.common.messaging import EventPublisher, event_handler
from services.common.outbox import outbox_table
from services.common.queues import rpc
from services.common.service import DarkroomService


@contracts.register_event("probe.poked")
class Poked(contracts.EventSchema):
    key = fields.String(required=True)
    # fail the first N runs; -1: fail every run
    fail_times = fields.Integer(load_default=0)
    # ...unless the flag file <PROBE_STATE_DIR>/<key>.ok exists
    unless_flag = fields.Boolean(load_default=False)
    # fail with NonRetryable instead of a plain error
    non_retryable = fields.Boolean(load_default=False)
    # sleep this long first (to be killed mid-work)
    sleep_ms = fields.Integer(load_default=0)
    # publish probe.forwarded with the side effect (through the outbox)
    forward = fields.Boolean(load_default=False)
    # fail only after the side effect and the forward were written (rolled back)
    fail_after_forward = fields.Boolean(load_default=False)


@contracts.register_event("probe.forwarded")
class Forwarded(contracts.EventSchema):
    key = fields.String(required=True)


metadata = MetaData()
processed_events = processed_events_table(metadata)
outbox = outbox_table(metadata)
effects = Table(
    "effects",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("key", String(200), nullable=False),
    Column("event_id", String(36), nullable=False),
)


class ProbeDatabase(Database):
    def setup(self):
        super().setup()
        metadata.create_all(self.engine)


def record_run(state_dir: Path, key: str) -> int:
    """Append the time to ``<key>.runs``; return how many runs there were."""
    path = state_dir / f"{key}.runs"
    with path.open("a") as fh:
        fh.write(f"{time.time()}\n")
    return len(run_times(state_dir, key))


def run_times(state_dir: Path, key: str) -> list[float]:
    path = state_dir / f"{key}.runs"
    return [float(line) for line in path.read_text().splitlines()] if path.exists() else []


def count_effects(session_or_conn, key: str) -> int:
    return session_or_conn.execute(
        select(func.count()).select_from(effects).where(effects.c.key == key)
    ).scalar_one()


class ProbeService(DarkroomService):
    name = "probe"
    config = Config()
    db = ProbeDatabase()
    dispatch = EventPublisher(outbox=outbox)

    @event_handler("probe", "poked")
    def handle_poked(self, payload: dict) -> None:
        state_dir = Path(self.config["PROBE_STATE_DIR"])
        key = payload["key"]
        runs = record_run(state_dir, key)
        if payload["sleep_ms"]:
            time.sleep(payload["sleep_ms"] / 1000)  # green under `nameko run`
        flagged = payload["unless_flag"] and (state_dir / f"{key}.ok").exists()
        failing = payload["fail_times"] < 0 or runs <= payload["fail_times"]
        if failing and not flagged and not payload["fail_after_forward"]:
            if payload["non_retryable"]:
                raise NonRetryable(f"probe gives up on {key}")
            raise RuntimeError(f"probe failure on run {runs} of {key}")
        if not claim_event(self.db, processed_events, payload["event_id"], "probe.handle_poked"):
            return
        self.db.execute(effects.insert().values(key=key, event_id=str(payload["event_id"])))
        if payload["forward"]:
            self.dispatch("forwarded", {"key": key})
        if failing and not flagged:
            raise RuntimeError(f"probe failure after writing, on run {runs} of {key}")
        self.db.commit()


# FakeAuthService.get_user: the users of a test stack without auth are verified,
# but for those whose id starts with this
UNVERIFIED_PREFIX = "00000000-"
# ``authenticate``: the bearer token of a user's session in the fake (``fake-<user id>``)
FAKE_TOKEN_PREFIX = "fake-"


class FakeAuthService(DarkroomService):
    """Stands in for auth's ``set_admin`` RPC (same answer, same errors),
    for ``get_user`` where services ask whether an address is verified
    (services.common.spending): every user is, except ids that start with
    :data:`UNVERIFIED_PREFIX`; and for ``authenticate``, a gateway's question
    (a bearer ``fake-<user id>`` is that user's session)."""

    name = "auth"
    admins: set[str] = set()

    @rpc(expected_exceptions=DomainError)
    def get_user(self, user_id) -> dict:
        user_id = str(user_id)
        return {"id": user_id, "email": f"{user_id}@example.com",
                "email_verified": not user_id.startswith(UNVERIFIED_PREFIX)}

    @rpc(expected_exceptions=DomainError)
    def authenticate(self, payload: dict) -> dict:
        """The gateway's question: a bearer token ``fake-<user id>`` is that
        user's session; anything else is refused as auth refuses it."""
        token = str(payload.get("token") or "")
        if not token.startswith(FAKE_TOKEN_PREFIX):
            raise DomainError("unauthenticated", "invalid or expired credential", 401)
        user_id = token[len(FAKE_TOKEN_PREFIX):]
        return {"user_id": user_id, "email_verified": not user_id.startswith(UNVERIFIED_PREFIX),
                "is_admin": False, "processing_restricted": False, "plan": "free",
                "credential_type": "session", "credential_id": user_id}

    @rpc
    def set_admin(self, email: str, is_admin: bool) -> dict:
        if not email.endswith("@example.com"):
            raise DomainError("not_found", "user not found", 404)
        if is_admin:
            self.admins.add(email)
            uri = f"otpauth://totp/Darkroom:{email}?secret=JBSWY3DPEHPK3PXP&issuer=Darkroom"
        else:
            self.admins.discard(email)
            uri = None
        return {"user_id": "0190a0a0-0000-7000-8000-000000000001", "is_admin": is_admin,
                "otpauth_uri": uri, "api_keys_revoked": 0}


class FakeStorageService(DarkroomService):
    """Stands in for storage's ``purge_expired`` and ``report`` RPCs (same
    contracts): five expired uploads of 1000 bytes await the purge, once."""

    name = "storage"
    pending = {"objects": 5, "bytes": 5000}
    purged = {"objects": 0}

    @rpc(expected_exceptions=DomainError)
    def purge_expired(self, payload: dict | None = None) -> dict:
        request = contracts.load_rpc(PurgeRequest, payload)
        size = request["batch_size"] or 500
        found = dict(self.pending)
        if not request["dry_run"]:
            self.purged["objects"] += found["objects"]
            self.pending.update(objects=0, bytes=0)
        return {"dry_run": request["dry_run"], "batches": -(-found["objects"] // size),
                **found}

    @rpc(expected_exceptions=DomainError)
    def report(self) -> dict:
        live = {"objects": 2, "bytes": 3 * 1024 * 1024}
        return {
            "by_kind": {"upload": {"objects": live["objects"] + self.pending["objects"],
                                   "bytes": live["bytes"] + self.pending["bytes"]}},
            "by_age_days": {"0-7": live, "30+": dict(self.pending)},
            "expired_pending": dict(self.pending),
            "deleted": {"objects": self.purged["objects"]},
        }


# ---------------------------------------------------------------- test-side helpers

PROBE_QUEUE = "evt-probe-poked--probe.handle_poked"
PROBE_COMMAND = "nameko run --config {config} tests.integration.probe_service:{cls}"


def write_config(path: Path, **values) -> Path:
    import json

    # JSON is YAML: no templating surprises in URLs
    path.write_text(json.dumps(values, indent=2))
    return path


def queue_state(amqp_uri: str, queue: str) -> tuple[int, int]:
    """(ready messages, consumers) of a queue, exact (passive declare)."""
    from kombu import Connection

    with Connection(amqp_uri) as conn:
        _, messages, consumers = conn.default_channel.queue_declare(queue=queue, passive=True)
        return messages, consumers


def wait_consuming(amqp_uri: str, queue: str, process, timeout: float = 60) -> None:
    """Wait until ``queue`` has a consumer (readiness alone comes before that)."""
    from tests.conftest import wait_for

    def consuming():
        if not process.alive():
            raise RuntimeError(f"{process.name} exited:\n{process.logs()[-4000:]}")
        return queue_state(amqp_uri, queue)[1] > 0

    wait_for(consuming, timeout, 0.2, f"a consumer on {queue}")


def start_probe(start_process, workdir: Path, amqp_uri: str, database_url: str,
                cls: str = "ProbeService", **config):
    """Start a test-only service through `nameko run`; return the Process once it consumes."""
    from tests.conftest import base_env, free_port

    state_dir = workdir / "state"
    state_dir.mkdir(parents=True, exist_ok=True)
    values = {
        "AMQP_URI": amqp_uri,
        "DATABASE_URL": database_url,
        "EVENT_RETRY_DELAYS_MS": [200, 400],
        "METRICS_PORT": free_port(),
        "PROBE_STATE_DIR": str(state_dir),
        "OUTBOX_RELAY_INTERVAL_SECONDS": 0.5,
        "LOG_LEVEL": "INFO",
        **config,
    }
    path = write_config(workdir / f"{cls}.yaml", **values)
    proc = start_process(f"{cls}-{workdir.name}", base_env(),
                         command=PROBE_COMMAND.format(config=path, cls=cls))
    proc.wait_ready(f"http://127.0.0.1:{values['METRICS_PORT']}/readyz")
    proc.config_path = path
    proc.state_dir = state_dir
    proc.metrics_port = values["METRICS_PORT"]
    queue = PROBE_QUEUE if cls == "ProbeService" else f"rpc-{globals()[cls].name}"
    wait_consuming(amqp_uri, queue, proc)
    return proc


def poke(amqp_uri: str, body: dict | None = None, *, raw: bytes | None = None,
         content_type: str | None = "application/json", headers: dict | None = None,
         **data) -> dict | None:
    """Publish ``probe.poked`` (persistent, confirmed) as a dispatcher would; or
    ``raw`` bytes with any content type, or none."""
    import json

    from kombu import Connection, Exchange

    if raw is None and body is None:
        body = contracts.make_event("probe.poked", data)
    payload = raw if raw is not None else json.dumps(body).encode()
    with Connection(amqp_uri, transport_options={"confirm_publish": True}) as conn:
        channel = conn.default_channel
        Exchange("probe.events", type="topic", durable=True)(channel).declare()
        message = channel.prepare_message(
            payload, content_type=content_type,
            content_encoding="utf-8" if content_type else None,
            headers=headers or {}, properties={"delivery_mode": 2},
        )
        channel.basic_publish(message, exchange="probe.events", routing_key="poked")
    return body


def start_fake_auth(start_process, workdir: Path, amqp_uri: str):
    """:class:`FakeAuthService` on ``amqp_uri``: the ``auth`` that services
    ask before spending, in a stack that runs no auth service."""
    return start_probe(start_process, workdir, amqp_uri, f"sqlite:///{workdir}/unused.db",
                       cls="FakeAuthService")
