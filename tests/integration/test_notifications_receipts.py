"""Receipts: the notifications service as `make dev` runs it (its Procfile
command) mails billing's ``order_paid`` and ``order_refunded`` events to the
address it asks auth for, over real RabbitMQ and PostgreSQL.

``DirectoryAuth`` below stands in for auth's ``get_user`` RPC (started with
``nameko run`` from this module): every user id has an address derived from
it, except ids starting ``00000000`` (no account: erased).
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest
from kombu import Connection, Exchange
from nameko.rpc import rpc
from sqlalchemy import select, text

from services.common import contracts
from services.common.db import make_engine
from services.common.errors import DomainError
from services.common.service import DarkroomService
from services.notifications.models import Notification
from tests.conftest import base_env, free_port, procfile_commands, wait_for
from tests.integration.probe_service import queue_state, wait_consuming, write_config
from tests.integration.test_notifications import Mailbox, take_dead_letter
from tests.integration.test_ops_users import ops

pytestmark = pytest.mark.integration

HANDLERS = ("order_paid", "order_refunded")
ERASED_PREFIX = "00000000"

NOTIFICATIONS = Notification.__table__


def address_of(user_id: str) -> str:
    return f"buyer-{str(user_id)[:8]}@example.com"


class DirectoryAuth(DarkroomService):
    """auth's ``get_user`` as far as notifications needs it."""

    name = "auth"

    @rpc(expected_exceptions=DomainError)
    def get_user(self, user_id: str) -> dict:
        if str(user_id).startswith(ERASED_PREFIX):
            raise DomainError("not_found", "user not found", 404)
        return {"id": user_id, "email": address_of(user_id), "email_verified": True,
                "display_name": None, "bio": None, "avatar_image_id": None,
                "created_at": "2026-01-01T00:00:00Z", "plan": "free",
                "processing_restricted": False, "totp_enabled": False, "is_admin": False}


def queue_of(event_type: str) -> str:
    return f"evt-billing-{event_type}--notifications.{event_type}"


def publish(amqp_uri: str, event_type: str, data: dict | None = None,
            body: dict | None = None) -> dict:
    """Publish a billing event the way billing's dispatcher does (persistent, confirmed)."""
    body = body or contracts.make_event(f"billing.{event_type}", data)
    exchange = Exchange("billing.events", type="topic", durable=True)
    with Connection(amqp_uri, transport_options={"confirm_publish": True}) as conn:
        conn.Producer().publish(
            json.dumps(body), exchange=exchange, routing_key=event_type, declare=[exchange],
            content_type="application/json", content_encoding="utf-8", delivery_mode=2,
            headers={"nameko.correlation_id": f"test-{body['event_id']}"},
        )
    return body


def paid(user_id: str | None = None, **fields) -> dict:
    return {"order_id": str(uuid.uuid4()), "user_id": user_id or str(uuid.uuid4()),
            "kind": "pack", "item_id": "starter", "description": "Starter pack: 500 credits",
            "credits": 500, "amount": 1999, "currency": "eur",
            "paid_at": "2026-05-06T07:08:09Z", **fields}


def refunded(user_id: str | None = None, **fields) -> dict:
    return {"order_id": str(uuid.uuid4()), "user_id": user_id or str(uuid.uuid4()),
            "credits_reversed": 200, "amount_refunded": 1999, "currency": "eur",
            "status": "refunded", **fields}


def body_text(message) -> str:
    return message.get_body(preferencelist=("plain",)).get_content()


class Stack:
    def __init__(self, amqp_uri: str, database_url: str, mailbox: Mailbox, notifications, workdir):
        self.amqp_uri = amqp_uri
        self.engine = make_engine(database_url)
        self.mailbox = mailbox
        self.notifications = notifications
        self.workdir = workdir

    def claimed(self, event_id: str) -> list[str]:
        with self.engine.connect() as conn:
            rows = conn.execute(text("SELECT consumer FROM processed_events WHERE event_id = :e"),
                                {"e": str(event_id)})
            return [row[0] for row in rows]

    def records(self, event_id: str) -> list[dict]:
        with self.engine.connect() as conn:
            # through the table's types: the recipient is stored encrypted
            rows = conn.execute(select(NOTIFICATIONS).where(
                NOTIFICATIONS.c.event_id == uuid.UUID(str(event_id))))
            return [dict(row._mapping) for row in rows]


def start_directory_auth(start_process, amqp_uri: str, workdir: Path):
    port = free_port()
    path = write_config(workdir / "directory-auth.yaml", AMQP_URI=amqp_uri, METRICS_PORT=port,
                        LOG_LEVEL="INFO")
    proc = start_process(f"directory-auth-{workdir.name}", base_env(), command=(
        f"nameko run --config {path} tests.integration.test_notifications_receipts:DirectoryAuth"))
    proc.wait_ready(f"http://127.0.0.1:{port}/readyz")
    wait_consuming(amqp_uri, "rpc-auth", proc)
    return proc


def start_stack(label, make_vhost, make_database, start_process, tmp_path_factory,
                with_auth: bool = True) -> Stack:
    amqp_uri, _ = make_vhost(label)
    workdir = tmp_path_factory.mktemp(label)
    mail_dir = workdir / "mail"
    database_url = make_database("notifications")
    if with_auth:
        start_directory_auth(start_process, amqp_uri, workdir)
    port = free_port()
    env = base_env(AMQP_URI=amqp_uri, NOTIFICATIONS_DATABASE_URL=database_url,
                   NOTIFICATIONS_METRICS_PORT=port, MAIL_URL=f"file://{mail_dir}",
                   APP_BASE_URL="http://app.example")
    # the Procfile's command, under a name of its own (its log file)
    proc = start_process(f"notifications-{label}", env, command=procfile_commands()["notifications"])
    proc.wait_ready(f"http://127.0.0.1:{port}/readyz")
    for event_type in HANDLERS:
        wait_consuming(amqp_uri, queue_of(event_type), proc)
    return Stack(amqp_uri, database_url, Mailbox(mail_dir), proc, workdir)


@pytest.fixture(scope="module")
def stack(make_vhost, make_database, start_process, tmp_path_factory):
    stack = start_stack("receipts", make_vhost, make_database, start_process, tmp_path_factory)
    yield stack
    stack.engine.dispose()


def test_a_paid_order_mails_a_receipt_to_the_account(stack):
    event = publish(stack.amqp_uri, "order_paid", paid())
    address = address_of(event["user_id"])
    [message] = stack.mailbox.wait(address)
    assert message["Subject"] == "Your Darkroom receipt: Starter pack: 500 credits"
    assert message["X-Darkroom-Event-Id"] == event["event_id"]
    assert message["X-Darkroom-Template"] == "receipt"
    text_body = body_text(message)
    for part in ("Starter pack: 500 credits (credit pack)", "Credits:  500", "19.99 EUR",
                 event["order_id"], "2026-05-06 07:08 UTC", address):
        assert part in text_body, part
    assert "19.99 EUR" in message.get_body(preferencelist=("html",)).get_content()
    [record] = wait_for(lambda: stack.records(event["event_id"]), 10, what="the record")
    assert (record["recipient"], record["template"], str(record["user_id"])) == \
        (address, "receipt", event["user_id"])


def test_a_refund_is_mailed(stack):
    event = publish(stack.amqp_uri, "order_refunded",
                    refunded(amount_refunded=12345, currency="usd", status="partially_refunded",
                             credits_reversed=120))
    [message] = stack.mailbox.wait(address_of(event["user_id"]))
    assert message["Subject"] == "Your Darkroom refund: 123.45 USD"
    text_body = body_text(message)
    assert text_body.startswith("Part of your Darkroom order was refunded.")
    assert "Credits removed:   120" in text_body and event["order_id"] in text_body


def test_a_redelivered_event_mails_one_receipt(stack):
    user_id = str(uuid.uuid4())
    body = contracts.make_event("billing.order_paid", paid(user_id))
    for _ in range(3):  # at once: the deliveries race
        publish(stack.amqp_uri, "order_paid", body=body)
    stack.mailbox.wait(address_of(user_id))
    # a later event of the same user is mailed: by then the copies are done with
    publish(stack.amqp_uri, "order_refunded", refunded(user_id))
    stack.mailbox.wait(address_of(user_id), count=2)
    wait_for(lambda: all(queue_state_empty_of(stack.amqp_uri, t) for t in HANDLERS), 10,
             what="every delivery handled")
    templates = sorted(m["X-Darkroom-Template"] for m in stack.mailbox.to(address_of(user_id)))
    assert templates == ["receipt", "refund"]
    assert len(stack.records(body["event_id"])) == 1


def test_an_erased_account_gets_no_mail_and_no_dead_letter(stack):
    user_id = ERASED_PREFIX + str(uuid.uuid4())[8:]
    event = publish(stack.amqp_uri, "order_paid", paid(user_id))
    wait_for(lambda: stack.claimed(event["event_id"]) == ["notifications.receipt"], 15,
             what="the event handled")
    assert stack.records(event["event_id"]) == []
    assert stack.mailbox.to(address_of(user_id)) == []
    with Connection(stack.amqp_uri) as conn:
        _, dead, _ = conn.default_channel.queue_declare(
            queue=f"dlq.{queue_of('order_paid')}", passive=True)
    assert dead == 0


def test_an_event_that_fails_its_contract_is_dead_lettered(stack):
    body = contracts.make_event("billing.order_paid", paid())
    body["amount"] = "a lot"
    publish(stack.amqp_uri, "order_paid", body=body)
    dead = take_dead_letter(stack.amqp_uri, queue_of("order_paid"), body["event_id"])
    assert "amount" in dead.headers["x-darkroom-error"]
    assert dead.headers["x-darkroom-attempts"] == 1
    assert stack.claimed(body["event_id"]) == []


def test_auth_away_is_retried_dead_lettered_then_replayed(make_vhost, make_database,
                                                          start_process, tmp_path_factory):
    """No auth at all: each attempt fails (UnknownService), the event is retried
    and dead-lettered, nothing is claimed or mailed; once auth runs, a replay
    of the dead letter mails the receipt."""
    stack = start_stack("receipts-noauth", make_vhost, make_database, start_process,
                        tmp_path_factory, with_auth=False)
    try:
        event = publish(stack.amqp_uri, "order_paid", paid())
        queue = queue_of("order_paid")
        env = base_env(AMQP_URI=stack.amqp_uri)
        wait_for(lambda: queue_state(stack.amqp_uri, f"dlq.{queue}")[0] == 1, 20, 0.2,
                 what="the dead letter")
        [dead] = json.loads(ops(env, "dlq", "show", queue, "--json").stdout)
        assert dead["attempts"] == 3  # EVENT_RETRY_DELAYS_MS: [200, 400]
        assert "UnknownService" in dead["error"]
        assert dead["body"]["event_id"] == event["event_id"]
        assert stack.claimed(event["event_id"]) == []
        assert stack.mailbox.to(address_of(event["user_id"])) == []

        start_directory_auth(start_process, stack.amqp_uri, stack.workdir)
        result = ops(env, "dlq", "replay", queue)
        assert result.returncode == 0, result.stderr
        assert "replayed 1 message" in result.stdout
        [message] = stack.mailbox.wait(address_of(event["user_id"]))
        assert message["X-Darkroom-Event-Id"] == event["event_id"]
    finally:
        stack.engine.dispose()


def queue_state_empty_of(amqp_uri: str, event_type: str) -> bool:
    with Connection(amqp_uri) as conn:
        _, ready, _ = conn.default_channel.queue_declare(queue=queue_of(event_type), passive=True)
    return ready == 0



def publish_privacy(amqp_uri: str, event_type: str, data: dict) -> dict:
    body = contracts.make_event(f"privacy.{event_type}", data)
    exchange = Exchange("privacy.events", type="topic", durable=True)
    with Connection(amqp_uri, transport_options={"confirm_publish": True}) as conn:
        conn.Producer().publish(
            json.dumps(body), exchange=exchange, routing_key=event_type, declare=[exchange],
            content_type="application/json", content_encoding="utf-8", delivery_mode=2)
    return body


def test_after_its_erasure_nothing_is_written_for_the_account(stack):
    """Notifications' part of an erasure removes its dead letters naming the
    user; a late receipt or consent event of the account then writes no row
    and sends no mail, even while auth (erasing in parallel) still answers."""
    from tests.integration.test_dead_letters import dead_letter, drain

    for event_type in ("erasure_requested", "consent_changed"):
        wait_consuming(stack.amqp_uri,
                       f"evt-privacy-{event_type}--notifications.{_method(event_type)}",
                       stack.notifications)
    user_id, other = str(uuid.uuid4()), str(uuid.uuid4())
    dead_letter(stack.amqp_uri, queue_of("order_paid"), paid(user_id))
    dead_letter(stack.amqp_uri, queue_of("order_paid"), paid(other))
    request_id = str(uuid.uuid4())
    publish_privacy(stack.amqp_uri, "erasure_requested", {
        "request_id": request_id, "user_id": user_id, "services": ["notifications"]})
    wait_for(lambda: _erased(stack), 20, 0.2, "notifications' part of the erasure")
    assert [e["user_id"] for e, _ in drain(stack.amqp_uri, queue_of("order_paid"))] == [other]

    late = publish(stack.amqp_uri, "order_paid", paid(user_id))
    consent = publish_privacy(stack.amqp_uri, "consent_changed", {
        "user_id": user_id, "marketing_email": True, "analytics": False, "policy_version": None})
    wait_for(lambda: _log_has(stack, late["event_id"]), 20, 0.2, "the late receipt handled")
    wait_for(lambda: _log_has(stack, consent["event_id"]), 20, 0.2, "the consent event handled")
    with stack.engine.connect() as conn:
        for table in ("notifications", "marketing_preferences"):
            count = conn.execute(text(f"SELECT count(*) FROM {table} WHERE user_id = :u"),
                                 {"u": uuid.UUID(user_id)}).scalar()
            assert count == 0, table
    assert stack.claimed(late["event_id"]) == [] and stack.records(late["event_id"]) == []
    assert stack.mailbox.to(address_of(user_id)) == []


def _method(event_type: str) -> str:
    return "privacy_erasure_requested" if event_type == "erasure_requested" else event_type


def _erased(stack) -> bool:
    with stack.engine.connect() as conn:
        return conn.execute(text("SELECT count(*) FROM erased_accounts")).scalar() > 0


def _log_has(stack, marker: str) -> bool:
    return str(marker) in stack.notifications.logs()
