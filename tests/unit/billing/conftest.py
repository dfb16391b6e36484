"""Fixtures for the billing domain unit tests: an in-memory SQLite database
with the billing tables, the default settings, an event recorder, a fixed
clock (NOW) the tests pass to every domain function, and the service shell
(nameko's ``worker_factory``) on that database for its maintenance tasks."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import pytest
from nameko.testing.services import worker_factory

from services.billing import plans
from services.billing.models import Base
from services.billing.service import BillingService
from services.billing.settings import BillingSettings
from tests.unit.databases import memory_database
from tests.unit.events import Events

NOW = datetime(2026, 3, 10, 12, 0, tzinfo=UTC)


@pytest.fixture
def db():
    with memory_database(Base.metadata) as session:
        yield session


@pytest.fixture
def settings() -> BillingSettings:
    return BillingSettings()


@pytest.fixture
def events() -> Events:
    return Events("billing")


@pytest.fixture
def user(db, settings, events) -> uuid.UUID:
    """A user whose account was opened at NOW (50 signup credits, expiring in 30 days)."""
    user_id = uuid.uuid4()
    plans.open_account(db, settings, user_id, NOW, events)
    db.commit()
    return user_id


@pytest.fixture
def maintain(db, settings, events):
    """``maintain(task, now)``: the service's maintenance ``task`` (holds, plans,
    lots, orders, grants, payments) at ``now``, through the real shell and its
    transactions (the sweeps commit one account at a time)."""

    def run(task: str, now: datetime, settings: BillingSettings = settings):
        service = worker_factory(BillingService, db=db, settings=settings, dispatch=events)
        return service._maintain(task, now)

    return run
