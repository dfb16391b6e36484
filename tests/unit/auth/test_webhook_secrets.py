"""The webhook signing secret: made on first use, stable, rotated, one per
account; a worker that loses the race to make the first one answers with the
winner's."""

from __future__ import annotations

import base64
import re
from datetime import timedelta

import pytest
from sqlalchemy import create_engine, func, select
from sqlalchemy.orm import sessionmaker

from services.auth import accounts, webhooks
from services.auth.models import Base, WebhookSecret
from services.common.contracts.auth import WebhookSecret as WebhookSecretSchema

PASSWORD = "correct horse battery"
SECRET = re.compile(r"^whsec_[A-Za-z0-9+/]{43}=$")  # standard base64: Standard Webhooks


def register(db, settings, now, email: str):
    return accounts.register(db, settings, email, PASSWORD, None, "203.0.113.9", now).user


@pytest.fixture
def alice(db, settings, now):
    return register(db, settings, now, "alice@example.com")


def test_the_first_call_makes_a_secret_and_later_calls_return_it(db, alice, now):
    assert db.get(WebhookSecret, alice.id) is None  # nothing until someone asks
    first = webhooks.get_or_create(db, alice, now)
    assert SECRET.match(first.secret)
    assert len(base64.b64decode(first.secret[6:], validate=True)) == 32
    again = webhooks.get_or_create(db, alice, now + timedelta(days=3))
    assert (again.secret, again.created_at) == (first.secret, now)
    assert db.scalar(select(func.count()).select_from(WebhookSecret)) == 1


def test_each_account_has_its_own(db, settings, alice, now):
    bob = register(db, settings, now, "bob@example.com")
    assert webhooks.get_or_create(db, alice, now).secret != webhooks.get_or_create(db, bob, now).secret


def test_rotate_replaces_the_secret(db, alice, now):
    old = webhooks.get_or_create(db, alice, now).secret
    later = now + timedelta(hours=1)
    rotated = webhooks.rotate(db, alice, later)
    assert SECRET.match(rotated.secret) and rotated.secret != old
    assert rotated.created_at == later
    assert webhooks.get_or_create(db, alice, later).secret == rotated.secret
    assert db.scalar(select(func.count()).select_from(WebhookSecret)) == 1


def test_rotate_without_a_secret_makes_the_first(db, alice, now):
    rotated = webhooks.rotate(db, alice, now)
    assert SECRET.match(rotated.secret)
    assert db.get(WebhookSecret, alice.id).secret == rotated.secret


def test_the_view_dumps_through_the_contract(db, alice, now):
    row = webhooks.get_or_create(db, alice, now)
    dumped = WebhookSecretSchema().dump(webhooks.view(row))
    assert dumped == {"secret": row.secret, "created_at": "2026-03-01T12:00:00+00:00"}


def test_the_service_reads_the_winners_secret_after_losing_the_race(tmp_path, settings, now,
                                                                     monkeypatch):
    """``auth.get_webhook_secret`` when another worker made the first secret
    between this worker's read and its insert: the answer is the winner's."""
    from nameko.testing.services import worker_factory

    from services.auth.service import AuthService

    engine = create_engine(f"sqlite:///{tmp_path / 'auth.db'}")
    Base.metadata.create_all(engine)
    make = sessionmaker(bind=engine, expire_on_commit=False)
    with make() as setup:
        user = register(setup, settings, now, "dave@example.com")
        setup.commit()
    winner = webhooks.new_secret()
    real = webhooks.get_or_create
    calls = []

    def racing(db, user_, now_):
        calls.append(user_.id)
        if len(calls) == 1:  # the other worker commits first; this insert then fails
            with make() as other:
                other.add(WebhookSecret(user_id=user_.id, secret=winner, created_at=now_))
                other.commit()
            db.add(WebhookSecret(user_id=user_.id, secret=webhooks.new_secret(), created_at=now_))
            db.flush()
        return real(db, user_, now_)

    monkeypatch.setattr(webhooks, "get_or_create", racing)
    session = make()
    try:
        service = worker_factory(AuthService, db=session)
        answer = service.get_webhook_secret(str(user.id))
        assert answer["secret"] == winner
        assert calls == [user.id, user.id]
    finally:
        session.close()
        engine.dispose()
