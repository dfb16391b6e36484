"""The notifications service as `make dev` runs it (its Procfile command), fed
auth events through RabbitMQ, mailing through the file and SMTP backends.

Each backend gets its own process (class-scoped) in a vhost of this module's
own, so no other module's notifications process competes for the events.
"""

from __future__ import annotations

import email
import email.policy
import json
import re
import uuid
from datetime import timedelta
from pathlib import Path

import pytest
from kombu import Connection, Exchange, Queue
from sqlalchemy import select

from services.common import contracts
from services.common.db import make_engine
from services.common.ids import isoformat, utcnow
from services.common.messaging import dlq_name
from services.common.sealed import Sealer
from services.notifications.models import Notification
from tests.conftest import base_env, free_port, wait_for
from tests.integration.probe_service import wait_consuming

pytestmark = pytest.mark.integration

HANDLERS = {
    "email_verification_requested": "email_verification_requested",
    "password_reset_requested": "password_reset_requested",
    "password_changed": "password_changed",
    "signup_attempted": "signup_attempted",
    "suspicious_login": "suspicious_login",
}
# The key the services under test share: auth seals with it, notifications opens.
MAIL_SECRETS_KEY = "integration-test-mail-secrets-key"
SEALER = Sealer(MAIL_SECRETS_KEY)

NOTIFICATIONS = Notification.__table__


def queue_of(event_type: str) -> str:
    return f"evt-auth-{event_type}--notifications.{HANDLERS[event_type]}"


def publish(amqp_uri: str, event_type: str, data: dict | None = None, body: dict | None = None) -> dict:
    """Publish an auth event the way the auth service's dispatcher does."""
    body = body or contracts.make_event(f"auth.{event_type}", data)
    exchange = Exchange("auth.events", type="topic", durable=True)
    with Connection(amqp_uri, transport_options={"confirm_publish": True}) as conn:
        conn.Producer().publish(
            json.dumps(body), exchange=exchange, routing_key=event_type, declare=[exchange],
            content_type="application/json", content_encoding="utf-8", delivery_mode=2,
            headers={"nameko.correlation_id": f"test-{body['event_id']}"},
        )
    return body


def new_address() -> str:
    return f"user-{uuid.uuid4().hex[:10]}@example.com"


def verification(address: str, purpose: str = "registration", code: str = "493817") -> dict:
    """As auth publishes it: the code sealed."""
    return {"user_id": str(uuid.uuid4()), "email": address, "sealed_code": SEALER.seal(code),
            "purpose": purpose, "expires_at": isoformat(utcnow() + timedelta(minutes=15))}


def reset(address: str, token: str) -> dict:
    return {"user_id": str(uuid.uuid4()), "email": address, "sealed_token": SEALER.seal(token),
            "expires_at": isoformat(utcnow() + timedelta(hours=1))}


def body_text(message) -> str:
    return message.get_body(preferencelist=("plain",)).get_content()


def start_notifications(start_process, amqp_uri: str, database_url: str, mail_url: str):
    port = free_port()
    env = base_env(
        AMQP_URI=amqp_uri,
        NOTIFICATIONS_DATABASE_URL=database_url,
        NOTIFICATIONS_METRICS_PORT=port,
        MAIL_URL=mail_url,
        MAIL_TIMEOUT_SECONDS=3,
        APP_BASE_URL="http://app.example",
        MAIL_SECRETS_KEY=MAIL_SECRETS_KEY,
    )
    proc = start_process("notifications", env)
    proc.wait_ready(f"http://127.0.0.1:{port}/readyz")
    for event_type in HANDLERS:
        wait_consuming(amqp_uri, queue_of(event_type), proc)
    return proc


class Records:
    def __init__(self, database_url: str):
        self.engine = make_engine(database_url)

    def for_event(self, event_id: str) -> list[dict]:
        with self.engine.connect() as conn:
            # through the table's types: the recipient is stored encrypted
            rows = conn.execute(select(NOTIFICATIONS).where(
                NOTIFICATIONS.c.event_id == uuid.UUID(event_id)))
            return [dict(row._mapping) for row in rows]


@pytest.fixture(scope="module")
def vhost_uri(make_vhost) -> str:
    return make_vhost("notifications")[0]


# ---------------------------------------------------------------- file backend


class Mailbox:
    def __init__(self, directory: Path):
        self.directory = directory

    def to(self, address: str) -> list:
        found = []
        for path in sorted(self.directory.glob("*.eml")):
            message = email.message_from_bytes(path.read_bytes(), policy=email.policy.default)
            if message["To"] == address:
                found.append(message)
        return found

    def wait(self, address: str, count: int = 1) -> list:
        """The mails to ``address`` once there are ``count`` of them."""
        return wait_for(lambda: len(m := self.to(address)) >= count and m, 20, 0.1,
                        f"{count} mail(s) to {address}")


@pytest.fixture(scope="class")
def file_stack(vhost_uri, make_database, start_process, tmp_path_factory):
    mail_dir = tmp_path_factory.mktemp("mail") / "outbox"  # created by the service
    database_url = make_database("notifications")
    proc = start_notifications(start_process, vhost_uri, database_url, f"file://{mail_dir}")
    records = Records(database_url)
    yield Mailbox(mail_dir), records, proc
    proc.stop()
    records.engine.dispose()


class TestFileBackend:
    def test_verification_code_is_mailed_and_recorded(self, file_stack, vhost_uri):
        mailbox, records, _ = file_stack
        address = new_address()
        event = publish(vhost_uri, "email_verification_requested", verification(address, code="493817"))

        message = mailbox.wait(address)[0]
        assert re.search(r"\b(\d{6})\b", body_text(message)).group(1) == "493817"
        assert message["Subject"] == "Verify your Darkroom email address"
        assert message["From"] == "Darkroom <no-reply@darkroom.local>"
        assert message["X-Darkroom-Event-Id"] == event["event_id"]
        assert "493817" in message.get_body(preferencelist=("html",)).get_content()

        [record] = wait_for(lambda: records.for_event(event["event_id"]), 10, what="the record")
        assert str(record["user_id"]) == event["user_id"]
        assert record["recipient"] == address
        assert record["template"] == "email_verification"
        assert record["subject"] == "Verify your Darkroom email address"
        assert record["sent_at"] is not None
        assert not list(mailbox.directory.glob(".*"))  # no temp file left

    def test_email_change_code_goes_to_the_new_address(self, file_stack, vhost_uri):
        mailbox, _, _ = file_stack
        address = new_address()
        publish(vhost_uri, "email_verification_requested",
                verification(address, purpose="email_change", code="000123"))
        message = mailbox.wait(address)[0]
        assert message["Subject"] == "Confirm your new Darkroom email address"
        assert "000123" in body_text(message)

    def test_reset_link_ends_with_the_token(self, file_stack, vhost_uri):
        mailbox, _, _ = file_stack
        address = new_address()
        token = "rst_" + uuid.uuid4().hex + "-_x"
        publish(vhost_uri, "password_reset_requested", reset(address, token))
        message = mailbox.wait(address)[0]
        links = re.findall(r"https?://\S+", body_text(message))
        assert links == [f"http://app.example/reset-password?token={token}"]
        assert re.search(r"\?token=([A-Za-z0-9_\-]+)", body_text(message)).group(1) == token

    def test_password_changed_notice(self, file_stack, vhost_uri):
        mailbox, records, _ = file_stack
        address = new_address()
        event = publish(vhost_uri, "password_changed", {
            "user_id": str(uuid.uuid4()), "email": address, "changed_at": "2026-05-06T07:08:09Z",
            "sessions": 2, "api_keys": 1})
        message = mailbox.wait(address)[0]
        assert message["Subject"] == "Your Darkroom password was changed"
        assert "(2 sessions,\n1 API keys)" in body_text(message)
        assert wait_for(lambda: records.for_event(event["event_id"]), 10, what="the record")

    def test_signup_attempted_notice(self, file_stack, vhost_uri):
        mailbox, _, _ = file_stack
        address = new_address()
        publish(vhost_uri, "signup_attempted", {
            "user_id": str(uuid.uuid4()), "email": address, "attempted_at": "2026-05-06T07:08:09Z"})
        message = mailbox.wait(address)[0]
        assert message["Subject"] == "Someone tried to sign up to Darkroom with your address"
        assert f"{address} at 2026-05-06 07:08 UTC" in body_text(message)

    def test_suspicious_login_warning(self, file_stack, vhost_uri):
        mailbox, _, _ = file_stack
        address = new_address()
        publish(vhost_uri, "suspicious_login", {
            "user_id": str(uuid.uuid4()), "email": address, "network": "203.0.113.0/24",
            "user_agent": "curl/8.5.0", "login_at": "2026-05-06T07:08:09Z",
        })
        text_body = body_text(mailbox.wait(address)[0])
        for part in ("203.0.113.0/24", "curl/8.5.0", "2026-05-06 07:08 UTC"):
            assert part in text_body

    def test_a_redelivered_event_sends_one_mail(self, file_stack, vhost_uri):
        mailbox, records, _ = file_stack
        address = new_address()
        body = contracts.make_event("auth.email_verification_requested", verification(address))
        for _ in range(3):  # at once: the deliveries race
            publish(vhost_uri, "email_verification_requested", body=body)
        mailbox.wait(address)
        # a later event to the same address is mailed: by then the copies are done
        publish(vhost_uri, "suspicious_login", {
            "user_id": str(uuid.uuid4()), "email": address, "network": "198.51.100.0/24",
            "user_agent": None, "login_at": isoformat(utcnow()),
        })
        wait_for(lambda: len(mailbox.to(address)) >= 2, 20, what="the later mail")
        wait_for(lambda: all(queue_state_empty(vhost_uri, t) for t in HANDLERS), 10,
                 what="every delivery handled")
        mails = mailbox.to(address)
        assert sorted(m["X-Darkroom-Template"] for m in mails) == ["email_verification", "suspicious_login"]
        assert len(records.for_event(body["event_id"])) == 1

    def test_an_invalid_event_is_dead_lettered_not_mailed(self, file_stack, vhost_uri):
        mailbox, _, proc = file_stack
        address = new_address()
        body = contracts.make_event("auth.email_verification_requested", verification(address))
        body["sealed_code"] = ""  # fails the contract
        publish(vhost_uri, "email_verification_requested", body=body)
        dead = take_dead_letter(vhost_uri, queue_of("email_verification_requested"), body["event_id"])
        assert "sealed_code" in dead.headers["x-darkroom-error"]
        assert dead.headers["x-darkroom-attempts"] == 1
        assert mailbox.to(address) == []
        assert proc.alive()


def queue_state_empty(amqp_uri: str, event_type: str) -> bool:
    with Connection(amqp_uri) as conn:
        _, ready, _ = conn.default_channel.queue_declare(queue=queue_of(event_type), passive=True)
    return ready == 0


def take_dead_letter(amqp_uri: str, queue: str, marker: str, timeout: float = 15):
    def find():
        with Connection(amqp_uri) as conn:
            channel = conn.channel()
            dlq = Queue(dlq_name(queue), channel=channel, no_declare=True)
            found = None
            while (message := dlq.get(no_ack=False)) is not None:
                body = message.body if isinstance(message.body, str) else message.body.decode()
                if found is None and marker in body:
                    found = message
                    message.ack()
            channel.close()
            return found

    return wait_for(find, timeout, 0.2, f"a dead letter in {dlq_name(queue)}")


# ---------------------------------------------------------------- SMTP backend


class SmtpInbox:
    def __init__(self):
        self.messages: list = []
        self.server_stopped = False

    async def handle_DATA(self, server, session, envelope):
        self.messages.append((envelope.rcpt_tos, envelope.content))
        return "250 OK"

    def to(self, address: str) -> list:
        return [email.message_from_bytes(content, policy=email.policy.default)
                for rcpts, content in self.messages if address in rcpts]


@pytest.fixture(scope="class")
def smtp_stack(vhost_uri, make_database, start_process):
    from aiosmtpd.controller import Controller

    inbox = SmtpInbox()
    port = free_port()
    controller = Controller(inbox, hostname="127.0.0.1", port=port)
    controller.start()
    database_url = make_database("notifications")
    proc = start_notifications(start_process, vhost_uri, database_url, f"smtp://127.0.0.1:{port}")
    records = Records(database_url)
    yield inbox, controller, records, proc
    proc.stop()
    if not inbox.server_stopped:
        controller.stop()
    records.engine.dispose()


class TestSmtpBackend:
    def test_the_smtp_server_receives_the_mail(self, smtp_stack, vhost_uri):
        inbox, _, records, _ = smtp_stack
        address = new_address()
        token = uuid.uuid4().hex
        event = publish(vhost_uri, "password_reset_requested", reset(address, token))
        [message] = wait_for(lambda: inbox.to(address), 20, what="the SMTP delivery")
        assert body_text(message).rstrip().endswith("your password stays as it is.")
        assert f"http://app.example/reset-password?token={token}" in body_text(message)
        assert wait_for(lambda: records.for_event(event["event_id"]), 10, what="the record")

    def test_smtp_unreachable_is_retried_then_dead_lettered(self, smtp_stack, vhost_uri):
        inbox, controller, records, proc = smtp_stack
        controller.stop()  # the mail server goes away
        inbox.server_stopped = True
        address = new_address()
        code = "731904"
        event = publish(vhost_uri, "email_verification_requested", verification(address, code=code))
        queue = queue_of("email_verification_requested")
        dead = take_dead_letter(vhost_uri, queue, event["event_id"])
        # what operators read in the dead-letter queue holds the code sealed only
        raw = dead.body if isinstance(dead.body, str) else dead.body.decode()
        assert code not in raw
        assert code not in json.dumps(dead.headers, default=str)
        assert SEALER.open(json.loads(dead.body)["sealed_code"]) == code
        assert dead.headers["x-darkroom-attempts"] == 3
        assert "ConnectionRefusedError" in dead.headers["x-darkroom-error"]
        assert dead.headers["x-darkroom-original-queue"] == queue
        assert dead.headers["nameko.correlation_id"] == f"test-{event['event_id']}"
        assert json.loads(dead.body) == event
        assert records.for_event(event["event_id"]) == []
        assert inbox.to(address) == []
        mine = [json.loads(line)["message"] for line in proc.logs().splitlines()
                if f"test-{event['event_id']}" in line and line.startswith("{")]
        retries = [m for m in mine if "retrying in" in m]
        assert [m.split("retrying in ")[1].split(":")[0] for m in retries] == ["200 ms", "400 ms"]


def test_records_on_sqlite_and_postgresql(make_database, tmp_path):
    """The migrations and the processed/sent records work the same on both."""
    from alembic import command
    from sqlalchemy.orm import Session

    from services.common.migrations import alembic_config, upgrade
    from services.notifications import notify
    from services.notifications.service import MIGRATIONS

    class Outbox:
        def __init__(self):
            self.sent = []

        def send(self, message):
            self.sent.append(message)

    for url in (f"sqlite:///{tmp_path}/n.db", make_database("notifications")):
        upgrade(MIGRATIONS, url)
        command.check(alembic_config(MIGRATIONS, url))  # models and migrations agree
        engine = make_engine(url)
        outbox = Outbox()
        event = contracts.load_event("auth.email_verification_requested", contracts.make_event(
            "auth.email_verification_requested", verification(new_address())))
        with Session(engine) as session:
            settings = {"APP_BASE_URL": "http://app.example"}
            note = notify.deliver(session, outbox, settings, "email_verification", event,
                                  sealer=SEALER)
            assert notify.deliver(session, outbox, settings, "email_verification", event,
                                  sealer=SEALER) is None
            assert len(outbox.sent) == 1
            [exported] = notify.export_user(session, event["user_id"])
            assert exported["id"] == str(note.id) and exported["sent_at"].endswith("Z")
        engine.dispose()
