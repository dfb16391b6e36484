"""Delivery: once per event, recorded, failures raised; export and erasure."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from services.common.db import make_engine
from services.common.migrations import upgrade
from services.common.sealed import Sealer
from services.notifications import notify
from services.notifications.models import Notification
from services.notifications.service import MIGRATIONS

SETTINGS = {"APP_BASE_URL": "http://app.example", "FROM": "Darkroom <no-reply@darkroom.local>"}
SEALER = Sealer("unit-test-mail-secrets-key")


def deliver(*args, **kwargs):
    """notify.deliver with the key that opens the codes these events carry sealed."""
    return notify.deliver(*args, sealer=SEALER, **kwargs)


class FakeMailer:
    def __init__(self, fail: Exception | None = None):
        self.sent = []
        self.fail = fail

    def send(self, message):
        if self.fail:
            raise self.fail
        self.sent.append(message)


@pytest.fixture
def session(tmp_path):
    url = f"sqlite:///{tmp_path}/notifications.db"
    upgrade(MIGRATIONS, url)  # the real migrations
    engine = make_engine(url)
    with Session(engine) as s:
        yield s
    engine.dispose()


def verification_event(user_id=None, **fields) -> dict:
    return {"event_id": uuid.uuid4(), "user_id": user_id or uuid.uuid4(), "email": "ada@example.com",
            "sealed_code": SEALER.seal("123456"), "purpose": "registration",
            "expires_at": datetime(2026, 1, 1, tzinfo=UTC), **fields}


def count(session) -> int:
    return session.scalar(select(func.count()).select_from(Notification))


def test_delivers_and_records(session):
    mailer = FakeMailer()
    event = verification_event()
    note = deliver(session, mailer, SETTINGS, "email_verification", event)
    [message] = mailer.sent
    assert message["To"] == "ada@example.com"
    assert message["X-Darkroom-Event-Id"] == str(event["event_id"])
    assert "123456" in message.get_body(("plain",)).get_content()
    session.expire_all()
    stored = session.get(Notification, note.id)
    assert (stored.event_id, stored.user_id) == (event["event_id"], event["user_id"])
    assert (stored.recipient, stored.template) == ("ada@example.com", "email_verification")
    assert stored.subject == "Verify your Darkroom email address"
    assert stored.sent_at.tzinfo is not None


def test_the_same_event_twice_sends_one_mail(session):
    mailer = FakeMailer()
    event = verification_event()
    assert deliver(session, mailer, SETTINGS, "email_verification", event) is not None
    assert deliver(session, mailer, SETTINGS, "email_verification", dict(event)) is None
    assert len(mailer.sent) == 1 and count(session) == 1


def test_a_delivery_failure_raises_and_records_nothing(session):
    event = verification_event()
    with pytest.raises(ConnectionRefusedError):
        deliver(session, FakeMailer(fail=ConnectionRefusedError()), SETTINGS,
                       "email_verification", event)
    session.rollback()
    assert count(session) == 0
    # the retry, once the mail server is back, sends it
    mailer = FakeMailer()
    assert deliver(session, mailer, SETTINGS, "email_verification", event) is not None
    assert len(mailer.sent) == 1


def test_unknown_template_is_refused(session):
    with pytest.raises(ValueError):
        deliver(session, FakeMailer(), SETTINGS, "marketing", verification_event())


def test_export_and_erase_one_users_mails(session):
    ada, bob = uuid.uuid4(), uuid.uuid4()
    mailer = FakeMailer()
    first = verification_event(ada)
    for event in (first, verification_event(ada), verification_event(bob)):
        deliver(session, mailer, SETTINGS, "email_verification", event)
    exported = notify.export_user(session, ada)
    assert len(exported) == 2
    assert set(exported[0]) == {"id", "template", "recipient", "subject", "sent_at"}
    assert exported[0]["sent_at"].endswith("Z")

    assert notify.erase_user(session, ada) == 2
    session.commit()
    assert notify.export_user(session, ada) == []
    assert len(notify.export_user(session, bob)) == 1
    # a redelivered old event does not mail the erased user again
    assert deliver(session, mailer, SETTINGS, "email_verification", first) is None
    assert len(mailer.sent) == 3
