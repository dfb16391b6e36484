"""Receipts and refund mails for billing's events: money formatting, the
templates, delivery to the address auth gives, once per event."""

from __future__ import annotations

import uuid

import pytest
from nameko.testing.services import worker_factory
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from services.common import contracts
from services.common.db import make_engine
from services.common.errors import DomainError
from services.common.migrations import upgrade
from services.notifications import notify
from services.notifications.models import Notification, processed_events
from services.notifications.notify import template_context
from services.notifications.render import format_money, render
from services.notifications.service import MIGRATIONS, NotificationsService

SETTINGS = {"APP_BASE_URL": "https://app.example", "FROM": "Darkroom <billing@mail.example>"}


def order_paid(**fields) -> dict:
    """A ``billing.order_paid`` event as the handler receives it (loaded through its contract)."""
    data = {"order_id": str(uuid.uuid4()), "user_id": str(uuid.uuid4()), "kind": "pack",
            "item_id": "starter", "description": "Starter pack: 500 credits", "credits": 500,
            "amount": 1999, "currency": "eur", "paid_at": "2026-03-04T05:06:07Z", **fields}
    return contracts.load_event("billing.order_paid", contracts.make_event("billing.order_paid", data))


def order_refunded(**fields) -> dict:
    data = {"order_id": str(uuid.uuid4()), "user_id": str(uuid.uuid4()), "credits_reversed": 300,
            "amount_refunded": 1200, "currency": "usd", "status": "partially_refunded", **fields}
    return contracts.load_event("billing.order_refunded",
                                contracts.make_event("billing.order_refunded", data))


def rendered(template: str, event: dict, email: str = "ada@example.com"):
    return render(template, template_context(template, {**event, "email": email}, SETTINGS))


# ------------------------------------------------------------ money


@pytest.mark.parametrize("amount, currency, text", [
    (1999, "eur", "19.99 EUR"), (5, "usd", "0.05 USD"), (0, "gbp", "0.00 GBP"),
    (123456789, "EUR", "1,234,567.89 EUR"), (500, "jpy", "500 JPY"), (12345, "kwd", "12.345 KWD"),
    (-250, "eur", "-2.50 EUR"),
])
def test_format_money_from_minor_units(amount, currency, text):
    assert format_money(amount, currency) == text


# ------------------------------------------------------------ templates


def test_receipt_says_what_was_bought_for_how_much_and_when():
    event = order_paid()
    mail = rendered("receipt", event)
    assert mail.subject == "Your Darkroom receipt: Starter pack: 500 credits"
    for part in ("Starter pack: 500 credits (credit pack)", "Credits:  500", "19.99 EUR",
                 str(event["order_id"]), "2026-03-04 05:06 UTC", "ada@example.com",
                 "https://app.example"):
        assert part in mail.text, part
    for part in ("19.99 EUR", str(event["order_id"]), "2026-03-04 05:06 UTC"):
        assert part in mail.html
    assert "The credits are in your account now." in mail.text


def test_receipt_of_a_plan():
    mail = rendered("receipt", order_paid(kind="plan", item_id="pro", description="Pro plan, one month",
                                          credits=500, amount=1900, currency="usd"))
    assert "Pro plan, one month (plan)" in mail.text
    assert "19.00 USD" in mail.text
    assert "The plan is active now" in mail.text


def test_receipt_html_escapes_the_description():
    mail = rendered("receipt", order_paid(description="<b>Pack</b> & more"))
    assert "&lt;b&gt;Pack&lt;/b&gt; &amp; more" in mail.html
    assert "<b>Pack</b>" not in mail.html


@pytest.mark.parametrize("status, opening", [
    ("partially_refunded", "Part of your Darkroom order was refunded."),
    ("refunded", "Your Darkroom order was refunded."),
    (None, "Your Darkroom order was refunded."),
])
def test_refund_mail(status, opening):
    event = order_refunded(status=status)
    mail = rendered("refund", event)
    assert mail.subject == "Your Darkroom refund: 12.00 USD"
    assert mail.text.startswith(opening)
    for part in ("12.00 USD", "Credits removed:   300", str(event["order_id"]),
                 event["occurred_at"].strftime("%Y-%m-%d %H:%M UTC")):
        assert part in mail.text, part


# ------------------------------------------------------------ delivery


class FakeMailer:
    def __init__(self):
        self.sent = []

    def send(self, message):
        self.sent.append(message)


class Directory:
    """``find_recipient`` standing in for auth: counts its lookups."""

    def __init__(self, answer: str | None = "ada@example.com", fail: Exception | None = None):
        self.answer, self.fail, self.asked = answer, fail, []

    def __call__(self, event):
        self.asked.append(event["user_id"])
        if self.fail is not None:
            raise self.fail
        return self.answer


@pytest.fixture
def session(tmp_path):
    url = f"sqlite:///{tmp_path}/notifications.db"
    upgrade(MIGRATIONS, url)
    engine = make_engine(url)
    with Session(engine) as s:
        yield s
    engine.dispose()


def count(session, table=Notification) -> int:
    return session.scalar(select(func.count()).select_from(table))


def test_receipt_goes_to_the_address_auth_gives_once(session):
    mailer, directory = FakeMailer(), Directory("new-address@example.com")
    event = order_paid()
    note = notify.deliver(session, mailer, SETTINGS, "receipt", event, find_recipient=directory)
    [message] = mailer.sent
    assert message["To"] == "new-address@example.com"
    assert message["X-Darkroom-Template"] == "receipt"
    assert message["X-Darkroom-Event-Id"] == str(event["event_id"])
    assert "19.99 EUR" in message.get_body(("plain",)).get_content()
    session.expire_all()
    stored = session.get(Notification, note.id)
    assert (stored.recipient, stored.template, stored.user_id) == \
        ("new-address@example.com", "receipt", event["user_id"])

    # redelivered: no lookup, no mail
    assert notify.deliver(session, mailer, SETTINGS, "receipt", dict(event),
                          find_recipient=directory) is None
    assert directory.asked == [event["user_id"]] and len(mailer.sent) == 1


def test_auth_unreachable_raises_and_leaves_nothing(session):
    event = order_paid()
    with pytest.raises(ConnectionError):
        notify.deliver(session, FakeMailer(), SETTINGS, "receipt", event,
                       find_recipient=Directory(fail=ConnectionError("auth is away")))
    session.rollback()  # what the worker does with a handler that raised
    assert count(session) == 0 and count(session, processed_events) == 0
    mailer = FakeMailer()  # the retry, with auth back
    assert notify.deliver(session, mailer, SETTINGS, "receipt", event,
                          find_recipient=Directory()) is not None
    assert len(mailer.sent) == 1


def test_no_account_any_more_means_no_mail_and_no_second_lookup(session):
    mailer, directory = FakeMailer(), Directory(answer=None)
    event = order_refunded()
    assert notify.deliver(session, mailer, SETTINGS, "refund", event, find_recipient=directory) is None
    assert notify.deliver(session, mailer, SETTINGS, "refund", event, find_recipient=directory) is None
    assert mailer.sent == [] and count(session) == 0
    assert directory.asked == [event["user_id"]]


# ------------------------------------------------------------ the service's auth lookup


class FakeAuth:
    def __init__(self, error: DomainError | None = None):
        self.error, self.asked = error, []

    def get_user(self, user_id):
        self.asked.append(user_id)
        if self.error is not None:
            raise self.error
        return {"id": user_id, "email": "ada@example.com", "email_verified": True}


def test_the_service_asks_auth_for_the_address():
    auth = FakeAuth()
    service = worker_factory(NotificationsService, auth=auth)
    event = order_paid()
    assert service._address_of(event) == "ada@example.com"
    assert auth.asked == [str(event["user_id"])]


def test_an_unknown_user_has_no_address_but_other_errors_raise():
    service = worker_factory(NotificationsService,
                             auth=FakeAuth(DomainError("not_found", "user not found", 404)))
    assert service._address_of(order_paid()) is None
    service = worker_factory(NotificationsService,
                             auth=FakeAuth(DomainError("service_unavailable", "later", 503)))
    with pytest.raises(DomainError):
        service._address_of(order_paid())


def test_the_billing_handlers_mail_through_notify(monkeypatch):
    delivered = []
    monkeypatch.setattr(notify, "deliver",
                        lambda db, mailer, settings, template, event, find_recipient=None,
                        sealer=None:
                        delivered.append((template, event, find_recipient)))
    auth = FakeAuth()
    service = worker_factory(NotificationsService, auth=auth, config={"MAIL": SETTINGS})
    paid, refunded = order_paid(), order_refunded()
    service.order_paid(paid)
    service.order_refunded(refunded)
    assert [(t, e) for t, e, _ in delivered] == [("receipt", paid), ("refund", refunded)]
    assert delivered[0][2](paid) == "ada@example.com"
